"""--mode=export: StableHLO that another process runs with jax alone (no bigjax, no Flax),
at any batch size; ONNX that onnxruntime runs to the same outputs; a folder never half
written; one line for what cannot be exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bigjax import train
from bigjax.inference import export, portable
from bigjax.registry import ConfigError
from bigjax.training.programs import Programs
from conftest import REPO_ROOT
from configs import digits

pytestmark = pytest.mark.slow  # (a run trained and exported through run.py)

# Runs in a fresh interpreter in which bigjax and Flax cannot be imported.
WITHOUT_BIGJAX = """
import sys
sys.modules["bigjax"] = sys.modules["flax"] = None
import json, runpy
import jax, numpy as np
folder, inputs_path = sys.argv[1], sys.argv[2]
model = jax.export.deserialize(bytearray(open(folder + "/model.jax", "rb").read()))
inputs = np.load(inputs_path)
out = {"one": np.asarray(model.call(inputs[:1])).tolist(),
       "seven": np.asarray(model.call(inputs[:7])).tolist()}
print("OUT " + json.dumps(out))
sys.argv = ["predict.py", *sys.argv[3:]]
runpy.run_path(folder + "/predict.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = digits.get_config()
  with config.unlocked():
    config.train.num_epochs = 3
    config.data.standardize = True
    config.report.update(plots=False, html=False, tensorboard=False)
  train.run(config, workdir)
  proc = subprocess.run([sys.executable, "run.py", "--mode=export", f"--workdir={workdir}",
                         "--compilation_cache="], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return config, workdir


def test_the_export_runs_with_jax_alone_at_any_batch_size(exported, tmp_path):
  from PIL import Image
  config, workdir = exported
  folder = os.path.join(workdir, "export")
  assert sorted(os.listdir(folder)) == ["README.md", "inference.json", "model.jax",
                                        "model.onnx", "predict.py"]
  programs = Programs(config)
  inputs = np.asarray(programs.data.test.inputs[:7])
  np.save(tmp_path / "inputs.npy", inputs)
  predictor = portable.load(workdir, config)
  expected = predictor.outputs(inputs)
  png = str(tmp_path / "first.png")
  stats = programs.data.stats
  pixels = inputs[0, ..., 0] * stats["std"][0] + stats["mean"][0]
  Image.fromarray(np.rint(pixels * 255).clip(0, 255).astype(np.uint8)).save(png)
  proc = subprocess.run([sys.executable, "-c", WITHOUT_BIGJAX, folder,
                         str(tmp_path / "inputs.npy"), png], capture_output=True, text=True,
                        timeout=300, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("OUT "))[4:])
  np.testing.assert_allclose(out["one"], expected[:1], atol=1e-5)
  np.testing.assert_allclose(out["seven"], expected, atol=1e-5)
  names = predictor.class_names
  assert f"first.png: {names[expected[0].argmax()]} (" in proc.stdout  # predict.py agrees
  spec = json.load(open(os.path.join(folder, "inference.json")))
  assert spec["input_shape"] == [8, 8, 1] and spec["class_names"] == names and "mean" in spec


def test_the_onnx_model_gives_jaxs_outputs_in_onnxruntime(exported):
  import onnxruntime
  config, workdir = exported
  inputs = np.asarray(Programs(config).data.test.inputs[:50])
  session = onnxruntime.InferenceSession(os.path.join(workdir, "export", "model.onnx"),
                                         providers=["CPUExecutionProvider"])
  got = session.run(None, {session.get_inputs()[0].name: inputs})[0]
  expected = portable.load(workdir, config).outputs(inputs)
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_a_failed_export_leaves_the_last_one_whole_and_names_the_op(exported, monkeypatch):
  import jax2onnx
  config, workdir = exported
  folder = os.path.join(workdir, "export")
  before = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}

  def cannot(*args, **kwargs):
    raise NotImplementedError("No ONNX handler for primitive 'erf_inv' in plugin registry")

  monkeypatch.setattr(jax2onnx, "to_onnx", cannot)
  with pytest.raises(ConfigError, match=r"jax2onnx cannot convert the op erf_inv .*"
                     r"--onnx=False"):
    export.export(config, workdir)
  after = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
  assert after == before
  assert not [p for p in os.listdir(workdir) if "partial" in p]
  # Without ONNX the export is written (model.jax alone), replacing the old folder.
  export.export(config, workdir, onnx=False)
  assert "model.onnx" not in os.listdir(folder) and "model.jax" in os.listdir(folder)
