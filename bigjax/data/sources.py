"""Data sources, chosen by `config.data.source`: where the raw train and test arrays come from.

A source maps the data config to a `RawData`: uint8 (or float) images [N, H, W, C] and int
labels [N] (or, for regression, float targets [N]) for a train and a test split. Everything after that (validation split, scaling,
batching) is the same for every source.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import numpy as np

from bigjax.data import idx, tfds_source
from bigjax.registry import ConfigError, Registry

SOURCES = Registry("data source")
register_source = SOURCES.register

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclasses.dataclass
class RawData:
  train_images: np.ndarray   # [N, H, W, C]
  train_labels: np.ndarray   # int32 [N]; float32 [N] targets for regression
  test_images: np.ndarray
  test_labels: np.ndarray
  pixel_max: float           # images / pixel_max lies in [0, 1]
  class_names: list[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def _names_for(num_classes: int, known: list[str]) -> list[str]:
  return known if len(known) == num_classes else [str(i) for i in range(num_classes)]


@register_source("idx")
def load_idx(data_config: Mapping[str, Any]) -> RawData:
  """MNIST-format IDX files in `config.data.path`."""
  if not data_config["path"]:
    raise ConfigError("config.data.source='idx' needs config.data.path: the folder holding the "
                      f"four IDX files (e.g. {DEBIAN_FASHION_MNIST}).")
  path = os.path.expanduser(data_config["path"])
  train_x, train_y = idx.load_idx_split(path, "train")
  test_x, test_y = idx.load_idx_split(path, "test")
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  known = FASHION_MNIST_CLASSES if "fashion" in data_config["name"] else []
  return RawData(train_x, train_y, test_x, test_y, 255.0, _names_for(num_classes, known))


@register_source("tfds")
def load_tfds(data_config: Mapping[str, Any]) -> RawData:
  """A TFDS dataset with 'image' and 'label' features, e.g. mnist or fashion_mnist."""
  read = lambda split: tfds_source.load_tfds_split(
      data_config["name"], split, data_config["data_dir"] or None, data_config["download"])
  train_x, train_y, names = read(data_config["train_split"])
  test_x, test_y, _ = read(data_config["test_split"])
  num_classes = len(names) or int(max(train_y.max(), test_y.max())) + 1
  pixel_max = 255.0 if train_x.dtype == np.uint8 else 1.0
  return RawData(train_x, train_y, test_x, test_y, pixel_max, _names_for(num_classes, names))


@register_source("digits")
def load_digits(data_config: Mapping[str, Any]) -> RawData:
  """scikit-learn's 1,797 real 8x8 handwritten digits (ships with scikit-learn; no download).

  No official test split exists: a fixed 20% (seeded by config.data.split_seed) is held out.
  """
  try:
    from sklearn.datasets import load_digits as sk_load_digits
  except ImportError as e:
    raise ConfigError("config.data.source='digits' needs scikit-learn: "
                      "pip install 'bigjax[sklearn]'.") from e
  digits = sk_load_digits()
  images = digits.images.astype(np.uint8)[..., None]  # values 0..16
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(data_config["split_seed"]).permutation(len(labels))
  n_test = len(labels) // 5
  test, train = order[:n_test], order[n_test:]
  return RawData(images[train], labels[train], images[test], labels[test], 16.0,
                 [str(i) for i in range(10)])


@register_source("diabetes")
def load_diabetes(data_config: Mapping[str, Any]) -> RawData:
  """scikit-learn's diabetes regression data (ships with scikit-learn; no download): 442
  patients, 10 standardised features as a [1, 1, 10] "image", and a float target (disease
  progression one year later, 25-346). A fixed 20% (seeded by config.data.split_seed) is
  held out as test, as for digits."""
  try:
    from sklearn.datasets import load_diabetes as sk_load_diabetes
  except ImportError as e:
    raise ConfigError("config.data.source='diabetes' needs scikit-learn: "
                      "pip install 'bigjax[sklearn]'.") from e
  diabetes = sk_load_diabetes()
  features = diabetes.data.astype(np.float32)[:, None, None, :]
  targets = diabetes.target.astype(np.float32)
  order = np.random.default_rng(data_config["split_seed"]).permutation(len(targets))
  n_test = len(targets) // 5
  test, train = order[:n_test], order[n_test:]
  return RawData(features[train], targets[train], features[test], targets[test], 1.0, [])


def load_raw(data_config: Mapping[str, Any]) -> RawData:
  source: Callable[[Mapping[str, Any]], RawData] = SOURCES.get(data_config["source"])
  return source(data_config)
