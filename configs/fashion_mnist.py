"""The lessons' networks on Fashion-MNIST, offline when Debian's files are installed.

Uses the IDX files of Debian's `dataset-fashion-mnist` package
(/usr/share/datasets/fashion-mnist) when present, else TFDS `fashion_mnist` (download).
Run:
  python run.py --config=configs/fashion_mnist.py            # 784-128-10, 5 epochs
  python run.py --config=configs/fashion_mnist.py:cnn        # the lessons' CNN
Variants as in configs/mnist.py (mlp, mlp2, mlp3, cnn; ',small' for a smoke test).
Measured results are in the README's table (bench/run_config.py, full data, this 2-core CPU).
"""

from __future__ import annotations

import os

import ml_collections

from configs import base

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, small = base.parse_arg(arg)
  config = base.base_config(variant, small)
  config.data.name = "fashion_mnist"
  if os.path.isdir(DEBIAN_FASHION_MNIST):
    config.data.source = "idx"
    config.data.path = DEBIAN_FASHION_MNIST
  if variant == "cnn":
    config.train.num_epochs = 2 if not small else 1
  config.lock()
  return config
