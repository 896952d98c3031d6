"""Image files (JPEG, PNG, ...) read into model-ready arrays."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np


def load_image_file(path: str, height: int, width: int, channels: int) -> np.ndarray:
  """One image as float32 [height, width, channels] in [0, 1], resized and converted
  (to grayscale for 1 channel, RGB for 3)."""
  from PIL import Image, UnidentifiedImageError
  if channels not in (1, 3):
    raise ValueError(f"Image files can feed 1- or 3-channel models; this one takes {channels}.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such image file.")
  try:
    with Image.open(path) as image:
      image.load()
      image = image.convert("L" if channels == 1 else "RGB")
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise ValueError(f"Cannot read {path} as an image ({e}). Give JPEG or PNG files.") from None
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  pixels = np.asarray(image, np.float32) / 255.0
  return pixels[..., None] if channels == 1 else pixels


def load_image_files(paths: Sequence[str], shape: Sequence[int],
                     stats: Mapping[str, Any]) -> np.ndarray:
  """Images [N, H, W, C] prepared as the run prepared its data: [0, 1] scaling, then its
  saved per-channel standardisation if it used one."""
  height, width, channels = shape
  images = np.stack([load_image_file(p, height, width, channels) for p in paths])
  if "mean" in stats:
    images = (images - np.asarray(stats["mean"], np.float32)) / np.asarray(stats["std"],
                                                                          np.float32)
  return images
