"""TFDS image-classification datasets, read without TensorFlow where the format allows.

Offline machines must not wait minutes for TFDS's download retries: an unprepared dataset
fails at once when downloads are off, and after a 5-second network probe when they are on.
"""

from __future__ import annotations

import socket

import numpy as np

from bigjax.data.text import check_utf8
from bigjax.registry import ConfigError
from bigjax.registry import did_you_mean

# The host TFDS downloads dataset metadata and most image datasets from.
_PROBE_HOST = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 5.0


class DatasetUnavailableError(RuntimeError):
  pass


def _network_reachable() -> bool:
  try:
    socket.create_connection(_PROBE_HOST, timeout=_PROBE_TIMEOUT_S).close()
    return True
  except OSError:
    return False


_LOCAL_IMAGES = ("  * use a local source: --config.data.source=idx "
                 "--config.data.path=FOLDER_WITH_IDX_FILES (Fashion-MNIST: `apt-get install "
                 "dataset-fashion-mnist`, then --config.data.path=/usr/share/datasets/"
                 "fashion-mnist), or configs/fashion_mnist.py.")
_LOCAL_TEXT = ("  * use local text: --config.data.source=text --config.data.path=FILE_OR_FOLDER "
               "(offline demo: `apt-get install fortunes`, then configs/lm_tiny.py as it is).")


def _not_prepared_message(name: str, data_dir: str | None, why: str,
                          local: str = _LOCAL_IMAGES) -> str:
  where = data_dir or "~/tensorflow_datasets"
  return (
      f'TFDS dataset "{name}" is not prepared in {where} and {why}. Either:\n'
      f"  * prepare it where there is network (pip install -e '.[tf]' in bigjax's folder; python -c "
      f"\"import tensorflow_datasets as tfds; tfds.builder('{name}').download_and_prepare("
      f"file_format='array_record')\") and point --config.data.data_dir at that folder; or\n"
      + local)


def _builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ConfigError(
        f'Unknown TFDS dataset "{name}".{did_you_mean(name, tfds.list_builders(with_community_datasets=False))} '
        "See https://www.tensorflow.org/datasets/catalog for names.") from e


def _disable_tf_gpu() -> None:
  """TensorFlow must never take accelerator memory from JAX."""
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")


def _read_with_data_source(builder, split: str):
  source = builder.as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  return examples


def _read_with_tensorflow(builder, split: str, size=None, image_key: str = "image"):
  try:
    _disable_tf_gpu()
  except ImportError as e:
    raise DatasetUnavailableError(
        f'TFDS dataset "{builder.name}" is prepared in a format that needs TensorFlow to read '
        "(tfrecord). pip install -e '.[tf]' in bigjax's folder, or re-prepare it with "
        "download_and_prepare(file_format='array_record').") from e
  import tensorflow as tf
  import tensorflow_datasets as tfds
  if not size:
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  def resize(example):  # images of many sizes (e.g. cats_vs_dogs) batch only once resized
    image = tf.image.resize(example[image_key], size, antialias=True)
    return {**example, image_key: tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)}
  dataset = builder.as_dataset(split=split).map(resize).batch(1 << 30)
  return next(iter(tfds.as_numpy(dataset)))


def _as_hwc(image, size=None) -> np.ndarray:
  """One TFDS image as [H, W, C], resized to size=(H, W) when given and different."""
  image = np.asarray(image)
  image = image[..., None] if image.ndim == 2 else image
  if size and image.shape[:2] != tuple(size):
    from bigjax.data.sources import resize_images
    image = resize_images(image[None], size)[0]
  return image


def _stack(images: list, name: str, split: str, size) -> np.ndarray:
  images = [_as_hwc(x, size) for x in images]
  shapes = {np.shape(x) for x in images}
  if len(shapes) > 1:
    raise ConfigError(f'TFDS "{name}" split "{split}" has images of several sizes (e.g. '
                      f"{sorted(shapes)[:2]}). Set --config.data.image_size=H,W to resize "
                      "them, e.g. --config.data.image_size=224,224.")
  return np.stack(images)


