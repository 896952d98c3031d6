"""Self-supervised pre-training of a ViT as a masked autoencoder (MAE, He et al. 2022): 75%
of each image's 49 patches hidden, the encoder sees the rest, a light decoder reconstructs
the hidden patches' pixels; all 60,000 Fashion-MNIST training images, labels unused.

  python run.py --config=configs/fashion_mnist_mae.py --workdir=runs/mae
  python run.py --config=configs/fashion_mnist_fewlabels.py:vit \
      --config.init_from.path=runs/mae --workdir=runs/fewlabels_mae        # fine-tune
  python run.py --config=configs/fashion_mnist_fewlabels.py:vit,probe ...   # linear probe

The encoder is the ViT of configs/fashion_mnist_fewlabels.py (`VIT`), with its parameter
names; the fine-tune skips the decoder and the mask token. Loss: the squared error of the
hidden patches' pixels, each target patch standardised (MAE's "normalised pixels"); the
test split is scored with one fixed mask. Flips as the only augmentation (MAE needs little).
For a GPU: many more epochs (MAE's ImageNet runs: 800-1600) are what it asks for.
Measured results: bench/results/few_labels_*.md (bench/few_labels.py).
"""

from __future__ import annotations

import ml_collections

from configs import fashion_mnist_fewlabels


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "small"):
    raise ValueError(f'Unknown variant "{arg}": use nothing or "small".')
  small = arg == "small"
  config = fashion_mnist_fewlabels.get_config("vit")
  with config.unlocked():
    encoder = {k: v for k, v in fashion_mnist_fewlabels.VIT.items()
               if k not in ("name", "num_classes")}
    config.model = dict(name="mae", encoder=encoder, mask_ratio=0.75, decoder_size=64,
                        decoder_depth=1, decoder_heads=4)
    config.data.labels_per_class = -1  # every training image; the labels are never read
    config.data.validation_fraction = 0.0
    config.data.augment.flip_lr = True
    config.loss = dict(name="masked_patch_mse", normalize_patches=True, l1=0.0, l2=0.0,
                       penalty_mask="kernel")
    config.init_from.skip = ""
  config.optimizer.update(name="adamw", learning_rate=1e-3, b2=0.95, weight_decay=0.05)
  config.optimizer.schedule.update(name="cosine", warmup_steps=500)
  config.train.update(batch_size=256, num_epochs=30 if not small else 1, steps_per_call=1,
                      log_every_steps=50)
  if small:
    config.data.max_train_examples = 2048
    config.data.max_test_examples = 512
  config.eval.update(every_epoch="", at_end="test", metrics="loss", batch_size=256)
  config.checkpoint.best_metric = ""
  config.lock()
  return config
