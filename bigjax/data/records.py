"""Datasets as array_record files, read one record at a time: data larger than memory.

A records folder (config.data.source="array_record") holds, per split, `<split>.array_record`
(or shards `<split>-00000-of-00004.array_record`, ...), and `info.json`:

  {"format": "bigjax-records/1", "kind": "images" | "texts", "class_names": [...],
   "image_shape": [H, W, C] | null, "pixel_max": 255, "splits": {"train": 60000, ...}}

An image record is a msgpack map {"image": bytes, "shape": [H, W, C] | None, "label": int}:
raw uint8 pixels of that shape, or (shape None) an encoded image file (PNG, JPEG, ...),
decoded when read. A text record is {"text": str, "label": int}, tokenized when read (by
the run's tokenizer, in the reading worker), so a corpus is never tokenized whole.
`<split>.labels.npy` keeps every label, so a run knows the classes and counts without
reading the records; records written elsewhere without it get one made by a pass over them.
array_record (Google's format for grain and TFDS) gives random access by index, which the
epoch's global shuffle needs.

Nothing here imports jax: the reading runs in grain's worker processes too.
"""

from __future__ import annotations

import glob
import io
import json
import logging as py_logging
import os
import re
from typing import Iterable, Sequence

import numpy as np

from bigjax.registry import ConfigError

logging = py_logging.getLogger(__name__)

FORMAT = "bigjax-records/1"
INFO = "info.json"


class BadRecordError(ValueError):
  """A record that cannot be read as an image and a label."""


def _need_array_record():
  try:
    from array_record.python import array_record_module
  except ImportError as e:
    raise ConfigError("Reading or writing array_record files needs the array_record package: "
                      "pip install array_record grain (both are bigjax dependencies: "
                      "reinstall it with pip install -e .).") from e
  return array_record_module


def encode_record(image: np.ndarray | bytes | str, label: int) -> bytes:
  """One record: raw uint8 pixels [H, W, C], the bytes of an image file, or a text."""
  import msgpack
  if isinstance(image, str):
    return msgpack.packb({"text": image, "label": int(label)})
  if isinstance(image, (bytes, bytearray)):
    return msgpack.packb({"image": bytes(image), "shape": None, "label": int(label)})
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(f"Records hold uint8 images [H, W, C]; got {image.dtype} "
                     f"{image.shape}.")
  return msgpack.packb({"image": image.tobytes(), "shape": list(image.shape),
                        "label": int(label)})


def decode_record(record: bytes, where: str, size: Sequence[int] | None = None,
                  channels: int = 0) -> tuple[np.ndarray, int]:
  """(uint8 image [H, W, C], label) of one record, resized to size=(H, W) when given."""
  import msgpack
  try:
    fields = msgpack.unpackb(record)
    data, shape, label = fields["image"], fields["shape"], int(fields["label"])
    if shape is None:
      from PIL import Image
      with Image.open(io.BytesIO(data)) as file:
        file.load()
        mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if file.mode in ("L", "1") else "RGB")
        image = np.asarray(file.convert(mode), np.uint8)
      image = image[..., None] if image.ndim == 2 else image
    else:
      image = np.frombuffer(data, np.uint8).reshape(shape)
  except Exception as e:  # noqa: BLE001  (any damage: truncated, not msgpack, bad image)
    raise BadRecordError(f"{where} cannot be read ({type(e).__name__}: {e}).") from None
  if size and tuple(size) != image.shape[:2]:
    from bigjax.data.sources import resize_images
    image = resize_images(image[None], size)[0]
  return image, label


def decode_text_record(record: bytes, where: str) -> tuple[str, int]:
  """(text, label) of one text record."""
  import msgpack
  try:
    fields = msgpack.unpackb(record)
    return str(fields["text"]), int(fields["label"])
  except Exception as e:  # noqa: BLE001  (any damage: truncated, not msgpack, no text)
    raise BadRecordError(f"{where} cannot be read as a text ({type(e).__name__}: {e}).") \
        from None


