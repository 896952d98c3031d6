"""Pure data preparation: validation split, scaling, epoch order and padded eval batches.

Every function here is deterministic in its arguments: the training order is a pure
function of (seed, epoch), so a resumed run sees the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import mmap
from typing import Any, Mapping

import numpy as np

from bigjax.data.sources import RawData
from bigjax.registry import ConfigError


class LazyImages:
  """Model-ready float32 images [N, H, W, C] read on demand from raw pixels.

  `raw` may be memory-mapped (a folder of .npy files) and larger than memory: only the
  rows a batch indexes are read, then scaled by 1/pixel_max and standardised. Indexing with
  an int array or slice gives a float32 numpy array; np.asarray reads everything.
  """

  def __init__(self, raw: np.ndarray, rows: np.ndarray | None, pixel_max: float,
               mean: np.ndarray | None = None, std: np.ndarray | None = None):
    self.raw, self.rows = raw, rows
    self.pixel_max = np.float32(pixel_max)
    self.mean = None if mean is None else np.asarray(mean, np.float32)
    self.std = None if std is None else np.asarray(std, np.float32)

  @property
  def shape(self) -> tuple:
    return (len(self),) + tuple(self.raw.shape[1:])

  @property
  def ndim(self) -> int:
    return self.raw.ndim

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32) if self.pixel_max else np.dtype(self.raw.dtype)

  def __len__(self) -> int:
    return len(self.rows) if self.rows is not None else len(self.raw)

  def __getstate__(self):
    # A memory-mapped file travels to a worker process as its name, not its bytes.
    state = dict(self.__dict__)
    raw = self.raw
    if (isinstance(raw, np.memmap) and getattr(raw, "filename", None)
        and isinstance(raw.base, mmap.mmap)):  # (the file's whole array, not a view of it)
      state["raw"] = ("memmap", raw.filename, raw.dtype.str, raw.shape, raw.offset,
                      "F" if raw.flags.f_contiguous and not raw.flags.c_contiguous else "C")
    return state

  def __setstate__(self, state):
    raw = state["raw"]
    if isinstance(raw, tuple) and raw[0] == "memmap":
      _, filename, dtype, shape, offset, order = raw
      state["raw"] = np.memmap(filename, dtype, "r", offset, shape, order)
    self.__dict__.update(state)

  def standardized(self, mean: np.ndarray, std: np.ndarray) -> "LazyImages":
    return LazyImages(self.raw, self.rows, self.pixel_max, mean, std)

  def __getitem__(self, key) -> np.ndarray:
    if self.rows is not None:
      positions = np.asarray(self.rows[key])
    elif isinstance(key, slice):  # (no index array of the whole split per batch)
      positions = np.arange(*key.indices(len(self)))
    else:
      positions = np.asarray(key)
    if positions.ndim == 0:
      return self[np.asarray([key])][0]
    # Sorted reads: a memory-mapped file pages in each region once, front to back.
    order = np.argsort(positions, kind="stable")
    pixels = np.empty((len(positions),) + self.raw.shape[1:], self.raw.dtype)
    pixels[order] = self.raw[positions[order]]
    if not self.pixel_max:  # integer tokens: as they are
      return pixels
    # In place: one float array, not one per operation (each new array the size of the
    # split costs more in fresh memory than the arithmetic); the same floats, bit for bit.
    images = pixels.astype(np.float32)
    np.divide(images, self.pixel_max, out=images)
    if self.mean is not None:
      np.subtract(images, self.mean, out=images)
      np.divide(images, self.std, out=images)
    return images

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    out = self[:]
    return out if dtype is None else out.astype(dtype)

  def chunks(self, size: int = 4096):
    for start in range(0, len(self), size):
      yield self[start:start + size]


@dataclasses.dataclass
class Split:
  """One split's model inputs and targets (named for what they are in every task: images,
  token sequences or table rows in; class ids, regression targets or next tokens out)."""
  inputs: np.ndarray | LazyImages  # float32 [N, H, W, C] images, scaled (and standardised
                                   # if asked); int32 [N, T] tokens; float32 [N, F] features
  targets: np.ndarray              # int32 [N] classes; float32 [N] regression; [N, T] tokens

  def __len__(self) -> int:
    return len(self.targets)


@dataclasses.dataclass
class PreparedData:
  train: Split
  validation: Split | None
  test: Split
  class_names: list[str]
  stats: dict  # scaling and standardisation statistics, saved with the run
  tokenizer: str | None = None  # tokenizers' JSON of a text source (saved as tokenizer.json)
  placement: str = "device"  # where the splits live: "device" (in memory) or "host" (read
                             # batch by batch)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def is_regression(self) -> bool:
    """Float labels are regression targets."""
    return bool(np.issubdtype(self.train.targets.dtype, np.floating))

  @property
  def is_tokens(self) -> bool:
    """Integer token sequences (language models), not pixels to scale."""
    return not self.stats["pixel_max"]

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


def channel_stats(images: np.ndarray | LazyImages) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation over [N, H, W], in two float64 passes over
  chunks (lazy images are never all in memory at once)."""
  chunks = images.chunks if isinstance(images, LazyImages) else (lambda: [images])
  count = len(images) * int(np.prod(images.shape[1:-1]))
  total = sum(c.reshape(-1, c.shape[-1]).sum(0, dtype=np.float64) for c in chunks())
  mean = total / count
  squares = sum(np.square(c.reshape(-1, c.shape[-1]) - mean).sum(0) for c in chunks())
  std = np.sqrt(squares / count)
  return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def class_rows(labels_per_split, classes: tuple, class_names: list[str]):
  """For each split's labels, (rows of `classes`' examples, their labels relabelled by
  position in `classes`); and the kept class names."""
  known = len(class_names) or int(max(int(y.max()) for y in labels_per_split)) + 1
  bad = [c for c in classes if not 0 <= int(c) < known]
  if bad or len(set(classes)) != len(classes):
    raise ConfigError(f"config.data.classes={classes}: give distinct class ids in "
                      f"[0, {known - 1}].")
  relabel = np.full(known, -1, np.int32)
  relabel[list(classes)] = np.arange(len(classes))
  out = []
  for labels in labels_per_split:
    rows = np.flatnonzero(np.isin(labels, classes))
    out.append((rows, relabel[labels[rows]]))
  names = [class_names[c] for c in classes] if class_names else [str(c) for c in classes]
  return out, names


