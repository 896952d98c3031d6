"""Reader for MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST ...), gzipped or not."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

# IDX type codes -> numpy dtypes (big-endian on disk).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class IdxFormatError(ValueError):
  pass


def _header(data: bytes, path: str) -> tuple[np.dtype, tuple, int]:
  """(dtype, shape, offset of the values) from an IDX file's first bytes."""
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise IdxFormatError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  return np.dtype(_IDX_DTYPES[data[2]]), shape, 4 + 4 * ndim


def _open(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read(path: str, size: int = -1) -> bytes:
  """The (decompressed) bytes; a damaged gzip stream is an IdxFormatError naming the file."""
  try:
    with _open(path) as f:
      return f.read(size)
  except (EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise IdxFormatError(f"{path} is a damaged gzip file ({type(e).__name__}: {e}); "
                         "download or copy it again.") from None


def read_idx_shape(path: str) -> tuple:
  """The shape of the array in one IDX file, from its header alone."""
  return _header(_read(path, 4 + 4 * 255), path)[1]


def read_idx(path: str) -> np.ndarray:
  """The array stored in one IDX file."""
  data = _read(path)
  dtype, shape, offset = _header(data, path)
  expected = offset + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise IdxFormatError(
        f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes), "
        f"file has {len(data)} bytes.")
  return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def find_split_files(directory: str, split: str) -> tuple[str, str]:
  """Paths of a split's image and label files in `directory`, with or without '.gz'."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"IDX data folder {directory!r} does not exist. Point config.data.path at a folder "
        "holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] (on Debian/Ubuntu, "
        "`apt-get install dataset-fashion-mnist` puts Fashion-MNIST in "
        "/usr/share/datasets/fashion-mnist).")
  paths = []
  for stem in SPLIT_FILES[split]:
    for candidate in (stem, stem + ".gz"):
      if os.path.exists(os.path.join(directory, candidate)):
        paths.append(os.path.join(directory, candidate))
        break
    else:
      raise FileNotFoundError(
          f"IDX data folder {directory!r} has no {stem} or {stem}.gz (needed for the "
          f"{split!r} split). It holds: {sorted(os.listdir(directory))}.")
  return paths[0], paths[1]


def load_idx_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, H, W, 1], labels int32 [N]) of one split."""
  images_path, labels_path = find_split_files(directory, split)
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim == 3:
    images = images[..., None]
  if labels.ndim != 1:
    raise IdxFormatError(
        f"{labels_path} holds an array of shape {labels.shape}, but a labels file holds one "
        f"integer per image (shape [N]): is it an images file under a labels file's name? "
        f"Copy the {split} labels file there again.")
  if len(images) != len(labels):
    raise IdxFormatError(
        f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels.")
  return images, labels.astype(np.int32)
