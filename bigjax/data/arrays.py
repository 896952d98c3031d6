"""NumPy arrays users already have: one `.npz` file, or a folder of `.npy` files (read
memory-mapped, so a split larger than memory is only paged in as batches need it)."""

from __future__ import annotations

import os

import numpy as np

from bigjax.registry import ConfigError

# Accepted names for each array, first match wins (bigjax's own, then Keras-style).
NAMES = {
    "train_images": ("train_images", "x_train", "images", "x", "train_inputs", "inputs"),
    "train_labels": ("train_labels", "y_train", "labels", "y", "train_targets", "targets"),
    "test_images": ("test_images", "x_test", "test_inputs"),
    "test_labels": ("test_labels", "y_test", "test_targets"),
}


def _pick(available: dict, key: str, where: str, required: bool):
  for name in NAMES[key]:
    if name in available:
      return available[name]
  if required:
    raise ConfigError(f"{where} has no {key} array: name it one of {list(NAMES[key])} "
                      f"(found: {sorted(available)}).")
  return None


def as_images(array: np.ndarray, where: str) -> np.ndarray:
  """[N, H, W] -> [N, H, W, 1]; [N, D] features -> [N, 1, 1, D]; [N, H, W, C] as is."""
  if array.ndim == 2:
    return array.reshape(array.shape[0], 1, 1, array.shape[1])
  if array.ndim == 3:
    return array[..., None]
  if array.ndim == 4:
    return array
  raise ConfigError(f"{where}: images of shape {array.shape}; give [N, H, W], "
                    "[N, H, W, C] or [N, features].")


def load(path: str) -> dict:
  """{"train_images", "train_labels", "test_images"?, "test_labels"?, "class_names"?} from a
  .npz file or a folder of .npy files. Counts are checked; arrays are not copied."""
  path = os.path.expanduser(path)
  if not path:
    raise ConfigError("config.data.source='arrays' needs config.data.path: a .npz file, or "
                      "a folder of .npy files (train_images.npy, train_labels.npy, ...).")
  if os.path.isdir(path):
    files = {f[:-4]: os.path.join(path, f) for f in os.listdir(path) if f.endswith(".npy")}
    available = {name: np.load(p, mmap_mode="r") for name, p in files.items()}
  elif os.path.isfile(path):
    try:
      with np.load(path, allow_pickle=False) as npz:
        available = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as e:
      # (numpy names pickles for any file it does not recognise: not the user's problem)
      why = "" if "allow_pickle" in str(e) else f" ({e})"
      raise ConfigError(f"{path} is not a .npz file numpy can read{why}: give a .npz saved "
                        "with np.savez, or a folder of .npy files.") from None
  else:
    raise ConfigError(f"{path}: no such file or folder (config.data.path).")
  out = {}
  for key in NAMES:
    required = key.startswith("train")
    array = _pick(available, key, path, required)
    if array is not None:
      out[key] = as_images(array, f"{path}: {key}") if key.endswith("images") else array
  if ("test_images" in out) != ("test_labels" in out):
    raise ConfigError(f"{path} has test images or test labels but not both.")
  for split in ("train", "test"):
    if f"{split}_images" in out:
      n_images, labels = len(out[f"{split}_images"]), out[f"{split}_labels"]
      if labels.ndim != 1 or len(labels) != n_images:
        raise ConfigError(f"{path}: {n_images} {split} images but {split} labels of shape "
                          f"{labels.shape}; give one label per image, shape [{n_images}].")
  if "class_names" in available:
    out["class_names"] = [str(n) for n in np.asarray(available["class_names"])]
  return out