def write_split(folder: str, split: str,
                examples: Iterable[tuple[np.ndarray | bytes | str, int]],
                shard_size: int = 0, compression: str = "uncompressed") -> int:
  """Writes (image or text, label) pairs as `folder/<split>*.array_record` plus its labels
  file; returns the count. shard_size > 0 starts a new file every that many records.
  compression: array_record's ("uncompressed", "zstd:3", "brotli:6", ...). Uncompressed
  by default: JPEG/PNG bytes and photos' raw pixels barely compress, and it reads 1.5x
  faster than brotli, array_record's default (bench/README.md, Streaming)."""
  module = _need_array_record()
  os.makedirs(folder, exist_ok=True)
  labels: list[int] = []
  shards: list[str] = []
  writer = None
  for image, label in examples:
    if writer is None or (shard_size and len(labels) % shard_size == 0):
      if writer is not None:
        writer.close()
      shards.append(os.path.join(folder, f"{split}.part{len(shards):05d}.array_record"))
      # group_size:1: each record its own chunk, so a random read decodes one record.
      writer = module.ArrayRecordWriter(shards[-1], f"group_size:1,{compression}")
    writer.write(encode_record(image, label))
    labels.append(int(label))
  if writer is not None:
    writer.close()
  # Final names: <split>.array_record, or <split>-00000-of-00003.array_record for shards.
  for i, path in enumerate(shards):
    final = (f"{split}.array_record" if len(shards) == 1
             else f"{split}-{i:05d}-of-{len(shards):05d}.array_record")
    os.replace(path, os.path.join(folder, final))
  np.save(os.path.join(folder, f"{split}.labels.npy"), np.asarray(labels, np.int32))
  return len(labels)


def write_info(folder: str, class_names: Sequence[str], image_shape: Sequence[int] | None,
               counts: dict[str, int], pixel_max: float = 255.0, kind: str = "images") -> None:
  """info.json; kind "texts" for text records (image_shape None, pixel_max 0: tokens)."""
  with open(os.path.join(folder, INFO), "w") as f:
    json.dump({"format": FORMAT, "kind": kind, "class_names": list(class_names),
               "image_shape": None if image_shape is None else list(image_shape),
               "pixel_max": float(pixel_max), "splits": counts}, f, indent=1)


def write(folder: str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
          class_names: Sequence[str], pixel_max: float = 255.0, shard_size: int = 0) -> None:
  """Arrays as a records folder: {split: (uint8 images [N, H, W, C], labels [N])};
  pixel_max: the value of white (255; scikit-learn's digits: 16)."""
  counts = {name: write_split(folder, name, zip(images, labels), shard_size)
            for name, (images, labels) in splits.items()}
  first = next(iter(splits.values()))[0]
  write_info(folder, class_names, first.shape[1:], counts, pixel_max)


def split_files(folder: str, split: str) -> list[str]:
  single = os.path.join(folder, f"{split}.array_record")
  if os.path.isfile(single):
    return [single]
  return sorted(glob.glob(os.path.join(folder, f"{split}-*-of-*.array_record")))


def read_info(folder: str) -> dict:
  path = os.path.join(folder, INFO)
  if not os.path.isdir(folder):
    raise ConfigError(f"{folder}: no such folder (config.data.path). A records folder holds "
                      "<split>.array_record files and info.json; bench/make_records.py "
                      "writes one from any bigjax data config.")
  if not os.path.isfile(path):
    tfrecords = glob.glob(os.path.join(folder, "*.tfrecord*"))
    hint = (" It holds tfrecord files, which need TensorFlow: re-write them as array_record "
            "(for a TFDS dataset: tfds build NAME --file_format=array_record)."
            if tfrecords else "")
    raise ConfigError(f"{folder} has no {INFO}: not a records folder.{hint} "
                      "bench/make_records.py writes one from any bigjax data config.")
  with open(path) as f:
    info = json.load(f)
  if info.get("format") != FORMAT:
    raise ConfigError(f"{path}: format {info.get('format')!r}, expected {FORMAT!r}.")
  info.setdefault("kind", "images")  # (folders written before texts could be records)
  return info