def _prepared_examples(builder, name: str, split: str, data_dir: str | None,
                       download: bool, local: str = _LOCAL_IMAGES) -> list | None:
  """The split's examples through the random-access data source, preparing the dataset
  first when allowed and the network is there; None when it is prepared in a format only
  TensorFlow reads (tfrecord)."""
  try:
    return _read_with_data_source(builder, split)  # also what tfds.testing.mock_data serves
  except Exception:  # pylint: disable=broad-except
    pass
  if builder.is_prepared():
    return None
  if not download:
    raise DatasetUnavailableError(
        _not_prepared_message(name, data_dir, "downloads are off (config.data.download=False)",
                              local))
  if not _network_reachable():
    raise DatasetUnavailableError(
        _not_prepared_message(name, data_dir, "the network is unreachable", local))
  try:
    _disable_tf_gpu()
  except ImportError as e:
    raise DatasetUnavailableError(
        f'Preparing TFDS dataset "{name}" needs TensorFlow: pip install -e ".[tf]" in '
        "bigjax's folder.") from e
  builder.download_and_prepare(file_format="array_record")
  return _read_with_data_source(builder, split)


def load_tfds_text(name: str, split: str, data_dir: str | None, download: bool) -> bytes:
  """The UTF-8 text of one split of a TFDS text dataset (e.g. tiny_shakespeare, lm1b): its
  examples' text feature, one after another, each ending in a newline."""
  builder = _builder(name, data_dir)
  features = builder.info.features
  text_keys = [k for k, f in features.items() if type(f).__name__ == "Text"]
  key = "text" if "text" in text_keys else (text_keys[0] if len(text_keys) == 1 else None)
  if key is None:
    raise ConfigError(f'TFDS "{name}" has no single text feature to train a language model on '
                      f"(features: {', '.join(features.keys())}).")
  examples = _prepared_examples(builder, name, split, data_dir, download, _LOCAL_TEXT)
  if examples is None:
    _disable_tf_gpu()
    import tensorflow_datasets as tfds
    texts = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))[key])
  else:
    texts = [ex[key] for ex in examples]
  if not texts:
    raise ConfigError(f'TFDS split "{split}" of "{name}" selects no examples.')
  chunks = []
  for i, t in enumerate(texts):
    data = t.encode("utf-8") if isinstance(t, str) else bytes(t)
    check_utf8(data, f'TFDS "{name}" split "{split}" example {i}')
    chunks.append(data if data.endswith(b"\n") else data + b"\n")
  return b"".join(chunks)


def load_tfds_text_classification(name: str, split: str, data_dir: str | None, download: bool,
                                  text_key: str = "text", label_key: str = "label"
                                  ) -> tuple[list[str], np.ndarray, list[str]]:
  """(texts, int32 labels, class names) of one split of a TFDS text-classification dataset
  (imdb_reviews, ag_news_subset, yelp_polarity_reviews, ...)."""
  builder = _builder(name, data_dir)
  features = builder.info.features
  texts_in = [k for k, f in features.items() if type(f).__name__ == "Text"]
  label = dict(features.items()).get(label_key)
  if text_key not in texts_in or type(label).__name__ != "ClassLabel":
    raise ConfigError(
        f'TFDS "{name}" has no text feature "{text_key}" with class labels "{label_key}" '
        f"(text features: {', '.join(texts_in) or 'none'}; all: {', '.join(features.keys())}). "
        "Set config.data.text_column and label_column.")
  examples = _prepared_examples(builder, name, split, data_dir, download, _LOCAL_TEXT)
  if examples is None:
    _disable_tf_gpu()
    import tensorflow_datasets as tfds
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    raw_texts, labels = list(batch[text_key]), np.asarray(batch[label_key])
  else:
    raw_texts = [ex[text_key] for ex in examples]
    labels = np.asarray([ex[label_key] for ex in examples])
  if not raw_texts:
    raise ConfigError(f'TFDS split "{split}" of "{name}" selects no examples.')
  texts = [t if isinstance(t, str) else bytes(t).decode("utf-8", errors="replace")
           for t in raw_texts]
  return texts, labels.astype(np.int32), list(features[label_key].names)


