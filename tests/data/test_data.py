import gzip
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bigjax.data import idx, pipeline, sources, tfds_source
from bigjax.registry import ConfigError
from configs import mnist

from conftest import REPO_ROOT


def _write_idx(path, array, gz=False):
  codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
  header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  opener = gzip.open if gz else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def _write_idx_dir(directory, n_train=30, n_test=10, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  suffix = ".gz" if gz else ""
  for split, n in (("train", n_train), ("t10k", n_test)):
    _write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte{suffix}"),
               rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz)
    _write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte{suffix}"),
               rng.integers(0, 10, (n,), dtype=np.uint8), gz)


def test_idx_round_trip(tmp_path):
  array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  for gz in (False, True):
    path = str(tmp_path / ("a.idx" + (".gz" if gz else "")))
    _write_idx(path, array, gz)
    np.testing.assert_array_equal(idx.read_idx(path), array)
  wide = np.array([1, -2, 70000], dtype=">i4")
  _write_idx(str(tmp_path / "w.idx"), wide)
  np.testing.assert_array_equal(idx.read_idx(str(tmp_path / "w.idx")), [1, -2, 70000])


def test_idx_rejects_bad_magic_and_truncation(tmp_path):
  (tmp_path / "bad").write_bytes(b"\x89PNG....")
  with pytest.raises(idx.IdxFormatError, match="not an IDX file"):
    idx.read_idx(str(tmp_path / "bad"))
  _write_idx(str(tmp_path / "t"), np.zeros((4, 5), np.uint8))
  (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
  with pytest.raises(idx.IdxFormatError, match="truncated"):
    idx.read_idx(str(tmp_path / "t"))


def test_idx_source_reads_a_folder_and_names_missing_files(tmp_path):
  _write_idx_dir(str(tmp_path), gz=False)
  config = mnist.get_config().data
  with config.unlocked():
    config.source, config.path = "idx", str(tmp_path)
  raw = sources.load_raw(config)
  assert raw.train_inputs.shape == (30, 28, 28, 1) and raw.test_inputs.shape == (10, 28, 28, 1)
  assert raw.train_targets.dtype == np.int32
  os.remove(tmp_path / "t10k-labels-idx1-ubyte")
  with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
    sources.load_raw(config)
  with config.unlocked():
    config.path = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere.*does not exist.*dataset-fashion-mnist"):
    sources.load_raw(config)


def test_debian_fashion_mnist_loads_in_full(fashion_mnist_dir):
  images, labels = idx.load_idx_split(fashion_mnist_dir, "train")
  assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [6000] * 10
  test_inputs, test_targets = idx.load_idx_split(fashion_mnist_dir, "test")
  assert test_inputs.shape == (10000, 28, 28, 1) and np.bincount(test_targets).tolist() == [1000] * 10


def test_train_validation_split_sizes_disjoint_and_fixed():
  train, val = pipeline.train_validation_indices(1000, 0.2, seed=0)
  assert len(train) == 800 and len(val) == 200
  assert not set(train) & set(val) and set(train) | set(val) == set(range(1000))
  train2, val2 = pipeline.train_validation_indices(1000, 0.2, seed=0)
  np.testing.assert_array_equal(val, val2)
  _, val_other = pipeline.train_validation_indices(1000, 0.2, seed=1)
  assert set(val) != set(val_other)
  with pytest.raises(ConfigError, match="validation_fraction"):
    pipeline.train_validation_indices(10, 1.0, seed=0)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
  a = pipeline.epoch_permutation(0, 3, 100)
  np.testing.assert_array_equal(a, pipeline.epoch_permutation(0, 3, 100))
  assert not np.array_equal(a, pipeline.epoch_permutation(0, 4, 100))
  assert not np.array_equal(a, pipeline.epoch_permutation(1, 3, 100))
  assert sorted(a.tolist()) == list(range(100))


def test_padded_batches_cover_every_example_exactly_once():
  indices, mask = pipeline.padded_batches(10, 4)
  assert indices.shape == (3, 4)
  assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
  assert sorted(indices[mask > 0].tolist()) == list(range(10))


def test_prepare_scales_and_standardises_with_train_statistics():
  rng = np.random.default_rng(0)
  raw = sources.RawData(rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8),
                        rng.integers(0, 10, 50).astype(np.int32),
                        np.full((5, 4, 4, 1), 255, np.uint8), np.zeros(5, np.int32), 255.0,
                        [str(i) for i in range(10)])
  config = mnist.get_config().data
  prepared = pipeline.prepare(raw, config)
  assert prepared.test.inputs.max() == 1.0 and prepared.train.inputs.min() >= 0.0
  assert len(prepared.train) == 40 and len(prepared.validation) == 10
  with config.unlocked():
    config.standardize = True
  standardised = pipeline.prepare(raw, config)
  assert abs(standardised.train.inputs.mean()) < 1e-5
  assert standardised.train.inputs.std() == pytest.approx(1.0, rel=1e-4)
  mean, std = standardised.stats["mean"][0], standardised.stats["std"][0]
  np.testing.assert_allclose(standardised.test.inputs, (1.0 - mean) / std, rtol=1e-5)


