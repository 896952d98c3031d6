"""Self-supervised pre-training by contrast (SimCLR, Chen et al. 2020): two augmented views of
each of the 60,000 Fashion-MNIST training images, labels unused; a backbone plus a projection
head learns to tell each view's partner from every other image of the batch (NT-Xent).

  python run.py --config=configs/fashion_mnist_simclr.py --workdir=runs/simclr       # CNN
  python run.py --config=configs/fashion_mnist_simclr.py:mlp --workdir=runs/simclr_mlp
  python run.py --config=configs/fashion_mnist_simclr.py:cnn,vicreg ...   # VICReg instead

The backbone is the network configs/fashion_mnist_fewlabels.py fine-tunes (`:cnn` the
lessons' CNN, `:mlp` the autoencoder's 784-256-128 MLP, `:vit` its small ViT), so it loads every backbone weight
(init_from.skip="^projection_" drops the projection head; its head is new):

  python run.py --config=configs/fashion_mnist_fewlabels.py:cnn \
      --config.init_from.path=runs/simclr --workdir=runs/fewlabels_simclr
  python run.py --config=configs/fashion_mnist_fewlabels.py:cnn,probe ...   # linear probe

Augmentations: random resized crops (area 25-100%), horizontal flips, brightness and
contrast jitter (80% of views), on the device, keyed by (seed, step). Batch 256 (510
negatives per pair), temperature 0.2, AdamW with a cosine schedule. Evaluation is off:
NT-Xent scores pairs of views, which only training makes; the fine-tune judges it.
For a GPU: a longer run (--config.train.num_epochs=200) and a larger batch
(--config.train.batch_size=1024, learning rate scaled with it) are SimCLR's levers.
Measured results: bench/results/few_labels_*.md (bench/few_labels.py).
"""

from __future__ import annotations

import ml_collections

from configs import fashion_mnist_fewlabels


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens = [t for t in (arg or "").split(",") if t]
  networks = [t for t in tokens if t in ("cnn", "mlp", "vit")]
  unknown = set(tokens) - {"cnn", "mlp", "vit", "small", "vicreg"}
  if unknown or len(networks) > 1:
    raise ValueError(f'Unknown variant "{arg}": use cnn (default), mlp or vit, optionally '
                     "with ',vicreg' and/or ',small'.")
  small = "small" in tokens
  network = networks[0] if networks else "cnn"
  config = fashion_mnist_fewlabels.get_config(network)
  with config.unlocked():
    backbone = {k: v for k, v in config.model.to_dict().items() if k != "num_classes"}
    if network == "cnn":
      # The conv trunk: SimCLR's representation is the last layer before any projection,
      # and the CNN's dense layer would be one (the fine-tune trains it from scratch).
      backbone["dense_sizes"] = ()
    config.model = dict(name="projected", backbone=backbone, projection_sizes=(256, 128))
    config.data.labels_per_class = -1  # every training image; the labels are never read
    config.data.validation_fraction = 0.0
    config.data.augment.update(views=2, resized_crop=0.25, flip_lr=True, brightness=0.4,
                               contrast=0.4, jitter_probability=0.8)
    if "vicreg" in tokens:
      config.loss = dict(name="vicreg", invariance=25.0, variance=25.0, covariance=1.0,
                         l1=0.0, l2=0.0, penalty_mask="kernel")
    else:
      config.loss = dict(name="nt_xent", temperature=0.2, l1=0.0, l2=0.0,
                         penalty_mask="kernel")
    config.init_from.skip = ""
  config.optimizer.update(name="adamw", learning_rate=1e-3, weight_decay=1e-4)
  config.optimizer.schedule.update(name="cosine", warmup_steps=200)
  config.train.update(batch_size=256, num_epochs=20 if not small else 1, steps_per_call=1,
                      log_every_steps=50)
  if small:
    config.data.max_train_examples = 2048
  config.eval.update(every_epoch="", at_end="", metrics="loss")
  config.checkpoint.best_metric = ""
  config.lock()
  return config
