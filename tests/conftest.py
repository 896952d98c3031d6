"""Shared fixtures. Tests run on the CPU and never touch the network."""

from __future__ import annotations

import os
import sys

import pytest

# The suite's fake-device and bit-identical tests are about the CPU: on a machine whose
# jaxlib sees a GPU they would otherwise run there (set before any test imports jax;
# subprocesses inherit it).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `configs` is a folder of the repo, not part of the package
  sys.path.insert(0, REPO_ROOT)

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def digits_config(**overrides):
  """configs/digits.py without pictures, report or TensorBoard files, with `overrides`
  ("train.num_epochs": 2, ...)."""
  from configs import digits
  config = digits.get_config()
  with config.unlocked():
    config.report.update(plots=False, html=False, tensorboard=False)
    config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture
def fashion_mnist_dir():
  if not os.path.isdir(DEBIAN_FASHION_MNIST):
    why = ("Debian's dataset-fashion-mnist is not installed (apt-get install "
           "dataset-fashion-mnist); .ci/run installs it.")
    if os.environ.get("CI"):  # CI must run every end-to-end test: a skip there is a failure
      pytest.fail(why)
    pytest.skip(why)
  return DEBIAN_FASHION_MNIST

# run.py keeps compiled programs in ~/.cache/bigjax/jax by default; tests that start run.py
# must neither write there nor depend on what an earlier run left, so the cache is off
# unless a test turns it on.
os.environ["BIGJAX_COMPILATION_CACHE"] = ""
