"""A trained run predicts from its workdir alone: moved to another folder, its training data
gone, `--mode=predict` on image files (or a folder of them) gives the predictions it gave
with the data present."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bigjax import train
from bigjax.inference import evaluate as inference
from bigjax.inference import portable
from bigjax.registry import ConfigError
from bigjax.training.programs import Programs
from conftest import REPO_ROOT
from configs import fashion_mnist

pytestmark = pytest.mark.slow  # (a run trained, then predicted through run.py)


def _write_idx(path, array: np.ndarray) -> None:
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  with open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _idx_folder(root) -> str:
  """A small Fashion-MNIST-shaped IDX folder: 3 classes of bright, dark and striped images."""
  rng = np.random.default_rng(0)
  folder = os.path.join(root, "idx")
  os.makedirs(folder)
  for split, n in (("train", 300), ("t10k", 60)):
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, 28, 28))
    images[labels == 0] += 180
    images[labels == 2, :, ::4] = 255
    _write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte"), images)
    _write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte"), labels)
  return folder


def _rows(path: str) -> list[dict]:
  with open(path) as f:
    return list(csv.DictReader(f))


def test_predict_needs_only_the_workdir(tmp_path):
  from PIL import Image
  data = _idx_folder(str(tmp_path))
  config = fashion_mnist.get_config("mlp,small")
  with config.unlocked():
    config.data.update(source="idx", path=data, standardize=True)
    config.model.num_classes = 3
    config.train.num_epochs = 2
    config.report.update(plots=False, html=False, tensorboard=False)
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  spec = portable.read_spec(workdir)
  assert spec["input_shape"] == [28, 28, 1] and spec["class_names"] == ["0", "1", "2"]
  assert spec["task"] == "classification" and len(spec["mean"]) == 1  # standardised

  # The test images as PNG files, in a folder with a subfolder.
  programs = Programs(config)
  pictures = tmp_path / "pictures"
  os.makedirs(pictures / "more")
  raw = (programs.data.test.inputs[:6, ..., 0] * programs.data.stats["std"][0]
         + programs.data.stats["mean"][0])  # in [0, 1], as the run read them
  files = []
  for i in range(6):
    files.append(str(pictures / ("more" if i >= 4 else "") / f"item{i}.png"))
    Image.fromarray(np.rint(raw[i] * 255).astype(np.uint8)).save(files[-1])

  # With the data present, the portable model gives Programs' probabilities.
  predictor = portable.load(workdir, config)
  prepared = predictor.prepare(raw[..., None])
  np.testing.assert_allclose(prepared, programs.data.test.inputs[:6], atol=1e-5)
  state = inference.restore(config, workdir)[1]
  np.testing.assert_allclose(predictor.probabilities(prepared),
                             programs.probabilities(state, prepared), atol=1e-6)
  before = _rows(inference.predict(config, workdir, files=files))

  # Moved, the data deleted: run.py predicts on the folder from the workdir alone.
  moved = str(tmp_path / "elsewhere" / "run")
  shutil.move(workdir, moved)
  shutil.rmtree(data)
  proc = subprocess.run([sys.executable, "run.py", "--mode=predict", f"--workdir={moved}",
                         "--compilation_cache=", str(pictures)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = _rows(os.path.join(moved, "predictions_files.csv"))
  assert sorted(r["file"] for r in after) == sorted(files)
  by_file = {r["file"]: r for r in after}
  for row in before:
    assert by_file[row["file"]] == row
  assert "IDX data folder" not in proc.stderr
  other = fashion_mnist.get_config("mlp2,small")  # another model than the run's
  with other.unlocked():
    other.model.num_classes = 3
  with pytest.raises(ConfigError, match=r"does not fit the model its config builds \("):
    portable.load(moved, other)


def test_a_run_without_an_inference_record_is_named(tmp_path):
  with pytest.raises(ConfigError, match="inference.json does not exist"):
    portable.read_spec(str(tmp_path))
