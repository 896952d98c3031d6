"""Records folders (array_record) and the streaming input path: batches read in grain's
worker processes, each process its own share, the same batches as the device path."""

from __future__ import annotations

import io
import logging
import os
import pickle
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from bigjax import train
from bigjax.data import feed, pipeline, records, sources, stream
from bigjax.registry import ConfigError
from bigjax.training import checkpoint
from conftest import REPO_ROOT
from configs import digits


def _pixels(n, shape=(6, 5, 1)):
  """Images whose pixels encode their index, and labels i % 3."""
  images = (np.arange(n, dtype=np.uint8)[:, None, None, None] * 3
            + np.zeros((n, *shape), np.uint8))
  return images, np.arange(n, dtype=np.int32) % 3


def _digits_records(root) -> str:
  """scikit-learn's digits as a records folder (train, test), raw pixels (0..16)."""
  raw = sources.load_raw(digits.get_config().data)
  folder = str(root / "digits_records")
  records.write(folder, {"train": (raw.train_inputs, raw.train_targets),
                         "test": (raw.test_inputs, raw.test_targets)},
                raw.class_names, pixel_max=raw.pixel_max)
  return folder


def _png(image: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(image[..., 0]).save(out, format="PNG")
  return out.getvalue()


def test_a_records_folder_reads_back_what_was_written(tmp_path):
  images, labels = _pixels(10)
  folder = str(tmp_path / "r")
  records.write_split(folder, "train", zip(images, labels), shard_size=4)  # 3 shards
  records.write_split(folder, "test", ((_png(x), y) for x, y in zip(images[:3], labels)))
  records.write_info(folder, ["a", "b", "c"], images.shape[1:], {"train": 10, "test": 3})
  assert len(records.split_files(folder, "train")) == 3
  train_x, train_y = records.open_split(folder, "train")
  assert train_x.shape == (10, 6, 5, 1) and train_x.dtype == np.uint8
  np.testing.assert_array_equal(train_x[[7, 2, 9]], images[[7, 2, 9]])  # across shards
  np.testing.assert_array_equal(train_y, labels)
  test_x, _ = records.open_split(folder, "test")  # encoded PNGs, decoded as read
  np.testing.assert_array_equal(test_x[:], images[:3])
  # Without the labels file, one pass over the records recovers them.
  os.remove(os.path.join(folder, "train.labels.npy"))
  np.testing.assert_array_equal(records.open_split(folder, "train")[1], labels)
  # A reader travels to a worker process by its paths, not its open files.
  again = pickle.loads(pickle.dumps(train_x))
  np.testing.assert_array_equal(again[[1]], images[[1]])


def test_a_records_folder_that_is_not_one_says_what_to_do(tmp_path):
  with pytest.raises(ConfigError, match="no such folder"):
    records.read_info(str(tmp_path / "nowhere"))
  (tmp_path / "tf").mkdir()
  (tmp_path / "tf" / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"")
  with pytest.raises(ConfigError, match="tfrecord files, which need TensorFlow.*"
                                        "file_format=array_record"):
    records.read_info(str(tmp_path / "tf"))
  images, labels = _pixels(4)
  records.write(str(tmp_path / "r"), {"train": (images, labels)}, ["a", "b", "c"])
  with pytest.raises(ConfigError, match='no "test" split.*Splits there: train'):
    records.open_split(str(tmp_path / "r"), "test")


def test_split_strings_select_a_range_of_records(tmp_path):
  images, labels = _pixels(10)
  folder = str(tmp_path / "r")
  records.write(folder, {"train": (images, labels)}, ["a", "b", "c"], shard_size=3)
  head, head_y = records.open_split(folder, "train[:80%]")
  tail, tail_y = records.open_split(folder, "train[80%:]")
  middle, _ = records.open_split(folder, "train[2:5]")
  assert (len(head), len(tail), len(middle)) == (8, 2, 3)
  np.testing.assert_array_equal(tail[:], images[8:])  # across shards
  np.testing.assert_array_equal(middle[[2, 0]], images[[4, 2]])
  np.testing.assert_array_equal(np.concatenate([head_y, tail_y]), labels)
  with pytest.raises(ConfigError, match=r'"train\[5:5\]" selects no record'):
    records.open_split(folder, "train[5:5]")
  with pytest.raises(ConfigError, match="give a split name"):
    records.open_split(folder, "train[:half]")


def test_an_image_folder_becomes_records_without_decoding(tmp_path):
  """bench/make_records.py --folder: each file's bytes as they are (decoded when read), the
  split in a seeded random order so that a range holds every class."""
  for k, name in enumerate(("cat", "dog")):
    (tmp_path / "pets" / name).mkdir(parents=True)
    for i in range(10):
      Image.new("RGB", (9 + i, 7), color=(10 * i, k * 200, 0)).save(
          tmp_path / "pets" / name / f"{i}.png")
  proc = subprocess.run([sys.executable, "-m", "bench.make_records",
                         f"--folder={tmp_path / 'pets'}", f"--out={tmp_path / 'r'}",
                         "--test_fraction=0.2"], cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  info = records.read_info(str(tmp_path / "r"))
  assert info["class_names"] == ["cat", "dog"] and info["splits"] == {"train": 16, "test": 4}
  train_x, train_y = records.open_split(str(tmp_path / "r"), "train", size=(6, 6))
  assert train_x[:].shape == (16, 6, 6, 3)  # mixed sizes, resized as read
  assert set(train_y[:8]) == {0, 1} and sorted(train_y) != list(train_y)
  # Every file once, each with its own label (the green channel says which class).
  test_x, test_y = records.open_split(str(tmp_path / "r"), "test", size=(6, 6))
  pixels = np.concatenate([train_x[:], test_x[:]])
  labels = np.concatenate([train_y, test_y])
  np.testing.assert_array_equal(pixels[:, 0, 0, 1] > 100, labels == 1)
  assert len({(int(p[0, 0, 0]), int(y)) for p, y in zip(pixels, labels)}) == 20


def _with_a_damaged_record(tmp_path, bad: int):
  """A records folder of 8 whose record `bad` is not a record at all."""
  from array_record.python import array_record_module
  images, labels = _pixels(8)
  folder = tmp_path / "damaged"
  folder.mkdir()
  writer = array_record_module.ArrayRecordWriter(str(folder / "train.array_record"),
                                                 "group_size:1")
  for i, (x, y) in enumerate(zip(images, labels)):
    writer.write(b"\x00garbage" if i == bad else records.encode_record(x, y))
  writer.close()
  np.save(folder / "train.labels.npy", labels)
  records.write_info(str(folder), ["a", "b", "c"], images.shape[1:], {"train": 8})
  return records.open_split(str(folder), "train"), images, labels


def test_a_damaged_record_stops_with_its_index_or_is_replaced_with_its_label(tmp_path):
  (lazy, labels), images, _ = _with_a_damaged_record(tmp_path, bad=5)
  rows = np.asarray([4, 5, 6, 1])
  with pytest.raises(records.BadRecordError,
                     match=r"record 5 of the \"train\" split of .* cannot be read .*"
                           "skip_bad_records=True"):
    stream.read_batch(lazy, labels, rows)
  batch = stream.read_batch(lazy, labels, rows, skip_bad=True)
  assert batch[stream.SKIPPED] == 1
  # Record 5 replaced by a readable example of its batch, image and label together.
  np.testing.assert_array_equal(batch["image"][[0, 2, 3]], images[[4, 6, 1]])
  donor = [i for i in (4, 6, 1) if np.array_equal(images[i], batch["image"][1])]
  assert donor and batch["label"][1] == labels[donor[0]]
  np.testing.assert_array_equal(batch["label"][[0, 2, 3]], labels[[4, 6, 1]])


def test_worker_processes_read_the_batches_the_thread_would(tmp_path):
  images, labels = _pixels(40)
  records.write(str(tmp_path / "r"), {"train": (images, labels)}, ["a", "b", "c"])
  lazy, stored = records.open_split(str(tmp_path / "r"), "train")
  split = pipeline.LazyImages(lazy, np.arange(3, 40), 255.0)  # rows 3.. as a split would
  rows = np.random.default_rng(0).permutation(37)[:36].reshape(6, 6)
  mask = (rows > 2).astype(np.float32)
  by_thread = [stream.read_batch(split, stored[3:], r, m) for r, m in zip(rows, mask)]
  by_workers = list(stream.worker_batches(split, stored[3:], rows, mask, workers=2))
  assert len(by_workers) == 6
  for a, b in zip(by_thread, by_workers):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(a[key], b[key])


def test_worker_count_is_clamped_to_the_cpus(monkeypatch, caplog):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
  with caplog.at_level(logging.WARNING):
    assert feed.worker_count(16) == 2
  assert "worker_count=16 is more than this machine's 2 CPUs; using 2" in caplog.text
  assert feed.worker_count(1) == 1
  with pytest.raises(ConfigError, match="worker_count=-1"):
    feed.worker_count(-1)


def test_auto_placement_chooses_by_size(tmp_path, caplog):
  folder = _digits_records(tmp_path)
  config = digits.get_config().data
  with config.unlocked():
    config.update(source="array_record", path=folder, placement="auto")
  with caplog.at_level(logging.INFO):
    small = pipeline.prepare(sources.load_raw(config), config)
  assert small.placement == "device" and isinstance(small.train.inputs, np.ndarray)
  assert "data placement: device (auto: the splits take 0.00 GB" in caplog.text
  with config.unlocked():
    config.device_limit_gb = 1e-4  # 100 KB: digits' 460 KB of floats do not fit
  large = pipeline.prepare(sources.load_raw(config), config)
  assert large.placement == "host" and isinstance(large.train.inputs, pipeline.LazyImages)
  np.testing.assert_array_equal(large.test.inputs[:], small.test.inputs)
  with config.unlocked():
    config.placement = "disk"
  with pytest.raises(ConfigError, match='placement="disk": use "auto"'):
    pipeline.prepare(sources.load_raw(config), config)


def _stream_config(folder, workers, **train_overrides):
  c = digits.get_config()
  with c.unlocked():
    c.data.update(source="array_record", path=folder, placement="host",
                  worker_count=workers)
    c.data.augment.flip_lr = True
    c.train.update(num_epochs=2, steps_per_call=1, **train_overrides)
    c.report.update(plots=False, html=False, tensorboard=False)
  return c


@pytest.mark.slow
def test_streamed_records_train_exactly_as_the_device_path(tmp_path):
  folder = _digits_records(tmp_path)
  device = digits.get_config()
  with device.unlocked():
    device.data.augment.flip_lr = True
    device.train.update(num_epochs=2, steps_per_call=1)
    device.report.update(plots=False, html=False, tensorboard=False)
  on_device = train.run(device, str(tmp_path / "device"))
  streamed = train.run(_stream_config(folder, workers=2), str(tmp_path / "stream"))
  assert streamed["test_loss"] == pytest.approx(on_device["test_loss"], rel=1e-6)
  a = checkpoint.latest_params(str(tmp_path / "device"))[1]
  b = checkpoint.latest_params(str(tmp_path / "stream"))[1]
  jax.tree.map(np.testing.assert_allclose, a, b)


@pytest.mark.slow
def test_a_streamed_run_killed_mid_epoch_resumes_bit_identical(tmp_path):
  """kill -9 mid-epoch, with worker processes reading: the resumed run reads the batches
  the uninterrupted one did (the position is the step, saved in every checkpoint)."""
  folder = _digits_records(tmp_path)
  args = ["--config=configs/digits.py", "--config.data.source=array_record",
          f"--config.data.path={folder}", "--config.data.placement=host",
          "--config.data.worker_count=2", "--config.train.num_epochs=3",
          "--config.train.steps_per_call=1", "--config.checkpoint.every_steps=15",
          "--config.report.plots=False", "--config.report.html=False"]
  run_py = lambda workdir, *more, env=None: subprocess.run(
      [sys.executable, "run.py", f"--workdir={workdir}", *args, *more], cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=600, env=env)
  straight = run_py(tmp_path / "a")
  assert straight.returncode == 0, straight.stderr[-3000:]
  (tmp_path / "kill_at.py").write_text(
      "import os, signal\nfrom bigjax.training import hooks\n"
      "class KillAt(hooks.Hook):\n"
      "  def after_step(self, run, state):\n"
      "    if run.loop.step == 70:\n"
      "      os.kill(os.getpid(), signal.SIGKILL)\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO_ROOT]))
  killed = run_py(tmp_path / "b", '--config.hooks=("kill_at:KillAt",)', env=env)
  assert killed.returncode == -signal.SIGKILL
  stopped_at = checkpoint.make_manager(str(tmp_path / "b"), create=False).latest_step()
  assert 40 < stopped_at < 70  # mid-epoch 2 (40 steps an epoch)
  resumed = run_py(tmp_path / "b")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {stopped_at}" in resumed.stderr
  a = checkpoint.latest_params(str(tmp_path / "a"))[1]
  b = checkpoint.latest_params(str(tmp_path / "b"))[1]
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bit-identical


def _digits_folder(root) -> str:
  """scikit-learn's digits as PNG files, one subfolder per class."""
  raw = sources.load_raw(digits.get_config().data)
  images = np.concatenate([raw.train_inputs, raw.test_inputs])[..., 0] * 15  # 0..240
  labels = np.concatenate([raw.train_targets, raw.test_targets])
  for i, (image, label) in enumerate(zip(images, labels)):
    (root / "digits_png" / str(label)).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.astype(np.uint8)).save(root / "digits_png" / str(label) / f"{i}.png")
  return str(root / "digits_png")


def test_an_image_folder_streams_the_images_it_would_read_whole(tmp_path):
  folder = _digits_folder(tmp_path)
  config = digits.get_config().data
  with config.unlocked():
    config.update(source="folder", path=folder, image_size=(10, 9), placement="device")
  whole = sources.load_raw(config)
  with config.unlocked():
    config.placement = "host"
  lazy = sources.load_raw(config)
  assert isinstance(lazy.train_inputs, sources.image_files.FileImages)
  assert lazy.train_inputs.shape == whole.train_inputs.shape == (1438, 10, 9, 1)
  np.testing.assert_array_equal(lazy.train_targets, whole.train_targets)
  rows = np.asarray([5, 900, 17])
  np.testing.assert_array_equal(lazy.train_inputs[rows], whole.train_inputs[rows])
  np.testing.assert_array_equal(lazy.test_inputs[:], whole.test_inputs)
  # A file that no longer decodes: its path, and the fix.
  path = lazy.train_inputs.paths[17]
  open(path, "wb").write(b"not a png")
  with pytest.raises(records.BadRecordError, match=f"{path}.*skip_bad_records=True"):
    stream.read_batch(lazy.train_inputs, lazy.train_targets, rows)


@pytest.mark.slow
def test_a_streamed_image_folder_trains_as_the_whole_one(tmp_path):
  folder = _digits_folder(tmp_path)
  runs = {}
  for placement, workers in (("device", 0), ("host", 2)):
    c = _stream_config(folder, workers)
    with c.unlocked():
      c.data.update(source="folder", placement=placement)
    runs[placement] = train.run(c, str(tmp_path / placement))["test_loss"]
  assert runs["host"] == pytest.approx(runs["device"], rel=1e-6)


def _text_corpus(root) -> str:
  """Two categories of 60 short texts each, one file per category (fortune's layout)."""
  rng = np.random.default_rng(0)
  words = {"space": ["orbit", "rocket", "planet", "star", "moon"],
           "kitchen": ["bread", "butter", "spoon", "soup", "salt"]}
  folder = root / "texts"
  folder.mkdir(exist_ok=True)
  for name, vocabulary in words.items():
    (folder / name).write_text("\n%\n".join(" ".join(rng.choice(vocabulary, 6))
                                            for _ in range(60)))
  return str(folder)


def _text_config(corpus, **overrides):
  from configs import fortunes_bert
  config = fortunes_bert.get_config("small")
  with config.unlocked():
    config.data.update(path=corpus, categories=("space", "kitchen"))
    config.model.num_classes = 2
    config.train.update(num_epochs=2, steps_per_call=1)
    config.report.update(plots=False, html=False, tensorboard=False)
    config.update_from_flattened_dict(overrides)
  return config


def test_text_records_hold_the_texts_and_read_as_their_tokens(tmp_path):
  """bench/make_records.py from a text-classification config: the texts untokenized, the
  source's own train/test split; read back, each split tokenized as read gives the tokens
  of the whole, in-memory source, with the same tokenizer (a trained one too)."""
  config = _text_config(_text_corpus(tmp_path))
  folder = str(tmp_path / "text_records")
  proc = subprocess.run([sys.executable, "-m", "bench.make_records",
                         "--config=configs/fortunes_bert.py:small",
                         f"--config.data.path={config.data.path}",
                         "--config.data.categories=('space','kitchen')", f"--out={folder}"],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  info = records.read_info(folder)
  assert info["kind"] == "texts" and info["class_names"] == ["space", "kitchen"]
  assert info["splits"] == {"train": 96, "test": 24}
  texts, labels = records.open_split(folder, "train")
  assert isinstance(texts, records.RecordTexts) and len(texts) == 96
  assert all(t.split()[0] in ("orbit", "rocket", "planet", "star", "moon", "bread", "butter",
                              "spoon", "soup", "salt") for t in texts.texts([0, 50, 95]))
  with pytest.raises(ValueError, match="not yet tokenized"):
    texts[[0]]
  for tokenizer in ("bytes", "bpe:300"):
    whole = sources.load_raw(dict(config.data, tokenizer=tokenizer))
    streamed = sources.load_raw(dict(config.data, tokenizer=tokenizer, source="array_record",
                                     path=folder))
    assert streamed.class_names == whole.class_names and streamed.pixel_max == 0
    assert streamed.tokenizer == whole.tokenizer
    for split in ("train", "test"):
      lazy, tokens = getattr(streamed, f"{split}_inputs"), getattr(whole, f"{split}_inputs")
      assert lazy.shape == tokens.shape == (len(tokens), 32) and lazy.dtype == np.int32
      np.testing.assert_array_equal(lazy[np.arange(len(lazy))], tokens)
      np.testing.assert_array_equal(getattr(streamed, f"{split}_targets"),
                                    getattr(whole, f"{split}_targets"))
    # The reader and its tokenizer travel to a worker process.
    again = pickle.loads(pickle.dumps(streamed.train_inputs))
    np.testing.assert_array_equal(again[[[3, 1], [0, 2]]],
                                  whole.train_inputs[[[3, 1], [0, 2]]])
  with pytest.raises(ConfigError, match="pack_texts=True packs texts read into memory"):
    sources.load_raw(dict(config.data, source="array_record", path=folder, pack_texts=True))


def test_streamed_texts_must_fit_the_models_vocabulary(tmp_path):
  corpus = _text_config(_text_corpus(tmp_path)).data
  folder = str(tmp_path / "text_records")
  (train_x, train_y), (test_x, test_y), names = sources.labelled_texts(corpus)
  for split, texts, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
    records.write_split(folder, split, zip(texts, labels))
  records.write_info(folder, names, None, {"train": len(train_x), "test": len(test_x)},
                     pixel_max=0.0, kind="texts")
  config = _text_config(corpus.path, **{"model.vocab_size": 100, "data.source": "array_record",
                                        "data.path": folder, "data.placement": "host"})
  with pytest.raises(ConfigError, match=r"token ids up to 259, but the model's vocabulary is "
                     r"config.model.vocab_size=100"):
    train.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "config.json")  # (checked before it is kept)
  assert not os.listdir(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_streamed_text_records_train_exactly_as_the_texts_in_memory(tmp_path):
  corpus = _text_corpus(tmp_path)
  folder = str(tmp_path / "text_records")
  (train_x, train_y), (test_x, test_y), names = sources.labelled_texts(
      _text_config(corpus).data)
  for split, texts, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
    records.write_split(folder, split, zip(texts, labels))
  records.write_info(folder, names, None, {"train": len(train_x), "test": len(test_x)},
                     pixel_max=0.0, kind="texts")
  whole = train.run(_text_config(corpus), str(tmp_path / "whole"))
  streamed = train.run(_text_config(corpus, **{
      "data.source": "array_record", "data.path": folder, "data.placement": "host",
      "data.worker_count": 1}), str(tmp_path / "streamed"))
  assert streamed["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-6)
  assert streamed["metrics"]["test"]["count"] == 24
  a = checkpoint.latest_params(str(tmp_path / "whole"))[1]
  b = checkpoint.latest_params(str(tmp_path / "streamed"))[1]
  jax.tree.map(np.testing.assert_allclose, a, b)
