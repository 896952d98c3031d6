"""Data sources, chosen by `config.data.source`: where the raw train and test arrays come from.

A source maps the data config to a `RawData`: uint8 (or float) images [N, H, W, C] and int
labels [N] (or, for regression, float targets [N]) for a train and a test split. Everything after that (validation split, scaling,
batching) is the same for every source.
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import os
from typing import Any, Callable, Mapping

import numpy as np

from bigjax.data import arrays
from bigjax.data import idx
from bigjax.data import records
from bigjax.data import images as image_files
from bigjax.data import tfds_source
from bigjax.registry import ConfigError
from bigjax.registry import Registry

logging = py_logging.getLogger(__name__)

SOURCES = Registry("data source")
register_source = SOURCES.register

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclasses.dataclass
class RawData:
  """A source's whole data, as read: model inputs and targets per split."""
  train_inputs: np.ndarray   # images [N, H, W, C]; int tokens [N, T]; features [N, F]
  train_targets: np.ndarray  # int32 classes [N]; float32 regression targets [N]; [N, T] tokens
  test_inputs: np.ndarray
  test_targets: np.ndarray
  pixel_max: float           # images / pixel_max lies in [0, 1]; 0: integer tokens, unscaled
  class_names: list[str]
  # A source that holds out its own validation split (e.g. text, by position) sets these;
  # otherwise config.data.validation_fraction of train is held out at random.
  validation_inputs: np.ndarray | None = None
  validation_targets: np.ndarray | None = None
  # A text source's tokenizer (tokenizers' JSON), saved with the run as tokenizer.json.
  tokenizer: str | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def _names_for(num_classes: int, known: list[str]) -> list[str]:
  return known if len(known) == num_classes else [str(i) for i in range(num_classes)]