class _Records:
  """A contiguous range of one split's array_record records, read on demand. Picklable: a
  worker process opens the files itself."""

  def __init__(self, paths: Sequence[str], name: str = "", rows: slice = slice(None)):
    self.paths = list(paths)
    self.name = name or os.path.dirname(self.paths[0])
    self._source = None
    # A contiguous range of the files' records (a split string such as train[:80%]).
    self.first, stop, _ = rows.indices(len(self._records()))
    self.count = max(stop - self.first, 0)

  def _records(self):
    if self._source is None:
      _need_array_record()
      from array_record.python import array_record_data_source
      self._source = array_record_data_source.ArrayRecordDataSource(self.paths)
    return self._source

  def __getstate__(self):
    return dict(self.__dict__, _source=None)

  def __len__(self) -> int:
    return self.count

  def _where(self, i: int) -> str:
    return f"record {self.first + int(i)} of {self.name}"

  def _record(self, i: int) -> bytes:
    try:
      return self._records()[self.first + int(i)]
    except Exception as e:  # noqa: BLE001  (a damaged chunk fails in the reader)
      raise BadRecordError(f"{self._where(i)} cannot be read ({type(e).__name__}: {e}).") \
          from None

  def _decoded(self, rows: np.ndarray, decode) -> list:
    """decode(record, i) of each of rows, the records read in one call: array_record reads
    them in parallel, 12-24x faster than one by one for a batch of 512 random records
    (bench/README.md, Streaming). If that fails, one by one, to name the record that does."""
    try:
      found = self._records().__getitems__([self.first + int(i) for i in rows])
    except Exception:  # noqa: BLE001
      found = [None] * len(rows)
    return [decode(self._record(i) if record is None else record, i)
            for i, record in zip(rows, found)]

  @staticmethod
  def _rows(rows, n: int) -> np.ndarray:
    return np.arange(*rows.indices(n)) if isinstance(rows, slice) else np.asarray(rows)


class RecordImages(_Records):
  """The images of one split's array_record files, decoded on demand (an array-like
  [N, H, W, C] uint8)."""

  dtype = np.dtype(np.uint8)

  def __init__(self, paths: Sequence[str], size: Sequence[int] | None = None,
               channels: int = 0, shape: Sequence[int] | None = None, name: str = "",
               rows: slice = slice(None)):
    super().__init__(paths, name, rows)
    self.size, self.channels = size, channels
    if shape is None or size:
      shape = self._read(0)[0].shape if self.count else tuple(size or ()) + (channels or 1,)
    self.shape = (self.count, *shape)
    self.ndim = len(self.shape)

  def _read(self, i: int, record: bytes | None = None) -> tuple[np.ndarray, int]:
    record = self._record(i) if record is None else record
    return decode_record(record, self._where(i), self.size, self.channels)

  def labels(self) -> np.ndarray:
    """Every record's label, by one pass over the records (when no labels file exists)."""
    return np.asarray([self._read(i)[1] for i in range(len(self))], np.int32)

  def __getitem__(self, rows) -> np.ndarray:
    rows = self._rows(rows, len(self))
    images = self._decoded(np.ravel(rows), lambda record, i: self._read(i, record)[0])
    for i, image in zip(np.ravel(rows), images):
      if image.shape != self.shape[1:]:
        raise BadRecordError(
            f"record {i} of {self.name} holds an image of shape {image.shape}, not "
            f"{self.shape[1:]} as the first does; set config.data.image_size=H,W.")
    return np.stack(images).reshape(*rows.shape, *self.shape[1:]) if images else \
        np.zeros((*rows.shape, *self.shape[1:]), np.uint8)


