"""Few labels: a network trained on 600 labelled Fashion-MNIST images (60 per class), from
scratch or fine-tuned from a self-supervised pre-training.

  python run.py --config=configs/fashion_mnist_fewlabels.py                      # scratch
  python run.py --config=configs/fashion_mnist_fewlabels.py \
      --config.init_from.path=runs/pretrain --workdir=runs/fewlabels_pretrained  # fine-tune
  python run.py --config=configs/fashion_mnist_fewlabels.py:cnn,probe \
      --config.init_from.path=runs/simclr --workdir=runs/fewlabels_probe         # linear probe

Variants: `mlp` (default; 784-256-128-10, the denoising autoencoder's encoder,
configs/fashion_mnist_pretrain.py), `cnn` (the lessons' CNN, as
configs/fashion_mnist_simclr.py pre-trains it) or `vit` (a 4-block ViT on 4x4 patches, as
configs/fashion_mnist_mae.py pre-trains it); `probe` freezes the loaded backbone: the new
head alone trains (the linear probe of the self-supervised literature), and for the CNN,
whose SimCLR backbone is the conv trunk, its dense layer and head.
The 600 examples are fixed by data.split_seed; config.seed varies the init and order.
Nothing is selected on the validation split (no early stopping, no best checkpoint): the
result is the test accuracy after the fixed number of epochs.
Measured results: bench/results/few_labels_cpu2.md (bench/few_labels.py).
"""

from __future__ import annotations

import ml_collections

from configs import fashion_mnist, fashion_mnist_pretrain


# A small ViT for 28x28 images: 7x7 = 49 patches of 4x4 pixels, 4 pre-LN blocks of width 64,
# the patch tokens' mean as the summary (no class token for a masked autoencoder to ignore).
VIT = dict(name="vit", patch_size=4, hidden_size=64, depth=4, num_heads=4, mlp_ratio=2.0,
           pool="mean", dropout_rate=0.0, num_classes=10)


SKIP = dict(mlp="^(decoder_|projection_|head/)", cnn="^(projection_|dense_|head/)",
            vit="^(decoder_|mask_token|projection_|head/)")
# The probe: what stays frozen. For the CNN the conv trunk, so its (new) dense layer and head
# train on frozen features; for the others every loaded weight, the head alone training.
FROZEN = dict(mlp="^(?!head/)", cnn="^conv_", vit="^(?!head/)")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens = [t for t in (arg or "").split(",") if t]
  networks = [t for t in tokens if t in ("mlp", "cnn", "vit")]
  if set(tokens) - {"mlp", "cnn", "vit", "probe"} or len(networks) > 1:
    raise ValueError(f'Unknown variant "{arg}": use mlp (default), cnn or vit, optionally '
                     "with ',probe'.")
  network = networks[0] if networks else "mlp"
  config = fashion_mnist.get_config("cnn" if network == "cnn" else "mlp")
  if network == "mlp":
    config.model.hidden_sizes = fashion_mnist_pretrain.ENCODER
  if network == "vit":
    with config.unlocked():
      config.model = dict(VIT)
  config.data.labels_per_class = 60
  config.train.batch_size = 32
  config.train.num_epochs = 30
  config.train.steps_per_call = 1
  config.train.log_every_steps = 100
  config.eval.every_epoch = ""
  config.checkpoint.best_metric = ""
  config.checkpoint.max_to_keep = 1
  # Loaded from a pre-training: its backbone; an autoencoder's decoder, a contrastive run's
  # projection head and a masked autoencoder's decoder and mask token are unused, and the
  # head is new. The CNN's SimCLR backbone is its conv trunk: the dense layer is new too.
  config.init_from.skip = SKIP[network]
  if "probe" in tokens:
    config.finetune.freeze = FROZEN[network]
    config.finetune.freeze_batch_stats = True  # (a backbone with BatchNorm keeps its own)
    config.optimizer.learning_rate = 1e-2
  config.report.plots = False
  config.lock()
  return config
