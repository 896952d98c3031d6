"""Pure data preparation: validation split, scaling, epoch order and padded eval batches.

Every function here is deterministic in its arguments: the training order is a pure
function of (seed, epoch), so a resumed run sees the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from bigjax.data.sources import RawData
from bigjax.registry import ConfigError


@dataclasses.dataclass
class Split:
  images: np.ndarray   # float32 [N, H, W, C], scaled (and standardised if asked)
  labels: np.ndarray   # int32 [N] (float32 targets [N] for regression)

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass
class PreparedData:
  train: Split
  validation: Split | None
  test: Split
  class_names: list[str]
  stats: dict  # scaling and standardisation statistics, saved with the run

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def is_regression(self) -> bool:
    """Float labels are regression targets."""
    return bool(np.issubdtype(self.train.labels.dtype, np.floating))

  def splits(self) -> dict[str, Split]:
    out = {"train": self.train, "test": self.test}
    if self.validation is not None:
      out["validation"] = self.validation
    return out


def train_validation_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint (train, validation) index arrays; validation gets round(n * fraction)."""
  if not 0.0 <= fraction < 1.0:
    raise ConfigError(f"config.data.validation_fraction must be in [0, 1); got {fraction}.")
  order = np.random.default_rng(seed).permutation(n)
  n_val = int(round(n * fraction))
  return np.sort(order[n_val:]), np.sort(order[:n_val])


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The training order of epoch `epoch`: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def padded_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices [num_batches, B] and mask [num_batches, B] covering 0..n-1 exactly once.

  The last batch is padded with index 0 and mask 0, never dropped.
  """
  num_batches = -(-n // batch_size)
  indices = np.zeros(num_batches * batch_size, np.int32)
  indices[:n] = np.arange(n)
  mask = np.zeros(num_batches * batch_size, np.float32)
  mask[:n] = 1.0
  return indices.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation over [N, H, W]."""
  axes = tuple(range(images.ndim - 1))
  mean = images.mean(axis=axes, dtype=np.float64)
  std = images.std(axis=axes, dtype=np.float64)
  return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def select_classes(splits, classes: tuple, class_names: list[str]):
  """Keeps the examples of `classes` in each (images, labels) split, relabelled by their
  position in `classes`; returns (splits, the kept class names)."""
  known = len(class_names) or int(max(int(y.max()) for _, y in splits)) + 1
  bad = [c for c in classes if not 0 <= int(c) < known]
  if bad or len(set(classes)) != len(classes):
    raise ConfigError(f"config.data.classes={classes}: give distinct class ids in "
                      f"[0, {known - 1}].")
  relabel = np.full(known, -1, np.int32)
  relabel[list(classes)] = np.arange(len(classes))
  out = []
  for images, labels in splits:
    keep = np.isin(labels, classes)
    out.append((images[keep], relabel[labels[keep]]))
  names = [class_names[c] for c in classes] if class_names else [str(c) for c in classes]
  return out, names


def labels_per_class(labels: np.ndarray, indices: np.ndarray, n: int, seed: int) -> np.ndarray:
  """The first `n` of each class among `indices`, in an order fixed by `seed` (sorted)."""
  order = np.random.default_rng([seed, 1]).permutation(indices)
  chosen = np.concatenate([order[labels[order] == c][:n] for c in np.unique(labels[order])])
  short = [int(c) for c in np.unique(labels[order]) if (labels[order] == c).sum() < n]
  if short:
    raise ConfigError(f"config.data.labels_per_class={n}: classes {short} have fewer "
                      "training examples than that.")
  return np.sort(chosen)


def prepare(raw: RawData, data_config: Mapping[str, Any]) -> PreparedData:
  """Limits, splits and scales the raw arrays as the data config says."""
  train_x, train_y = raw.train_images, raw.train_labels
  test_x, test_y = raw.test_images, raw.test_labels
  class_names = list(raw.class_names)
  classes = tuple(data_config.get("classes") or ())
  if classes:  # a subset of the classes, relabelled 0..k-1 in the order given
    ((train_x, train_y), (test_x, test_y)), class_names = select_classes(
        [(train_x, train_y), (test_x, test_y)], classes, class_names)
  # The small-run switch: the first N examples (a fixed, seed-independent subset).
  if data_config["max_train_examples"] > 0:
    train_x, train_y = train_x[:data_config["max_train_examples"]], train_y[:data_config["max_train_examples"]]
  if data_config["max_test_examples"] > 0:
    test_x, test_y = test_x[:data_config["max_test_examples"]], test_y[:data_config["max_test_examples"]]

  train_idx, val_idx = train_validation_indices(
      len(train_y), data_config["validation_fraction"], data_config["split_seed"])

  def scale(x):
    return x.astype(np.float32) / np.float32(raw.pixel_max)

  per_class = data_config.get("labels_per_class", -1)
  if per_class and per_class > 0:  # few labels: N per class, chosen with split_seed
    train_idx = labels_per_class(train_y, train_idx, per_class, data_config["split_seed"])
  train = Split(scale(train_x[train_idx]), train_y[train_idx])
  validation = Split(scale(train_x[val_idx]), train_y[val_idx]) if len(val_idx) else None
  test = Split(scale(test_x), test_y)

  stats: dict = {"pixel_max": raw.pixel_max}
  if data_config["standardize"]:
    # Statistics from the training split only, so validation and test stay unseen.
    mean, std = channel_stats(train.images)
    stats.update(mean=mean.tolist(), std=std.tolist())
    for split in (train, validation, test):
      if split is not None:
        split.images = (split.images - mean) / std
  return PreparedData(train, validation, test, class_names, stats)
