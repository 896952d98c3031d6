"""The model's input as a data config will give it, found without reading the data where
the config and the dataset's metadata say enough (`--mode=summary` needs only this, so it
runs offline on a dataset that is not there)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from bigjax.data import idx


def _idx_image_shape(path: str) -> tuple | None:
  """One example's shape from the train images file's header (rows, columns; 1 channel)."""
  try:
    images, _ = idx.find_split_files(os.path.expanduser(path), "train")
  except (ValueError, FileNotFoundError):
    return None
  dims = idx.read_idx_shape(images)
  return (*dims[1:], 1) if len(dims) == 3 else dims[1:]


def _tfds_image_shape(data_config: Mapping[str, Any]) -> tuple | None:
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(data_config["name"], data_dir=data_config.get("data_dir") or None)
    return tuple(builder.info.features["image"].shape)
  except Exception:  # noqa: BLE001  (an unknown name or layout: the data will tell)
    return None


def example_input(data_config: Mapping[str, Any]) -> np.ndarray | None:
  """A zero example [1, ...] of the model's input; None where only the data can tell."""
  source = data_config["source"]
  if source in ("text", "tfds_text", "tokens"):
    return np.zeros((1, int(data_config.get("seq_len", 128))), np.int32)
  size = tuple(data_config.get("image_size") or ())
  if source == "tfds":
    shape = _tfds_image_shape(data_config)
  elif source == "idx":
    shape = _idx_image_shape(data_config.get("path", ""))
  elif source == "folder" and size and data_config.get("channels"):
    shape = (*size, int(data_config["channels"]))
  else:
    return None
  if shape is None:
    return None
  if size:
    shape = (*size, shape[-1])
  if any(d is None for d in shape):
    return None
  return np.zeros((1, *shape), np.float32)
