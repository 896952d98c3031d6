"""scikit-learn's 1,797 real 8x8 handwritten digits: trains in seconds, fully offline.

Run: python run.py --config=configs/digits.py
Variants: mlp (default, 64-128-10) or cnn (a 3x3 'SAME' conv stack sized for 8x8 inputs).
Expected: about 0.96-0.97 test accuracy (360 held-out digits) after 30 epochs, in seconds on a CPU.
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, small = base.parse_arg(arg)
  config = base.base_config(variant, small=False)
  config.data.source = "digits"
  config.data.name = "digits"
  config.data.download = False
  config.data.validation_fraction = 0.1
  if variant == "cnn":
    config.model.padding = "SAME"
  config.train.batch_size = 32
  config.train.num_epochs = 30 if not small else 3
  config.train.log_every_steps = 100
  config.eval.batch_size = 256
  config.lock()
  return config
