"""A small Vision Transformer on CIFAR-10 through TFDS (needs network once, and
`pip install -e '.[tf]'`; offline it fails at once, saying what to do).

ViT: 4x4 patches (64 tokens + a class token), width 192, 6 pre-LayerNorm blocks of 3 heads,
MLP ratio 2 (about 1.8M parameters; see --mode=summary). AdamW 1e-3, weight decay 0.05,
5 warmup epochs then cosine, label smoothing 0.1, batch 128, 50 epochs, 10% of train held
out for validation.
  python run.py --config=configs/cifar10_vit.py[:small]
Augmentation: 4-pixel padding with random crops and random left-right flips, on the device.
Expected: not yet measured by bigjax (no network for CIFAR-10 and no GPU on the machine this
was written on). ViTs trained from scratch on small data overfit more than ResNets; stronger
augmentation (--config.data.augment.mixup_alpha=0.2, cutout_size=8) is there to try.
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  small = arg == "small"
  if arg not in (None, "", "small"):
    raise ValueError(f'Unknown variant "{arg}": use nothing or "small".')
  config = base.base_config("mlp", small)
  with config.unlocked():
    config.model = dict(name="vit", patch_size=4, hidden_size=192, depth=6, num_heads=3,
                        mlp_ratio=2.0, pool="cls", dropout_rate=0.0, num_classes=10)
    if small:
      config.model.update(hidden_size=32, depth=2, num_heads=2)
    config.data.name = "cifar10"
    config.data.validation_fraction = 0.1
    config.data.standardize = True
    config.data.augment.update(crop_padding=4, flip_lr=True)
    config.loss.label_smoothing = 0.1
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.05
    config.optimizer.schedule.name = "cosine"
    config.train.batch_size = 128
    config.train.num_epochs = 50 if not small else 1
    config.train.steps_per_call = 1
    config.eval.batch_size = 64  # faster than 1000 on CPUs (activations stay in cache)
    config.optimizer.schedule.warmup_steps = 5 * (45_000 // 128) if not small else 0
  config.lock()
  return config