def test_tfds_source_with_mock_data():
  import tensorflow_datasets as tfds
  config = mnist.get_config().data
  with config.unlocked():
    config.name = "fashion_mnist"
  with tfds.testing.mock_data(num_examples=40):
    raw = sources.load_raw(config)
  assert raw.train_inputs.shape == (40, 28, 28, 1) and raw.train_inputs.dtype == np.uint8
  assert raw.class_names[0] == "T-shirt/top" and raw.num_classes == 10


def test_unknown_tfds_name_suggests_nearest(tmp_path):
  with pytest.raises(ConfigError, match='Unknown TFDS dataset "fasion_mnist".*"fashion_mnist"'):
    tfds_source.load_tfds_split("fasion_mnist", "train", str(tmp_path), download=False)


def _no_waiting(monkeypatch):
  """Fail fast means no retry loop: any sleep (TFDS waits between its retries) fails."""
  def sleep(seconds):
    raise AssertionError(f"slept {seconds} s: something retried instead of failing at once")
  monkeypatch.setattr(time, "sleep", sleep)


def test_unprepared_tfds_fails_at_once_without_download(tmp_path, monkeypatch):
  _no_waiting(monkeypatch)
  with pytest.raises(tfds_source.DatasetUnavailableError) as e:
    tfds_source.load_tfds_split("mnist", "train", str(tmp_path), download=False)
  message = str(e.value)
  assert "not prepared" in message and "data_dir" in message and "source=idx" in message


def test_unprepared_tfds_fails_fast_when_the_network_is_down(tmp_path, monkeypatch):
  # The probe itself: a refused connection answers False at once.
  monkeypatch.setattr(tfds_source, "_PROBE_HOST", ("127.0.0.1", 9))
  _no_waiting(monkeypatch)
  assert tfds_source._network_reachable() is False
  with pytest.raises(tfds_source.DatasetUnavailableError, match="network is unreachable"):
    tfds_source.load_tfds_split("mnist", "train", str(tmp_path), download=True)


def test_run_py_offline_tfds_failure_is_fast_and_says_what_to_do(tmp_path):
  t0 = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, "run.py", "--config=configs/mnist.py", f"--workdir={tmp_path}/w",
       f"--config.data.data_dir={tmp_path}/tfds", "--config.data.download=False"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  elapsed = time.perf_counter() - t0
  assert proc.returncode == 1
  assert 'TFDS dataset "mnist" is not prepared' in proc.stderr
  assert "--config.data.source=idx" in proc.stderr
  # Far below the ~205 s TFDS's own retries take (interpreter and imports included).
  assert elapsed < 100
  # bigjax's own checks end with their message, not a traceback (unless asked for one).
  assert "Traceback" not in proc.stderr and "bigjax: error: " in proc.stderr


def test_class_subsets_are_relabelled_and_labels_per_class_are_exact():
  from bigjax.data.pipeline import labels_per_class, select_classes
  images = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1)
  labels = np.array([0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9], np.int32)
  ((x, y),), names = select_classes([(images, labels)], (9, 5), [f"c{i}" for i in range(10)])
  assert names == ["c9", "c5"]
  assert y.tolist() == [1, 1, 0, 0] and x[:, 0, 0, 0].tolist() == [5, 6, 10, 11]
  with pytest.raises(ConfigError, match="distinct class ids in \\[0, 9\\]"):
    select_classes([(images, labels)], (3, 10), [])

  many = np.repeat(np.arange(3), 10).astype(np.int32)
  chosen = labels_per_class(many, np.arange(30), 4, seed=0)
  assert np.bincount(many[chosen]).tolist() == [4, 4, 4]
  assert chosen.tolist() == labels_per_class(many, np.arange(30), 4, seed=0).tolist()
  assert chosen.tolist() != labels_per_class(many, np.arange(30), 4, seed=1).tolist()
  with pytest.raises(ConfigError, match="fewer training examples"):
    labels_per_class(many, np.arange(30), 11, seed=0)
