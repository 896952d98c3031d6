"""Bad input gets one line that names the problem and the fix (the full table, run through
run.py: python -m bench.bad_inputs, docs/bad_inputs.md)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from bigjax import cli, train
from bigjax.data import arrays, idx, images
from bigjax.models import build_model
from bigjax.registry import ConfigError
from conftest import REPO_ROOT
from conftest import digits_config as _digits


def test_config_files_that_cannot_load_are_named(tmp_path):
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "no_get.py").write_text("x = 1\n")
  (tmp_path / "fine.py").write_text("def get_config(arg=None):\n  return None\n")
  problem = lambda spec: cli.config_file_problem(["run.py", f"--config={spec}"])
  assert "does not exist" in problem(tmp_path / "nope.py")
  assert f"{tmp_path}/syntax.py, line 1: invalid syntax" in problem(tmp_path / "syntax.py")
  assert "defines no get_config()" in problem(tmp_path / "no_get.py")
  assert problem(f"{tmp_path}/fine.py:variant") is None
  assert cli.config_file_problem(["run.py", "--config", str(tmp_path / "nope.py")])
  assert cli.config_file_problem(["run.py", "--mode=eval"]) is None


@pytest.mark.slow
def test_run_py_prints_one_line_for_a_variant_the_config_rejects_and_for_bad_flags(tmp_path):
  for args, line in ((["--config=configs/mnist.py:cnnn"],
                      "bigjax: error: --config=configs/mnist.py:cnnn: ValueError: Unknown config "
                      "variant(s) ['cnnn']"),
                     ([f"--workdir={tmp_path}"], "bigjax: error: --mode=train needs --config"),
                     (["--mode=eval", f"--workdir={tmp_path}", "--step=foo"],
                      "bigjax: error: --step=foo: use latest, best, or a step number.")):
    done = subprocess.run([sys.executable, "run.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and line in done.stderr, done.stderr[-1500:]
    assert "Traceback" not in done.stderr


def test_model_sizes_must_be_positive():
  with pytest.raises(ConfigError, match=r"config.model.hidden_sizes=\(-3,\): sizes"):
    build_model(dict(name="mlp", hidden_sizes=(-3,), num_classes=10))
  with pytest.raises(ConfigError, match="config.model.num_heads=0"):
    build_model(dict(name="gpt", num_heads=0))
  build_model(dict(name="mlp", hidden_sizes=(), num_classes=1))  # a linear regression is fine


@pytest.mark.parametrize("overrides, match", [
    ({"train.num_epochs": -1}, "num_epochs=-1 trains nothing"),
    ({"train.num_epochs": 0}, "num_epochs=0 trains nothing"),
])
def test_a_run_that_would_train_nothing_is_refused(tmp_path, overrides, match):
  with pytest.raises(ConfigError, match=match):
    train.run(_digits(**overrides), str(tmp_path))


def test_workdirs_that_cannot_hold_a_run_are_refused():
  with pytest.raises(ConfigError, match="--workdir is empty"):
    train.run(_digits(), "")
  with pytest.raises(ConfigError, match="Cannot create the workdir /proc/bigjax_run"):
    train.run(_digits(), "/proc/bigjax_run")


def _npz(tmp_path, labels, n=60):
  rng = np.random.default_rng(0)
  path = tmp_path / "data.npz"
  np.savez(path, train_images=rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8),
           train_labels=labels)
  return str(path)


def test_labels_that_cannot_be_classes_are_named(tmp_path):
  one_class = _npz(tmp_path, np.zeros(60, np.int64))
  with pytest.raises(ConfigError, match="only one class"):
    train.run(_digits(**{"data.source": "arrays", "data.path": one_class}), str(tmp_path / "a"))
  negative = _npz(tmp_path, np.tile(np.arange(-1, 9), 6))
  with pytest.raises(ConfigError, match=r"negative labels \(down to -1\).*Relabel"):
    train.run(_digits(**{"data.source": "arrays", "data.path": negative}), str(tmp_path / "b"))


def test_float_labels_with_whole_values_are_regression_and_the_log_says_so(tmp_path, caplog):
  from bigjax.data import sources
  path = _npz(tmp_path, np.tile(np.arange(10.0), 6))
  with caplog.at_level("WARNING"):
    raw = sources.SOURCES.get("arrays")({"path": path, "split_seed": 0, "test_fraction": 0.2})
  assert raw.train_targets.dtype == np.float32
  assert "floats with only whole values" in caplog.text and "astype(np.int64)" in caplog.text


def test_a_file_that_is_not_npz_is_named_without_numpys_pickle_hint(tmp_path):
  path = tmp_path / "notes.npz"
  path.write_text("just text")
  with pytest.raises(ConfigError) as e:
    arrays.load(str(path))
  assert "is not a .npz file numpy can read" in str(e.value)
  assert "pickle" not in str(e.value)


def test_a_damaged_gzip_idx_file_is_named(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(b"\x00\x00\x08\x03" + b"\x00" * 4000)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(idx.IdxFormatError, match=f"{path} is a damaged gzip file"):
    idx.read_idx(str(path))


def _idx_bytes(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  return header + array.astype(np.uint8).tobytes()


def test_an_images_file_given_as_labels_is_named_not_taken_for_256_classes(tmp_path):
  images_file = _idx_bytes(np.random.default_rng(0).integers(0, 256, (20, 4, 4)))
  (tmp_path / "train-images-idx3-ubyte").write_bytes(images_file)
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(images_file)  # the wrong file
  with pytest.raises(idx.IdxFormatError, match=r"shape \(20, 4, 4\).*an images file under a "
                     "labels file's name"):
    idx.load_idx_split(str(tmp_path), "train")
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(20) % 3))
  images, labels = idx.load_idx_split(str(tmp_path), "train")
  assert images.shape == (20, 4, 4, 1) and labels.tolist() == (np.arange(20) % 3).tolist()
  # Any source: labels of the wrong shape are named before "Set num_classes=256".
  from bigjax.data import pipeline, sources
  from bigjax.training import validate
  rng = np.random.default_rng(0)
  pictures = rng.integers(0, 256, (60, 8, 8, 1), dtype=np.uint8)
  raw = sources.RawData(pictures, pictures, pictures[:10], pictures[:10], 255.0,
                        [str(i) for i in range(10)])
  config = _digits(**{"model.num_classes": 10})
  with pytest.raises(ConfigError, match=r"labels have shape \(\d+, 8, 8, 1\).*images given "
                     "as labels"):
    validate.check_data(config, pipeline.prepare(raw, config.data))


def test_a_folder_mixing_grayscale_and_colour_is_read_as_its_majority(tmp_path, caplog):
  from PIL import Image
  for name, mode, count in (("a", "RGB", 3), ("b", "L", 1)):
    os.makedirs(tmp_path / name)
    for i in range(count):
      Image.new(mode, (6, 6)).save(tmp_path / name / f"{i}.png")
  with caplog.at_level("WARNING"):
    pictures, labels, names, _ = images.load_class_folders(str(tmp_path), None, 0, False)
  assert pictures.shape == (4, 6, 6, 3) and names == ["a", "b"]
  assert "mixes 1 grayscale and 3 colour images: all are read as colour" in caplog.text


def test_an_image_too_large_to_decode_safely_is_one_line(tmp_path, monkeypatch):
  from PIL import Image
  Image.new("L", (64, 64)).save(tmp_path / "big.png")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is over 2x this: a "bomb"
  with pytest.raises(images.BadImageError, match="too large to decode safely"):
    images.decode_image(str(tmp_path / "big.png"), None, 1)


def test_class_names_with_dollar_signs_draw_as_written(tmp_path):
  from bigjax.outputs import plots
  path = plots.confusion_matrix(np.eye(3, dtype=int), ["$a", "b$c$", "^_"],
                                str(tmp_path / "cm.png"))
  assert os.path.getsize(path) > 0
  assert plots.plain("$5") == r"\$5"


@pytest.mark.slow
def test_a_diverging_loss_is_warned_about(tmp_path, caplog):
  with caplog.at_level("WARNING"):
    train.run(_digits(**{"optimizer.learning_rate": 1e6, "train.num_epochs": 1}),
              str(tmp_path))
  assert "the run is diverging" in caplog.text


@pytest.mark.slow
def test_predict_takes_images_of_another_size_and_colour(tmp_path):
  """A model trained on 8x8 grayscale digits predicts a 32x32 colour picture (resized and
  converted as its data was) the same as that picture made 8x8 grayscale by hand."""
  from PIL import Image
  from bigjax.inference import evaluate
  config = _digits(**{"train.num_epochs": 1})
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  rng = np.random.default_rng(0)
  big = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB")
  big.save(tmp_path / "big.png")
  big.convert("L").resize((8, 8), Image.BILINEAR).save(tmp_path / "small.png")
  path = evaluate.predict(config, workdir, files=[str(tmp_path / "big.png"),
                                                  str(tmp_path / "small.png")])
  rows = [line.split(",") for line in open(path).read().splitlines()[1:]]
  assert len(rows) == 2
  assert rows[0][1:] == rows[1][1:]  # same class, same probabilities


@pytest.mark.slow
def test_a_second_ctrl_c_quits_at_once_with_one_line(tmp_path):
  (tmp_path / "twice.py").write_text(
      "import os, signal\nfrom bigjax.training import hooks\n"
      "class Twice(hooks.Hook):\n"
      "  def after_step(self, run, state):\n"
      "    if run.loop.step == 20:\n"
      "      os.kill(os.getpid(), signal.SIGINT)\n"
      "      os.kill(os.getpid(), signal.SIGINT)\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO_ROOT]))
  done = subprocess.run(
      [sys.executable, "run.py", "--config=configs/digits.py", f"--workdir={tmp_path}/run",
       "--config.report.plots=False", "--config.report.html=False",
       "--config.train.steps_per_call=1", '--config.hooks=("twice:Twice",)'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert done.returncode == 130, done.stderr[-2000:]
  assert "bigjax: interrupted; nothing was saved since the last checkpoint" in done.stderr
  assert "Traceback" not in done.stderr
