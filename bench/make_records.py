"""Writes a records folder (array_record, bigjax/data/records.py) for the streaming path.

From any bigjax image data config (its train and test splits, as the source reads them):

  python -m bench.make_records --config=configs/fashion_mnist.py --out=data/fmnist_records
  python -m bench.make_records --config=configs/cats_vs_dogs.py:folder \\
      --config.data.path=PetImages --encode=jpeg --out=data/pets_records

From a folder of image files, one subfolder per class (`PATH/train/<class>` and
`PATH/test/<class>` if it has them, else --test_fraction held out): each file's bytes are
stored as they are, never decoded here (the reading workers decode and resize them), so a
folder of any size is written in one pass with little memory:

  python -m bench.make_records --folder=PetImages --out=data/pets_records

Or synthetic images of any size and count, written in chunks (memory stays small however
large the folder), for the streaming benchmarks:

  python -m bench.make_records --synthetic=480000 --shape=64,64,3 --out=/tmp/records_6gb

--encode: raw (uint8 pixels as they are; the fastest to read), png or jpeg (smaller, decoded
by the reading workers).

From a text-classification config (source text_classification or tfds_text_classification):
the texts as they are, untokenized, with their labels and the config's train/test split; a
run tokenizes them as it reads them, with its own config.data.tokenizer:

  python -m bench.make_records --config=configs/fortunes_bert.py --out=data/fortunes_records

From a language model's corpus (source text or tfds_text): a tokens folder (not records:
bigjax/data/token_files.py), the corpus read and tokenized a chunk at a time with the
config's tokenizer (a trained one learns the training text first) into one
token file, split by position as the source splits it; train from it with
--config.data.source=tokens (windows of any seq_len are cut as batches need them):

  python -m bench.make_records --config=configs/lm_tiny.py --config.data.path=corpus/ \\
      --out=data/corpus_tokens   # "records": the tokens per split
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bigjax.data import records  # noqa: E402
from bigjax.data import sources  # noqa: E402
from bigjax.data import token_files  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A bigjax config whose data to write.")
flags.DEFINE_string("out", None, "The records folder to write.", required=True)
flags.DEFINE_integer("synthetic", 0, "Write this many random images per train split "
                     "instead of a config's data (test: a tenth).")
flags.DEFINE_list("shape", ["64", "64", "3"], "Synthetic images' H,W,C.")
flags.DEFINE_integer("num_classes", 10, "Synthetic labels' classes.")
flags.DEFINE_string("folder", None, "A folder of images, one subfolder per class, to "
                    "write without decoding.")
flags.DEFINE_float("test_fraction", 0.1, "--folder without train/ and test/: the share "
                   "held out as test (seeded).")
flags.DEFINE_enum("encode", "raw", ["raw", "png", "jpeg"], "How images are stored.")
flags.DEFINE_string("compression", "uncompressed", "array_record's: uncompressed, "
                    "zstd:3 (smaller for raw pixels with flat areas, such as MNIST's), brotli:6.")
flags.DEFINE_integer("shard_size", 0, "Records per file (0: one file per split).")
FLAGS = flags.FLAGS


def encoded(image: np.ndarray, how: str) -> np.ndarray | bytes:
  if how == "raw":
    return image
  from PIL import Image
  out = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      out, format="PNG" if how == "png" else "JPEG", quality=90)
  return out.getvalue()


def synthetic_examples(count: int, shape, num_classes: int, seed: int, how: str):
  """Random images with a smooth structure (so JPEG sizes are realistic), made 1,024 at a
  time."""
  rng = np.random.default_rng(seed)
  for start in range(0, count, 1024):
    n = min(1024, count - start)
    coarse = rng.integers(0, 256, (n, shape[0] // 8 + 1, shape[1] // 8 + 1, shape[2]),
                          np.uint8)
    images = np.repeat(np.repeat(coarse, 8, 1), 8, 2)[:, :shape[0], :shape[1]]
    images = images + rng.integers(0, 16, images.shape, np.uint8)
    for image, label in zip(images, rng.integers(0, num_classes, n)):
      yield encoded(image, how), int(label)


def folder_splits(root: str, test_fraction: float) -> tuple[dict, list[str]]:
  """{split: [(path, label)]} and the class names of an image folder, each split in a seeded
  random order (so that a range such as train[:80%] holds every class)."""
  from bigjax.data import images
  shuffled = lambda pairs: [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))]
  pairs = lambda folders: [(p, k) for k, (_, paths) in enumerate(folders) for p in paths]
  if all(os.path.isdir(os.path.join(root, s)) for s in ("train", "test")):
    train = images.class_folders(os.path.join(root, "train"))
    names = [name for name, _ in train]
    test = images.class_folders(os.path.join(root, "test"))
    if [name for name, _ in test] != names:
      raise app.UsageError(f"{root}/train and {root}/test have different class folders.")
    return {"train": shuffled(pairs(train)), "test": shuffled(pairs(test))}, names
  folders = images.class_folders(root)
  every = shuffled(pairs(folders))
  held = int(round(len(every) * test_fraction))
  return {"train": every[held:], "test": every[:held]}, [n for n, _ in folders]


def file_examples(pairs):
  for path, label in pairs:
    with open(path, "rb") as f:
      yield f.read(), label


def text_splits(data_config) -> tuple[dict, list[str]]:
  """{split: (texts, labels)} and the class names of a text-classification data config, as
  its source splits them (the same held-out test texts)."""
  read = (sources.labelled_texts if data_config.source == "text_classification" else
          sources.tfds_labelled_texts)
  train, test, names = read(data_config)
  return {"train": train, "test": test}, names


def main(_):
  t0 = time.perf_counter()
  if FLAGS.folder:
    splits, names = folder_splits(FLAGS.folder, FLAGS.test_fraction)
    counts = {name: records.write_split(FLAGS.out, name, file_examples(pairs),
                                        FLAGS.shard_size, FLAGS.compression)
              for name, pairs in splits.items()}
    records.write_info(FLAGS.out, names, None, counts)
  elif FLAGS.synthetic:
    shape = tuple(int(s) for s in FLAGS.shape)
    counts = {split: records.write_split(
        FLAGS.out, split, synthetic_examples(n, shape, FLAGS.num_classes, seed, FLAGS.encode),
        FLAGS.shard_size, FLAGS.compression)
        for split, n, seed in (("train", FLAGS.synthetic, 0),
                               ("test", max(FLAGS.synthetic // 10, 1), 1))}
    records.write_info(FLAGS.out, [str(c) for c in range(FLAGS.num_classes)], shape, counts)
  elif FLAGS.config is None:
    raise app.UsageError("Give --config=configs/x.py (its data), --folder=PATH or "
                         "--synthetic=N.")
  elif FLAGS.config.data.source in ("text_classification", "tfds_text_classification"):
    splits, names = text_splits(FLAGS.config.data)
    counts = {name: records.write_split(FLAGS.out, name, zip(texts, labels),
                                        FLAGS.shard_size, FLAGS.compression)
              for name, (texts, labels) in splits.items()}
    records.write_info(FLAGS.out, names, None, counts, pixel_max=0.0, kind="texts")
  elif FLAGS.config.data.source in ("text", "tfds_text"):  # a tokens folder
    info = token_files.write_corpus(FLAGS.config.data, FLAGS.out)
    counts = {name: stop - start for name, (_, start, stop) in info["splits"].items()}
  else:
    raw = sources.load_raw(FLAGS.config.data)
    splits = {"train": (raw.train_inputs, raw.train_targets),
              "test": (raw.test_inputs, raw.test_targets)}
    if raw.validation_inputs is not None:
      splits["validation"] = (raw.validation_inputs, raw.validation_targets)
    counts = {name: records.write_split(
        FLAGS.out, name, ((encoded(np.asarray(x), FLAGS.encode), y)
                          for x, y in zip(images, labels)), FLAGS.shard_size, FLAGS.compression)
        for name, (images, labels) in splits.items()}
    records.write_info(FLAGS.out, raw.class_names, raw.train_inputs.shape[1:], counts,
                       raw.pixel_max)
  size = sum(os.path.getsize(os.path.join(FLAGS.out, f)) for f in os.listdir(FLAGS.out))
  print(json.dumps({"out": FLAGS.out, "records": counts, "bytes": size,
                    "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
  app.run(main)
