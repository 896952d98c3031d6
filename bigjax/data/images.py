"""Image files (JPEG, PNG, ...) read into arrays: one file, a list of files, or a folder
with one subfolder per class."""

from __future__ import annotations

import collections
import concurrent.futures
import logging as py_logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from bigjax.registry import ConfigError

logging = py_logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class BadImageError(ValueError):
  """A file that cannot be decoded as an image."""


def decode_image(path: str, size: Sequence[int] | None, channels: int) -> np.ndarray:
  """One image file as uint8 [H, W, channels] (grayscale for 1 channel, RGB for 3), resized
  (bilinear) to size=(H, W) when given and different."""
  from PIL import Image
  from PIL import UnidentifiedImageError
  if channels not in (1, 3):
    raise ConfigError(f"Image files can feed 1- or 3-channel models; {channels} channels "
                      "asked for (config.data.channels).")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such image file.")
  try:
    with Image.open(path) as image:
      image.load()
      image = image.convert("L" if channels == 1 else "RGB")
  except Image.DecompressionBombError as e:
    raise BadImageError(f"{path} is too large to decode safely ({e}). Resize it first "
                        "(e.g. to under 10,000 x 10,000 pixels).") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise BadImageError(f"Cannot decode {path} as an image ({e}).") from None
  if size and tuple(size) != (image.height, image.width):
    image = image.resize((int(size[1]), int(size[0])), Image.BILINEAR)
  pixels = np.asarray(image, np.uint8)
  return pixels[..., None] if channels == 1 else pixels


def load_image_file(path: str, height: int, width: int, channels: int) -> np.ndarray:
  """One image as float32 [height, width, channels] in [0, 1]."""
  try:
    pixels = decode_image(path, (height, width), channels)
  except BadImageError as e:
    raise ValueError(f"{e} Give JPEG or PNG files.") from None
  return pixels.astype(np.float32) / 255.0


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


