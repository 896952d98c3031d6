"""Image folders, NumPy arrays, lazily read splits and the host input path."""

import os

import numpy as np
import pytest
from PIL import Image

from bigjax import train
from bigjax.training.programs import Programs
from bigjax.data import feed, pipeline, sources
from bigjax.data.images import BadImageError
from bigjax.registry import ConfigError
from configs import digits, mnist


def _write_folder(root, classes=("cat", "dog", "emu"), per_class=5, size=(12, 10),
                  mode="RGB"):
  """Class folders of PNGs whose pixel value encodes (class, index)."""
  for c, name in enumerate(classes):
    os.makedirs(root / name, exist_ok=True)
    for i in range(per_class):
      value = 40 * c + i
      Image.new(mode, size[::-1], (value,) * 3 if mode == "RGB" else value).save(
          root / name / f"{i}.png")
  return root


def _data_config(**overrides):
  config = mnist.get_config().data
  with config.unlocked():
    config.update(dict(download=False, validation_fraction=0.0), **overrides)
  return config


def test_image_folder_labels_by_sorted_folder_and_holds_out_test(tmp_path):
  root = _write_folder(tmp_path / "pets")
  raw = sources.load_raw(_data_config(source="folder", path=str(root), test_fraction=0.2))
  assert raw.class_names == ["cat", "dog", "emu"]
  assert len(raw.train_targets) == 12 and len(raw.test_targets) == 3
  assert raw.train_inputs.shape[1:] == (12, 10, 3) and raw.train_inputs.dtype == np.uint8
  for images, labels in ((raw.train_inputs, raw.train_targets),
                         (raw.test_inputs, raw.test_targets)):
    np.testing.assert_array_equal(images[:, 0, 0, 0] // 40, labels)  # pixels match labels
  again = sources.load_raw(_data_config(source="folder", path=str(root), test_fraction=0.2))
  np.testing.assert_array_equal(raw.test_inputs, again.test_inputs)  # split fixed by seed


def test_image_folder_with_train_and_test_subfolders_resized_and_grayscale(tmp_path):
  _write_folder(tmp_path / "d" / "train", size=(30, 20), mode="L")
  _write_folder(tmp_path / "d" / "test", classes=("cat", "emu"), per_class=2, size=(16, 16),
                mode="L")
  raw = sources.load_raw(_data_config(source="folder", path=str(tmp_path / "d"),
                                      image_size=(8, 8)))
  assert raw.train_inputs.shape == (15, 8, 8, 1) and raw.test_inputs.shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(raw.test_targets, [0, 0, 2, 2])  # the train folder's labels
  rgb = sources.load_raw(_data_config(source="folder", path=str(tmp_path / "d"),
                                      image_size=(8, 8), channels=3))
  assert rgb.train_inputs.shape == (15, 8, 8, 3)


def test_image_folder_bad_input_names_the_problem(tmp_path):
  config = lambda **o: _data_config(source="folder", path=str(tmp_path / "f"), **o)
  with pytest.raises(ConfigError, match=f"{tmp_path}/f: no such folder"):
    sources.load_raw(config())
  _write_folder(tmp_path / "f")
  os.makedirs(tmp_path / "f" / "empty")
  with pytest.raises(ConfigError, match="Class folder .*/f/empty holds no image files"):
    sources.load_raw(config())
  os.rmdir(tmp_path / "f" / "empty")
  Image.new("RGB", (5, 5)).save(tmp_path / "f" / "dog" / "small.png")
  with pytest.raises(ConfigError, match=r"differ in size .*image_size=H,W"):
    sources.load_raw(config())
  os.remove(tmp_path / "f" / "dog" / "small.png")
  (tmp_path / "f" / "cat" / "broken.jpg").write_bytes(b"not an image")
  with pytest.raises(BadImageError, match="Cannot decode .*/cat/broken.jpg.*skip_bad_images"):
    sources.load_raw(config())
  raw = sources.load_raw(config(skip_bad_images=True))
  assert len(raw.train_targets) + len(raw.test_targets) == 15


def _arrays(n=50, n_test=20, shape=(6, 6)):
  rng = np.random.default_rng(0)
  return dict(x_train=rng.integers(0, 256, (n, *shape), np.uint8),
              y_train=rng.integers(0, 4, n), x_test=rng.integers(0, 256, (n_test, *shape),
                                                                 np.uint8),
              y_test=rng.integers(0, 4, n_test))


def test_npz_arrays_keras_names_and_held_out_test(tmp_path):
  arrays = _arrays()
  np.savez(tmp_path / "d.npz", **arrays)
  raw = sources.load_raw(_data_config(source="arrays", path=str(tmp_path / "d.npz")))
  np.testing.assert_array_equal(raw.train_inputs[..., 0], arrays["x_train"])
  assert raw.test_targets.dtype == np.int32 and raw.pixel_max == 255.0 and raw.num_classes == 4
  np.savez(tmp_path / "t.npz", train_images=arrays["x_train"], train_labels=arrays["y_train"])
  held = sources.load_raw(_data_config(source="arrays", path=str(tmp_path / "t.npz"),
                                       test_fraction=0.2))
  assert len(held.train_targets) == 40 and len(held.test_targets) == 10


def test_arrays_bad_input(tmp_path):
  arrays = _arrays()
  np.savez(tmp_path / "short.npz", x_train=arrays["x_train"], y_train=arrays["y_train"][:-1])
  with pytest.raises(ConfigError, match=r"50 train images but train labels of shape \(49,\)"):
    sources.load_raw(_data_config(source="arrays", path=str(tmp_path / "short.npz")))
  np.savez(tmp_path / "nolabels.npz", x_train=arrays["x_train"])
  with pytest.raises(ConfigError, match="no train_labels array"):
    sources.load_raw(_data_config(source="arrays", path=str(tmp_path / "nolabels.npz")))
  with pytest.raises(ConfigError, match="no such file or folder"):
    sources.load_raw(_data_config(source="arrays", path=str(tmp_path / "absent.npz")))


def test_npy_folder_is_memory_mapped_and_host_placement_reads_it_lazily(tmp_path):
  arrays = _arrays(n=100)
  for name, value in arrays.items():
    np.save(tmp_path / f"{name}.npy", value)
  config = _data_config(source="arrays", path=str(tmp_path), validation_fraction=0.2,
                        standardize=True, placement="host")
  data = pipeline.prepare(sources.load_raw(config), config)
  assert isinstance(data.train.inputs, pipeline.LazyImages)
  assert isinstance(data.train.inputs.raw, np.memmap)  # nothing read yet
  with config.unlocked():
    config.placement = "device"
  eager = pipeline.prepare(sources.load_raw(config), config)
  assert isinstance(eager.train.inputs, np.ndarray)
  for lazy, dense in ((data.train, eager.train), (data.validation, eager.validation),
                      (data.test, eager.test)):
    assert lazy.inputs.shape == dense.inputs.shape
    rows = np.array([5, 0, 3, 3])
    np.testing.assert_array_equal(lazy.inputs[rows], dense.inputs[rows])
    np.testing.assert_array_equal(lazy.inputs[2:4], dense.inputs[2:4])
    np.testing.assert_array_equal(lazy.targets, dense.targets)
  assert data.stats == eager.stats
  np.testing.assert_allclose(eager.train.inputs.mean(), 0.0, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("standardize", [False, True])
def test_images_scaled_in_place_equal_the_straightforward_expression(channels, standardize):
  raw = np.random.default_rng(0).integers(0, 256, (50, 6, 5, channels), dtype=np.uint8)
  images = pipeline.LazyImages(raw, None, 255.0)
  expected = raw.astype(np.float32) / np.float32(255.0)
  if standardize:
    mean, std = pipeline.channel_stats(images)
    images = images.standardized(mean, std)
    expected = (expected - mean) / std
  rows = np.array([7, 0, 49, 7])
  assert images[rows].dtype == np.float32
  np.testing.assert_array_equal(images[rows], expected[rows])  # bit for bit, not just close
  np.testing.assert_array_equal(np.asarray(images), expected)
  assert expected.std() > 0.1  # (the images are not all one value)


def test_resize_of_tfds_mock_data():
  import tensorflow_datasets as tfds
  config = _data_config(source="tfds", name="fashion_mnist", image_size=(14, 14))
  with tfds.testing.mock_data(num_examples=12):
    raw = sources.load_raw(config)
  assert raw.train_inputs.shape == (12, 14, 14, 1)


def test_host_shard_covers_the_batch_once_and_checks_divisibility():
  batch = np.arange(12)
  shares = [feed.host_shard(batch, i, 3) for i in range(3)]
  np.testing.assert_array_equal(np.concatenate(shares), batch)
  with pytest.raises(ConfigError, match="global batch of 12 does not split over 5"):
    feed.host_shard(batch, 0, 5)


def test_prefetch_yields_every_batch_in_order_and_reraises_errors():
  batches = ({"x": np.full(3, i)} for i in range(5))
  got = [int(b["x"][0]) for b in feed.Prefetch(batches)]
  assert got == list(range(5))

  def failing():
    yield {"x": np.zeros(1)}
    raise OSError("disk gone")
  it = feed.Prefetch(failing())
  next(it)
  with pytest.raises(OSError, match="disk gone"):
    next(it)
  endless = feed.Prefetch({"x": np.zeros(1)} for _ in iter(int, 1))
  next(endless)
  endless.close()  # stops the thread though batches remain
  assert not endless._thread.is_alive()


@pytest.mark.slow
def test_host_placement_trains_exactly_as_device_placement(tmp_path):
  def config(placement):
    c = digits.get_config()
    with c.unlocked():
      c.train.num_epochs = 2
      c.train.steps_per_call = 1
      c.data.placement = placement
      c.data.augment.flip_lr = True
      c.report.plots = c.report.html = False
    return c
  on_device = train.run(config("device"), str(tmp_path / "device"))
  on_host = train.run(config("host"), str(tmp_path / "host"))
  assert on_host["test_loss"] == pytest.approx(on_device["test_loss"], rel=1e-6)
  assert on_host["metrics"]["test"]["confusion_matrix"] == \
      on_device["metrics"]["test"]["confusion_matrix"]
  with pytest.raises(ConfigError, match='placement="disk"'):
    train.run(config("disk"), str(tmp_path / "disk"))


def test_tfds_host_placement_streams_from_the_data_source(tmp_path):
  import tensorflow_datasets as tfds
  from bigjax.data import tfds_source
  config = _data_config(source="tfds", name="fashion_mnist", placement="host",
                        validation_fraction=0.25, image_size=(14, 14))
  with tfds.testing.mock_data(num_examples=16):
    lazy = pipeline.prepare(sources.load_raw(config), config)
    with config.unlocked():
      config.placement = "device"
    eager = pipeline.prepare(sources.load_raw(config), config)
  assert isinstance(lazy.train.inputs.raw, tfds_source.DataSourceImages)
  assert lazy.train.inputs.shape == eager.train.inputs.shape == (12, 14, 14, 1)
  with tfds.testing.mock_data(num_examples=16):
    np.testing.assert_array_equal(lazy.train.inputs[[3, 0]], eager.train.inputs[[3, 0]])
  np.testing.assert_array_equal(lazy.validation.targets, eager.validation.targets)


@pytest.mark.slow
def test_cats_vs_dogs_config_trains_on_a_folder_of_photos_of_mixed_sizes(tmp_path):
  from configs import cats_vs_dogs
  rng = np.random.default_rng(0)
  for c, name in enumerate(("cat", "dog")):
    os.makedirs(tmp_path / "photos" / name)
    for i in range(12):
      pixels = rng.integers(0, 256, (40 + 3 * i, 60 - 2 * i, 3), np.uint8)
      Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{i}.jpg")
  config = cats_vs_dogs.get_config("folder,small")
  with config.unlocked():
    config.data.path = str(tmp_path / "photos")
    config.train.batch_size = 8
    config.report.plots = config.report.html = False
  results = train.run(config, str(tmp_path / "run"))
  # 24 photos: 4 held out as test, 2 of the other 20 as validation, 18 train -> 2 steps.
  assert results["steps"] == 2 and results["metrics"]["test"]["count"] == 4
  assert np.isfinite(results["test_loss"])
  setup = Programs(config)
  assert setup.example_input.shape == (1, 224, 224, 3) and setup.placement == "host"


def test_a_tfds_split_string_that_selects_nothing(monkeypatch):
  # (tfds.testing.mock_data ignores split slices, so a builder stands in whose data source
  # for "train[:0]" is empty, as TFDS's is.)
  from bigjax.data import tfds_source

  class EmptyBuilder:
    name = "fashion_mnist"
    def as_data_source(self, split):
      return []
  monkeypatch.setattr(tfds_source, "_builder", lambda name, data_dir: EmptyBuilder())
  for placement in ("device", "host"):
    config = _data_config(source="tfds", name="fashion_mnist", train_split="train[:0]",
                          placement=placement)
    with pytest.raises(ConfigError, match=r'split "train\[:0\]" of "fashion_mnist" selects '
                                          "no examples"):
      sources.load_raw(config)