def select_classes(splits, classes: tuple, class_names: list[str]):
  """Keeps the examples of `classes` in each (images, labels) split, relabelled by their
  position in `classes`; returns (splits, the kept class names)."""
  kept, names = class_rows([labels for _, labels in splits], classes, class_names)
  return [(images[rows], labels) for (images, _), (rows, labels) in zip(splits, kept)], names


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
  # Splits are rows of the raw arrays, read (scaled, standardised) only when indexed: a
  # memory-mapped or streamed source is never copied whole.
  train_x, train_y = raw.train_inputs, _targets(raw.train_targets)
  test_x, test_y = raw.test_inputs, _targets(raw.test_targets)
  train_rows, test_rows = np.arange(len(train_y)), np.arange(len(test_y))
  class_names = list(raw.class_names)
  classes = tuple(data_config.get("classes") or ())
  if classes:  # a subset of the classes, relabelled 0..k-1 in the order given
    ((train_rows, train_y), (test_rows, test_y)), class_names = class_rows(
        [train_y, test_y], classes, class_names)
  else:
    train_y, test_y = _rows_of(train_y, slice(None)), _rows_of(test_y, slice(None))
  # The small-run switch: the first N examples (a fixed, seed-independent subset).
  if data_config["max_train_examples"] > 0:
    train_rows, train_y = (train_rows[:data_config["max_train_examples"]],
                           _rows_of(train_y, slice(data_config["max_train_examples"])))
  if data_config["max_test_examples"] > 0:
    test_rows, test_y = (test_rows[:data_config["max_test_examples"]],
                         _rows_of(test_y, slice(data_config["max_test_examples"])))

  if raw.validation_inputs is not None:  # the source held out its own
    train_idx, val_idx = np.arange(len(train_y)), np.zeros(0, np.int64)
  else:
    train_idx, val_idx = train_validation_indices(
        len(train_y), data_config["validation_fraction"], data_config["split_seed"])

  per_class = data_config.get("labels_per_class", -1)
  if per_class and per_class > 0:  # few labels: N per class, chosen with split_seed
    train_idx = labels_per_class(train_y, train_idx, per_class, data_config["split_seed"])
  lazy = lambda x, rows: LazyImages(x, rows, raw.pixel_max)
  train = Split(lazy(train_x, train_rows[train_idx]), _rows_of(train_y, train_idx))
  validation = (Split(lazy(train_x, train_rows[val_idx]), _rows_of(train_y, val_idx))
                if len(val_idx) else None)
  test = Split(lazy(test_x, test_rows), test_y)
  if raw.validation_inputs is not None:
    validation = Split(lazy(raw.validation_inputs, None),
                       _targets(raw.validation_targets))

  stats: dict = {"pixel_max": raw.pixel_max}
  if data_config["standardize"] and not raw.pixel_max:
    raise ConfigError("config.data.standardize=True applies to images; this source gives "
                      "integer tokens. Set it to False.")
  if data_config["standardize"]:
    # Statistics from the training split only, so validation and test stay unseen.
    mean, std = channel_stats(train.inputs)
    stats.update(mean=mean.tolist(), std=std.tolist())
    for split in (train, validation, test):
      if split is not None:
        split.inputs = split.inputs.standardized(mean, std)
  placement = resolve_placement(data_config, [train, validation, test])
  if placement == "device":  # in memory, then on the device
    for split in (train, validation, test):
      if split is not None:
        split.inputs, split.targets = np.asarray(split.inputs), np.asarray(split.targets)
  return PreparedData(train, validation, test, class_names, stats, raw.tokenizer, placement)