def hold_out_test(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
  """(train images, train labels, test images, test labels): a fixed int(N * fraction)
  examples, chosen with `seed`, held out as test, for sources without a test split."""
  if not 0.0 < fraction < 1.0:
    raise ConfigError(f"config.data.test_fraction must be in (0, 1) for a source without a "
                      f"test split; got {fraction}.")
  order = np.random.default_rng(seed).permutation(len(labels))
  n_test = int(len(labels) * fraction)
  test, train = order[:n_test], order[n_test:]
  take = lambda rows: images.subset(rows) if hasattr(images, "subset") else images[rows]
  return take(train), labels[train], take(test), labels[test]


def resize_images(images: np.ndarray, size) -> np.ndarray:
  """[N, H, W, C] resized (bilinear) to size=(H', W'); unchanged when it already is."""
  size = tuple(int(s) for s in size)
  if images.shape[1:3] == size:
    return images
  if images.dtype == np.uint8:
    from PIL import Image
    def one(image):
      squeeze = image.shape[-1] == 1
      out = np.asarray(Image.fromarray(image[..., 0] if squeeze else image).resize(
          (size[1], size[0]), Image.BILINEAR))
      return out[..., None] if squeeze else out
    return np.stack([one(np.asarray(image)) for image in images])
  import jax
  return np.asarray(jax.image.resize(np.asarray(images, np.float32),
                                     (len(images), *size, images.shape[-1]), "bilinear"))


@register_source("folder")
def load_folder(data_config: Mapping[str, Any]) -> RawData:
  """Image files, one subfolder per class: `path`/<class>/*.jpg. With `path`/train/<class>
  and `path`/test/<class>, those are the splits; otherwise config.data.test_fraction of
  the images (seeded by split_seed) is held out as test."""
  root = os.path.expanduser(data_config["path"] or "")
  if not root:
    raise ConfigError("config.data.source='folder' needs config.data.path: a folder with "
                      "one subfolder of images per class (PATH/cat/*.jpg, PATH/dog/*.jpg).")
  size = tuple(data_config.get("image_size") or ()) or None
  has_splits = (os.path.isdir(os.path.join(root, "train"))
                and os.path.isdir(os.path.join(root, "test")))
  if _folder_streams(data_config, root, has_splits, size):
    return _lazy_folder(data_config, root, has_splits, size)
  read = lambda folder, names=None: image_files.load_class_folders(
      folder, size, data_config.get("channels", 0), data_config.get("skip_bad_images", False),
      names)
  if has_splits:
    train_x, train_y, names, skipped = read(os.path.join(root, "train"))
    test_x, test_y, _, skipped_test = read(os.path.join(root, "test"), names)
    skipped += skipped_test
    if train_x.shape[1:] != test_x.shape[1:]:
      raise ConfigError(f"Train images are {train_x.shape[1:]} but test images "
                        f"{test_x.shape[1:]}; set --config.data.image_size=H,W.")
  else:
    images, labels, names, skipped = read(root)
    train_x, train_y, test_x, test_y = hold_out_test(
        images, labels, data_config.get("test_fraction", 0.2), data_config["split_seed"])
  if skipped:
    import logging
    logging.getLogger(__name__).warning(
        "skipped %d image(s) that could not be decoded (config.data.skip_bad_images): %s",
        len(skipped), ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
  return RawData(train_x, train_y, test_x, test_y, 255.0, names)


def _folder_streams(data_config, root: str, has_splits: bool, size) -> bool:
  """Whether an image folder is read file by file as batches need it (host placement, or
  auto with more model-ready pixels than config.data.device_limit_gb) instead of whole."""
  placement = data_config.get("placement", "device")
  if placement != "auto":
    return placement == "host"
  folders = [os.path.join(root, s) for s in ("train", "test")] if has_splits else [root]
  paths = [p for f in folders for _, files in image_files.class_folders(f) for p in files]
  if not size:
    size = next(filter(None, map(image_files.header_size, paths[:1])), None) or (0, 0)
  channels = data_config.get("channels", 0) or 3  # (a bound: 1 if grayscale)
  model_ready = len(paths) * size[0] * size[1] * channels * 4
  return model_ready > float(data_config.get("device_limit_gb", 4.0)) * 2 ** 30


def _lazy_folder(data_config, root: str, has_splits: bool, size) -> RawData:
  """An image folder as FileImages: decoded per batch (in grain's workers with
  config.data.worker_count), never whole; the same splits as the whole read."""
  channels = data_config.get("channels", 0)
  if has_splits:
    train_x, train_y, names = image_files.lazy_class_folders(
        os.path.join(root, "train"), size, channels)
    test_x, test_y, _ = image_files.lazy_class_folders(
        os.path.join(root, "test"), size or train_x.shape[1:3], train_x.shape[-1], names)
  else:
    images, labels, names = image_files.lazy_class_folders(root, size, channels)
    train_x, train_y, test_x, test_y = hold_out_test(
        images, labels, data_config.get("test_fraction", 0.2), data_config["split_seed"])
  if data_config.get("skip_bad_images", False):
    logging.info("config.data.skip_bad_images: the folder is read as training goes, so a "
                 "file that does not decode is replaced then (config.data.skip_bad_records)")
  return RawData(train_x, train_y, test_x, test_y, 255.0, names)


@register_source("arrays")
def load_arrays(data_config: Mapping[str, Any]) -> RawData:
  """NumPy arrays: `path` is a .npz file or a folder of .npy files (memory-mapped) named
  train_images/train_labels[/test_images/test_labels] (or x_train/y_train/x_test/y_test),
  optionally class_names. Images are uint8 (scaled by 1/255) or float (used as they are);
  float labels are regression targets. Without test arrays, config.data.test_fraction is
  held out (seeded by split_seed)."""
  found = arrays.load(data_config["path"] or "")
  train_x, train_y = found["train_images"], np.asarray(found["train_labels"])
  if "test_images" in found:
    test_x, test_y = found["test_images"], np.asarray(found["test_labels"])
  else:
    train_x, train_y, test_x, test_y = hold_out_test(
        train_x, train_y, data_config.get("test_fraction", 0.2), data_config["split_seed"])
  regression = np.issubdtype(train_y.dtype, np.floating)
  if regression and np.all(train_y == np.round(train_y)) and len(np.unique(train_y)) <= 1000:
    logging.warning("%s: the labels are floats with only whole values (%d distinct): they "
                    "are regression targets. For classes, save them as integers "
                    "(labels.astype(np.int64)).", data_config["path"], len(np.unique(train_y)))
  cast = (lambda y: y.astype(np.float32)) if regression else (lambda y: y.astype(np.int32))
  train_y, test_y = cast(train_y), cast(test_y)
  if regression:
    names: list[str] = []
  else:
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    names = _names_for(num_classes, found.get("class_names", []))
  pixel_max = 255.0 if train_x.dtype == np.uint8 else 1.0
  return RawData(train_x, train_y, test_x, test_y, pixel_max, names)


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
  size = tuple(data_config.get("image_size") or ()) or None
  data_dir = data_config["data_dir"] or None

  def read(split):
    if data_config.get("placement") in ("host", "auto"):  # stream when the format allows
      lazy = tfds_source.open_tfds_split_lazily(data_config["name"], split, data_dir,
                                                size=size)
      if lazy is not None:
        return lazy
    return tfds_source.load_tfds_split(data_config["name"], split, data_dir,
                                       data_config["download"], size=size)
  train_x, train_y, names = read(data_config["train_split"])
  test_x, test_y, _ = read(data_config["test_split"])
  num_classes = len(names) or int(max(train_y.max(), test_y.max())) + 1
  pixel_max = 255.0 if train_x.dtype == np.uint8 else 1.0
  return RawData(train_x, train_y, test_x, test_y, pixel_max, _names_for(num_classes, names))


@register_source("array_record")
def load_array_record(data_config: Mapping[str, Any]) -> RawData:
  """A records folder (bigjax/data/records.py): images read one record at a time as
  batches need them, so the data can be larger than memory. A `validation` split there
  is used as it is; otherwise validation_fraction of train is held out."""
  folder = os.path.expanduser(data_config["path"] or "")
  if not folder:
    raise ConfigError("config.data.source='array_record' needs config.data.path: a records "
                      "folder (<split>.array_record files and info.json; "
                      "bench/make_records.py writes one).")
  info = records.read_info(folder)
  size = tuple(data_config.get("image_size") or ()) or None
  read = lambda split: records.open_split(folder, split, size, data_config.get("channels", 0))
  train_x, train_y = read(data_config["train_split"])
  test_x, test_y = read(data_config["test_split"])
  names = list(info.get("class_names") or [])
  num_classes = len(names) or int(max(train_y.max(), test_y.max())) + 1
  raw = RawData(train_x, train_y, test_x, test_y, float(info.get("pixel_max", 255.0)),
                _names_for(num_classes, names))
  if records.split_files(folder, "validation"):
    raw.validation_inputs, raw.validation_targets = read("validation")
  if info["kind"] == "texts":
    if data_config.get("pack_texts", False):
      raise ConfigError("config.data.pack_texts=True packs texts read into memory; a records "
                        "folder's texts are tokenized as read, one row each: set pack_texts="
                        "False, or use source text_classification / tfds_text_classification.")
    _tokenize_as_read(raw, data_config)
  return raw


TOKENIZER_TEXTS = 100_000  # a trained tokenizer of streamed texts learns at most this many


def _tokenize_as_read(raw: RawData, data_config: Mapping[str, Any]) -> None:
  """Text records: each split tokenized batch by batch as it is read (in the reading
  workers), by config.data.tokenizer; a trained one ("wordpiece:N", "bpe:N") learns the
  first TOKENIZER_TEXTS training texts."""
  from bigjax.data import text_classification as tc
  spec = data_config.get("tokenizer", "bytes") or "bytes"
  seq_len = int(data_config.get("seq_len", 128))
  learn = min(len(raw.train_inputs), TOKENIZER_TEXTS)
  trained = spec.startswith(("wordpiece:", "bpe:"))
  if trained and learn < len(raw.train_inputs):
    logging.info("the %s tokenizer learns the first %d of %d training texts", spec, learn,
                 len(raw.train_inputs))
  first = raw.train_inputs.texts(range(learn if trained else min(learn, 1000)))
  tokenizer = tc.tokenizer_for(spec, first if trained else ())
  sample = first[:1000]
  cut = tokenizer.encode(sample, seq_len)[1]
  if cut:
    logging.info("%d of the first %d training texts are longer than seq_len=%d tokens: "
                 "texts are cut as they are read", cut, len(sample), seq_len)
  raw.pixel_max, raw.tokenizer = 0.0, _saved(tokenizer)
  raw.train_inputs = raw.train_inputs.tokenized(tokenizer, seq_len)
  raw.test_inputs = raw.test_inputs.tokenized(tokenizer, seq_len)
  if raw.validation_inputs is not None:
    raw.validation_inputs = raw.validation_inputs.tokenized(tokenizer, seq_len)


@register_source("digits")
def load_digits(data_config: Mapping[str, Any]) -> RawData:
  """scikit-learn's 1,797 real 8x8 handwritten digits (ships with scikit-learn; no download).

  No official test split exists: a fixed 20% (seeded by config.data.split_seed) is held out.
  """
  try:
    from sklearn.datasets import load_digits as sk_load_digits
  except ImportError as e:
    raise ConfigError("config.data.source='digits' needs scikit-learn: "
                      "pip install scikit-learn (or pip install -e '.[sklearn]' in bigjax's "
                      "folder).") from e
  digits = sk_load_digits()
  images = digits.images.astype(np.uint8)[..., None]  # values 0..16
  labels = digits.target.astype(np.int32)
  return RawData(*hold_out_test(images, labels, 0.2, data_config["split_seed"]), 16.0,
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
                      "pip install scikit-learn (or pip install -e '.[sklearn]' in bigjax's "
                      "folder).") from e
  diabetes = sk_load_diabetes()
  features = diabetes.data.astype(np.float32)[:, None, None, :]
  targets = diabetes.target.astype(np.float32)
  return RawData(*hold_out_test(features, targets, 0.2, data_config["split_seed"]), 1.0, [])


@register_source("text")
def load_text(data_config: Mapping[str, Any]) -> RawData:
  """Byte-level tokens of a text file or folder (`path`), packed into windows of
  `seq_len` + 1; the last test_fraction of the byte stream is the test split and the
  validation_fraction before it the validation split (split by position)."""
  from bigjax.data import text
  if not data_config.get("path"):
    raise ConfigError("config.data.source='text' needs config.data.path: a text file or a "
                      "folder of them (offline demo: apt-get install fortunes, then "
                      "--config.data.path=/usr/share/games/fortunes). For a TFDS text "
                      "dataset by name use config.data.source='tfds_text'.")
  data = text.read_utf8(text.text_files(data_config["path"]))
  fractions = data_config["validation_fraction"], data_config.get("test_fraction", 0.1)
  spec = data_config.get("tokenizer", "bytes") or "bytes"
  tokenizer = None
  if spec == "bytes":
    stream = _byte_tokens(data)
  else:  # a trained tokenizer sees the training text only (the text before the splits)
    learn = data[:int(len(data) * (1 - sum(fractions)))]  # (cut back to a whole character)
    tokenizer = text.build_tokenizer(spec, learn.decode("utf-8", "ignore").encode("utf-8"))
    stream = text.encode_with(tokenizer, data.decode("utf-8"))
  train, validation, test = text.split_by_position(stream, *fractions)
  raw = _token_windows(train, validation, test, data_config)
  raw.tokenizer = tokenizer.to_str() if tokenizer is not None else None
  return raw


@register_source("tokens")
def load_tokens(data_config: Mapping[str, Any]) -> RawData:
  """A tokens folder (`path`; python -m bench.make_records from a text or tfds_text config):
  the corpus tokenized once, read by position, its windows of `seq_len` + 1 read as batches
  index them; the splits and windows of the in-memory source. bigjax/data/token_files.py."""
  from bigjax.data import token_files
  folder = data_config.get("path") or ""
  splits, tokenizer, kept = token_files.open_splits(folder,
                                                    int(data_config.get("seq_len", 128)))
  spec = data_config.get("tokenizer", "bytes") or "bytes"
  if spec != kept and not os.path.isfile(os.path.expanduser(spec)):
    logging.info("%s was tokenized with %s (config.data.tokenizer=%s does not apply)",
                 folder, kept, spec)
  validation = splits.get("validation", (None, None))
  return RawData(*splits["train"], *splits["test"], 0.0, [], *validation, tokenizer=tokenizer)


@register_source("text_classification")
def load_text_classification(data_config: Mapping[str, Any]) -> RawData:
  """Labelled texts (a .csv/.tsv/.jsonl file, a folder of <class>/*.txt, or files of
  records such as Debian's fortunes) as tokens [N, seq_len] and class labels; test_fraction
  held out at random (seeded by split_seed). bigjax/data/text_classification.py."""
  return _tokenized_texts(*labelled_texts(data_config), data_config)


def _tokenized_texts(train, test, classes: list[str], data_config) -> RawData:
  """Labelled texts as tokens [N, seq_len], by config.data.tokenizer (a trained one learns
  the training texts only); with config.data.pack_texts, each split's texts packed end to
  end into rows (masked-LM pre-training; the rows' labels are all 0: a row has no class)."""
  from bigjax.data import text_classification as tc
  (train_texts, train_y), (test_texts, test_y) = train, test
  tokenizer = tc.tokenizer_for(data_config.get("tokenizer", "bytes") or "bytes", train_texts)
  seq_len = int(data_config.get("seq_len", 128))
  if data_config.get("pack_texts", False):
    _check_packing(data_config)
    train_x, test_x = (tc.pack(texts, tokenizer, seq_len) for texts in (train_texts,
                                                                         test_texts))
    return RawData(train_x, np.zeros(len(train_x), np.int32), test_x,
                   np.zeros(len(test_x), np.int32), 0.0, classes, tokenizer=_saved(tokenizer))
  return RawData(tc.tokenize(train_texts, tokenizer, seq_len), train_y,
                 tc.tokenize(test_texts, tokenizer, seq_len), test_y, 0.0, classes,
                 tokenizer=_saved(tokenizer))


def _check_packing(data_config: Mapping[str, Any]) -> None:
  if not (data_config.get("augment") or {}).get("mlm_probability"):
    raise ConfigError("config.data.pack_texts=True joins texts end to end, so a row has no "
                      "label: use it for masked-LM pre-training only (with config.data."
                      "augment.mlm_probability > 0), or set pack_texts=False to classify.")


def labelled_texts(data_config: Mapping[str, Any]):
  """((train texts, labels), (test texts, labels), class names) of a text_classification
  config, before tokenization (bench/make_records.py writes them as records)."""
  from bigjax.data import text_classification as tc
  texts, names = tc.read_texts(
      data_config.get("path") or "", data_config.get("text_column", "text"),
      data_config.get("label_column", "label"), data_config.get("record_separator", "%"),
      tuple(data_config.get("categories") or ()))
  if not texts:
    raise ConfigError(f"No texts in {data_config.get('path')!r} (config.data.path).")
  classes = list(data_config.get("categories") or ()) or sorted(set(names))
  found = sorted(set(names))
  absent = [c for c in classes if c not in found]
  if absent:
    raise ConfigError(f"config.data.categories names {absent}, which no text in "
                      f"{data_config.get('path')!r} has as its label; the labels are "
                      f"{found[:30]}.")
  if len(found) > len(classes):  # a table with more labels than the categories asked for
    keep = [i for i, name in enumerate(names) if name in set(classes)]
    logging.info("config.data.categories keeps %d of %d texts (labels %s left out)",
                 len(keep), len(names), sorted(set(found) - set(classes))[:10])
    texts, names = [texts[i] for i in keep], [names[i] for i in keep]
  index = {name: i for i, name in enumerate(classes)}
  labels = np.asarray([index[name] for name in names], np.int32)
  train_i, train_y, test_i, test_y = hold_out_test(
      np.arange(len(texts)), labels, data_config.get("test_fraction", 0.2),
      data_config["split_seed"])
  return (([texts[i] for i in train_i], train_y), ([texts[i] for i in test_i], test_y),
          classes)


def _saved(tokenizer) -> str | None:
  """The tokenizer.json a run keeps (none for bytes, which need none)."""
  return tokenizer.to_str() if hasattr(tokenizer, "to_str") else None


@register_source("tfds_text_classification")
def load_tfds_text_classification(data_config: Mapping[str, Any]) -> RawData:
  """A TFDS text-classification dataset by name (imdb_reviews, ag_news_subset, ...): its
  train_split and test_split, the text feature `text_column` tokenized as
  config.data.tokenizer says (bytes or a tokenizer.json), the labels its ClassLabel names."""
  return _tokenized_texts(*tfds_labelled_texts(data_config), data_config)


def tfds_labelled_texts(data_config: Mapping[str, Any]):
  """((train texts, labels), (test texts, labels), class names) of a
  tfds_text_classification config: its train_split and test_split, before tokenization."""
  splits = []
  for split in ("train_split", "test_split"):
    texts, labels, names = tfds_source.load_tfds_text_classification(
        data_config["name"], data_config[split], data_config["data_dir"] or None,
        data_config["download"], data_config.get("text_column", "text"),
        data_config.get("label_column", "label"))
    splits.append((texts, labels))
  return splits[0], splits[1], names


@register_source("tfds_text")
def load_tfds_text(data_config: Mapping[str, Any]) -> RawData:
  """A TFDS text dataset by name (`name`: tiny_shakespeare, lm1b, ...) as byte-level
  tokens: the train_split's text (its last validation_fraction held out, by position) and
  the test_split's, packed into windows of `seq_len` + 1."""
  from bigjax.data import text
  read = lambda split: _byte_tokens(tfds_source.load_tfds_text(
      data_config["name"], split, data_config["data_dir"] or None, data_config["download"]))
  train, validation, _ = text.split_by_position(read(data_config["train_split"]),
                                                data_config["validation_fraction"], 0.0)
  return _token_windows(train, validation, read(data_config["test_split"]), data_config)


def _byte_tokens(data: bytes) -> np.ndarray:
  return np.frombuffer(data, np.uint8).astype(np.int32)


def _token_windows(train, validation, test, data_config) -> RawData:
  from bigjax.data import text
  seq_len = int(data_config.get("seq_len", 128))
  train_x, train_y = text.windows(train, seq_len)
  test_x, test_y = text.windows(test, seq_len)
  val = text.windows(validation, seq_len) if len(validation) > seq_len else (None, None)
  return RawData(train_x, train_y, test_x, test_y, 0.0, [], val[0], val[1])


def load_raw(data_config: Mapping[str, Any]) -> RawData:
  source: Callable[[Mapping[str, Any]], RawData] = SOURCES.get(data_config["source"])
  size = tuple(data_config.get("image_size") or ())
  if size and (len(size) != 2 or min(size) < 1):
    raise ConfigError(f"config.data.image_size={size}: give (height, width), e.g. 224,224.")
  raw = source(data_config)
  if size:  # (a no-op for sources that resized as they read)
    raw.train_inputs = resize_images(raw.train_inputs, size)
    raw.test_inputs = resize_images(raw.test_inputs, size)
  return raw