def class_folders(root: str) -> list[tuple[str, list[str]]]:
  """[(class name, sorted image paths)] for each subfolder of `root`, sorted by name."""
  if not os.path.isdir(root):
    raise ConfigError(f"{root}: no such folder (config.data.path). An image folder holds "
                      "one subfolder of images per class, e.g. PATH/cat/*.jpg, PATH/dog/*.jpg.")
  names = sorted(d for d in os.listdir(root)
                 if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
  if not names:
    raise ConfigError(f"{root} has no subfolders. An image folder holds one subfolder of "
                      "images per class, e.g. PATH/cat/*.jpg, PATH/dog/*.jpg.")
  out = []
  for name in names:
    folder = os.path.join(root, name)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    if not files:
      raise ConfigError(f"Class folder {folder} holds no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}). Add images or remove the folder.")
    out.append((name, files))
  return out


def _image_channels(path: str) -> int | None:
  """1 (grayscale) or 3 from the file's header; None when it does not open."""
  from PIL import Image
  try:
    with Image.open(path) as image:
      return 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
  except Exception:  # pylint: disable=broad-except  (decode_image names it later)
    return None


def majority_channels(paths: Sequence[str], root: str) -> int:
  """The channels most of the images have (headers only); a folder that mixes grayscale
  and colour is converted to the majority, and the log says so."""
  counts = collections.Counter(c for c in map(_image_channels, paths) if c is not None)
  if not counts:
    return 3
  channels = 3 if counts[3] >= counts[1] else 1
  if len(counts) > 1:
    logging.warning("%s mixes %d grayscale and %d colour images: all are read as %s (the "
                    "majority); set --config.data.channels=1 or 3 to choose.", root,
                    counts[1], counts[3], "colour" if channels == 3 else "grayscale")
  return channels


def header_size(path: str) -> tuple[int, int] | None:
  """(height, width) from an image file's header (not decoded), or None if unreadable."""
  from PIL import Image
  try:
    with Image.open(path) as image:
      return image.height, image.width
  except Exception:  # noqa: BLE001  (reported when the file is read)
    return None


class FileImages:
  """Image files decoded on demand: an array-like uint8 [N, H, W, C] whose rows are files,
  for a folder too large to decode whole (host placement). Picklable: grain's worker
  processes decode the batches in parallel. A file that does not decode raises
  BadRecordError (stop with its path, or config.data.skip_bad_records=True)."""

  dtype = np.dtype(np.uint8)
  ndim = 4

  def __init__(self, paths: Sequence[str], size: Sequence[int], channels: int):
    self.paths, self.size, self.channels = list(paths), tuple(size), channels
    self.shape = (len(self.paths), *self.size, channels)

  def __len__(self) -> int:
    return len(self.paths)

  def subset(self, rows) -> "FileImages":
    return FileImages([self.paths[i] for i in np.asarray(rows)], self.size, self.channels)

  def _read(self, i: int) -> np.ndarray:
    from bigjax.data.records import BadRecordError
    try:
      return decode_image(self.paths[i], self.size, self.channels)
    except (BadImageError, OSError) as e:
      raise BadRecordError(f"image {i} of the folder ({e})") from None

  def __getitem__(self, rows) -> np.ndarray:
    rows = (np.arange(*rows.indices(len(self))) if isinstance(rows, slice)
            else np.asarray(rows))
    flat = [self._read(int(i)) for i in np.ravel(rows)]
    return (np.stack(flat).reshape(*rows.shape, *self.shape[1:]) if flat
            else np.zeros((*rows.shape, *self.shape[1:]), np.uint8))


def lazy_class_folders(root: str, size: Sequence[int] | None, channels: int,
                       class_names: Sequence[str] | None = None,
                       ) -> tuple[FileImages, np.ndarray, list[str]]:
  """load_class_folders without decoding: (FileImages, labels, class names), from the
  folder's listing and the images' headers (their sizes must agree without `size`)."""
  classes = class_folders(root)
  names = list(class_names) if class_names is not None else [n for n, _ in classes]
  extra = sorted({n for n, _ in classes} - set(names))
  if extra:
    raise ConfigError(f"{root} has class folders {extra} that the training folder lacks "
                      f"(its classes: {names}).")
  index = {name: i for i, name in enumerate(names)}
  paths = [p for _, files in classes for p in files]
  labels = np.asarray([index[name] for name, files in classes for _ in files], np.int32)
  channels = channels or majority_channels(paths, root)
  if not size:
    sizes = collections.Counter(filter(None, map(header_size, paths)))
    if len(sizes) > 1:
      (s1, _), (s2, _) = sizes.most_common(2)
      raise ConfigError(f"Images in {root} differ in size ({s1[0]}x{s1[1]}, {s2[0]}x{s2[1]}, "
                        "...). Set --config.data.image_size=H,W to resize them all, e.g. "
                        f"--config.data.image_size={s1[0]},{s1[1]}.")
    if not sizes:
      raise ConfigError(f"No image in {root} could be read.")
    size = next(iter(sizes))
  return FileImages(paths, size, channels), labels, names


def load_class_folders(root: str, size: Sequence[int] | None, channels: int,
                       skip_bad: bool, class_names: Sequence[str] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
  """(images uint8 [N, H, W, C], labels int32 [N], class names, skipped files) of an image
  folder. `channels` 0 takes the majority's (1 for grayscale, else 3). Without `size`,
  every image must already have one size. `class_names` fixes the label order (a test
  folder must use the train folder's)."""
  classes = class_folders(root)
  found = [name for name, _ in classes]
  if class_names is not None:
    extra = sorted(set(found) - set(class_names))
    if extra:
      raise ConfigError(f"{root} has class folders {extra} that the training folder lacks "
                        f"(its classes: {list(class_names)}).")
  names = list(class_names) if class_names is not None else found
  index = {name: i for i, name in enumerate(names)}
  paths = [p for _, files in classes for p in files]
  labels = [index[name] for name, files in classes for _ in files]
  channels = channels or majority_channels(paths, root)

  def read(path):
    try:
      return decode_image(path, size, channels)
    except BadImageError as e:
      if skip_bad:
        return None
      raise BadImageError(f"{e} Remove or replace it, or pass "
                          "--config.data.skip_bad_images=True to skip such files.") from None

  with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
    decoded = list(pool.map(read, paths))  # PIL decodes outside the GIL
  skipped = [p for p, image in zip(paths, decoded) if image is None]
  kept = [(image, label, p) for image, label, p in zip(decoded, labels, paths)
          if image is not None]
  if not kept:
    raise ConfigError(f"No image in {root} could be decoded.")
  shapes = {}
  for image, _, path in kept:
    shapes.setdefault(image.shape, path)
  if len(shapes) > 1:
    (s1, p1), (s2, p2) = list(shapes.items())[:2]
    raise ConfigError(f"Images in {root} differ in size ({p1}: {s1[0]}x{s1[1]}, {p2}: "
                      f"{s2[0]}x{s2[1]}). Set --config.data.image_size=H,W to resize them "
                      f"all, e.g. --config.data.image_size={s1[0]},{s1[1]}.")
  images = np.stack([image for image, _, _ in kept])
  return images, np.asarray([label for _, label, _ in kept], np.int32), names, skipped