def _targets(targets):
  """A source's targets: an array, or (a token corpus's next-token windows) read lazily."""
  return targets if hasattr(targets, "select") else np.asarray(targets)


def _rows_of(targets, rows):
  """targets[rows] as a copy, or, for lazy targets, as a selection still unread."""
  return targets.select(rows) if hasattr(targets, "select") else targets[rows].copy()


def model_ready_bytes(splits) -> int:
  """The bytes the splits' model inputs take once read (float32 images, int tokens)."""
  return sum(len(s) * int(np.prod(s.inputs.shape[1:])) * s.inputs.dtype.itemsize
             for s in splits if s is not None)


def check_placement(placement: str) -> str:
  if placement not in ("device", "host", "auto"):
    raise ConfigError(f'config.data.placement="{placement}": use "auto" (by size), "device" '
                      '(whole splits in device memory, the fastest) or "host" (batches read '
                      "on the host and prefetched, for data larger than device memory).")
  return placement


def resolve_placement(data_config: Mapping[str, Any], splits) -> str:
  """config.data.placement, with "auto" decided by size (logged): device memory when
  the model-ready splits fit in device_limit_gb, else read on the host."""
  placement = check_placement(data_config.get("placement", "device"))
  if placement != "auto":
    return placement
  size, limit = model_ready_bytes(splits), float(data_config.get("device_limit_gb", 4.0))
  placement = "device" if size <= limit * 2 ** 30 else "host"
  py_logging.getLogger("bigjax.train").info(
      "data placement: %s (auto: the splits take %.2f GB model-ready, %s "
      "config.data.device_limit_gb=%g)", placement, size / 2 ** 30,
      "within" if placement == "device" else "over", limit)
  return placement