class RecordTexts(_Records):
  """The texts of one split's array_record files as token sequences [N, seq_len] int32,
  tokenized as read (`tokenized` sets the tokenizer: a text_classification tokenizer, whose
  encode(texts, seq_len) cuts and pads). Texts longer than seq_len are cut."""

  dtype = np.dtype(np.int32)
  ndim = 2

  def __init__(self, paths: Sequence[str], name: str = "", rows: slice = slice(None)):
    super().__init__(paths, name, rows)
    self.tokenizer, self.seq_len = None, 0

  @property
  def shape(self) -> tuple[int, int]:
    return (self.count, self.seq_len)

  @property
  def top_token(self) -> int:
    """The largest id a text can become (the vocabulary check reads no text)."""
    return self.tokenizer.vocab_size - 1 if self.tokenizer is not None else 0

  def tokenized(self, tokenizer, seq_len: int) -> "RecordTexts":
    import copy
    out = copy.copy(self)
    out.tokenizer, out.seq_len = tokenizer, int(seq_len)
    return out

  def texts(self, rows) -> list[str]:
    rows = self._rows(rows, len(self))
    return self._decoded(np.ravel(rows), lambda record, i: decode_text_record(
        record, self._where(i))[0])

  def labels(self) -> np.ndarray:
    return np.asarray([decode_text_record(self._record(i), self._where(i))[1]
                       for i in range(len(self))], np.int32)

  def __getitem__(self, rows) -> np.ndarray:
    if self.tokenizer is None:
      raise ValueError(f"{self.name}: texts, not yet tokenized (RecordTexts.tokenized).")
    rows = self._rows(rows, len(self))
    tokens, _ = self.tokenizer.encode(self.texts(rows), self.seq_len)
    return tokens.reshape(*rows.shape, self.seq_len)


def _split_range(split: str) -> tuple[str, str, str]:
  """("train", "", "80%") for a TFDS-style split string "train[:80%]"."""
  match = re.fullmatch(r"\s*([\w-]+)\s*(?:\[\s*(-?\d*%?)\s*:\s*(-?\d*%?)\s*\])?\s*", split)
  if not match:
    raise ConfigError(f"Split {split!r}: give a split name, optionally with a range, e.g. "
                      "train, train[:80%], train[1000:].")
  return match.group(1), match.group(2) or "", match.group(3) or ""


def _bound(text: str, n: int) -> int | None:
  if not text:
    return None
  return round(n * int(text[:-1]) / 100) if text.endswith("%") else int(text)


def open_split(folder: str, split: str, size=None, channels: int = 0
               ) -> tuple[RecordImages | RecordTexts, np.ndarray]:
  """(lazily read images or texts, labels int32 [N]) of one split of a records folder;
  `split` may select a contiguous range as TFDS's split strings do (train[:80%],
  train[80%:]). Texts come untokenized (RecordTexts.tokenized)."""
  split, start, stop = _split_range(split)
  paths = split_files(folder, split)
  if not paths:
    raise ConfigError(f'{folder} has no "{split}" split ({split}.array_record). Splits '
                      f"there: {', '.join(sorted(_split_names(folder))) or 'none'}.")
  info = read_info(folder)
  total = int((info.get("splits") or {}).get(split, 0)) or len(_Records(paths))
  rows = slice(_bound(start, total), _bound(stop, total))
  name = f'the "{split}" split of {folder}'
  images = (RecordTexts(paths, name, rows) if info["kind"] == "texts" else
            RecordImages(paths, size, channels, info.get("image_shape"), name, rows))
  if not len(images):
    raise ConfigError(f'The split string "{split}[{start}:{stop}]" selects no record of '
                      f"{folder}'s {total:,}.")
  labels_path = os.path.join(folder, f"{split}.labels.npy")
  if os.path.isfile(labels_path):
    labels = np.load(labels_path).astype(np.int32)[rows]
  else:
    logging.info("%s: no %s.labels.npy; reading the labels from the %d records once",
                 folder, split, len(images))
    labels = images.labels()
  if len(labels) != len(images):
    raise ConfigError(f"{labels_path} has {len(labels)} labels for {len(images)} records: "
                      "re-write the folder (bench/make_records.py).")
  return images, labels


def _split_names(folder: str) -> set[str]:
  return {os.path.basename(p).split(".")[0].split("-")[0]
          for p in glob.glob(os.path.join(folder, "*.array_record"))}
