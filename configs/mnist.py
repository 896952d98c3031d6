"""The first lesson: an MLP (784-128(relu)-10) on MNIST, Adam 1e-3, batch 32, 5 epochs.

Run (downloads MNIST through TFDS; needs network and `pip install -e '.[tf]'` once):
  python run.py --config=configs/mnist.py
Variants (comma-separated after the colon):
  mlp (default) 784-128-10 | mlp2 784-128-64-10 | mlp3 784-256-128-64-10 | cnn
  small: 2,000 training examples and 1 epoch, for a smoke test on a CPU.
Expected (MNIST, 20% of train held out for validation): mlp ~0.975 test accuracy, cnn ~0.99
(published figures for these networks; this config was measured offline on Fashion-MNIST only,
see configs/fashion_mnist.py).
"""

from __future__ import annotations

import ml_collections

from configs.base import base_config
from configs.base import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, small = parse_arg(arg)
  config = base_config(variant, small)
  config.lock()
  return config