def load_tfds_split(name: str, split: str, data_dir: str | None, download: bool,
                    image_key: str = "image", label_key: str = "label", size=None):
  """(images [N, H, W, C], labels int32 [N], class_names) of one TFDS split, each image
  resized to size=(H, W) when given."""
  builder = _builder(name, data_dir)
  examples = _prepared_examples(builder, name, split, data_dir, download)
  if examples is None:
    batch = _read_with_tensorflow(builder, split, size, image_key)
    images, labels = np.asarray(batch[image_key]), np.asarray(batch[label_key])
  else:
    if not examples:
      raise ConfigError(f'TFDS split "{split}" of "{name}" selects no examples.')
    images = _stack([ex[image_key] for ex in examples], name, split, size)
    labels = np.asarray([ex[label_key] for ex in examples])
  if images.ndim == 3:
    images = images[..., None]
  label_feature = builder.info.features[label_key]
  class_names = list(getattr(label_feature, "names", []) or [])
  return images, labels.astype(np.int32), class_names


class DataSourceImages:
  """The images of a TFDS random-access data source (array_record), decoded on demand: the
  `raw` array of lazily read splits (config.data.placement="host"), so a dataset larger
  than memory streams from disk batch by batch."""

  dtype = np.dtype(np.uint8)

  def __init__(self, source, image_key: str, size=None):
    self.source, self.image_key, self.size = source, image_key, size
    first = self._read(0)
    self.shape = (len(source),) + first.shape
    self.ndim = len(self.shape)

  def __len__(self) -> int:
    return len(self.source)

  def _read(self, i: int, example=None) -> np.ndarray:
    from bigjax.data.records import BadRecordError
    try:
      example = self.source[int(i)] if example is None else example
      return _as_hwc(example[self.image_key], self.size)
    except Exception as e:  # noqa: BLE001  (a damaged record or image)
      raise BadRecordError(f"example {int(i)} of the TFDS split cannot be read "
                           f"({type(e).__name__}: {e}).") from None

  def __getitem__(self, rows) -> np.ndarray:
    rows = (np.arange(*rows.indices(len(self))) if isinstance(rows, slice)
            else np.asarray(rows))
    flat = [int(i) for i in np.ravel(rows)]
    try:  # in one call, read in parallel (as records.RecordImages does)
      found = (self.source.__getitems__(flat) if hasattr(self.source, "__getitems__")
               else [None] * len(flat))
    except Exception:  # noqa: BLE001  (then one by one, to name the one that fails)
      found = [None] * len(flat)
    return np.stack([self._read(i, e) for i, e in zip(flat, found)]).reshape(
        *rows.shape, *self.shape[1:])


def open_tfds_split_lazily(name: str, split: str, data_dir: str | None,
                           image_key: str = "image", label_key: str = "label", size=None):
  """(lazily read images, labels int32 [N], class names) of a prepared array_record split,
  or None when it has no random-access data source. Collecting the labels reads each
  record once; images are decoded again only when a batch needs them."""
  builder = _builder(name, data_dir)
  try:
    source = builder.as_data_source(split=split)
  except Exception:  # pylint: disable=broad-except  (not prepared, or not array_record)
    return None
  if len(source) == 0:
    raise ConfigError(f'TFDS split "{split}" of "{name}" selects no examples.')
  labels = np.asarray([source[i][label_key] for i in range(len(source))], np.int32)
  label_feature = builder.info.features[label_key]
  names = list(getattr(label_feature, "names", []) or [])
  return DataSourceImages(source, image_key, size), labels, names
