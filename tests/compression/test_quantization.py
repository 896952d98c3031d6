"""Post-training int8 quantization with qwix: what each mode quantizes, what it leaves in
float (named), the bytes it saves, the accuracy it keeps, and the files it exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigjax import train
from bigjax.compression import quantization
from bigjax.inference import export, portable
from bigjax.registry import ConfigError
from bigjax.training.programs import Programs
from conftest import REPO_ROOT
from configs import digits

pytestmark = [pytest.mark.slow,  # (a CNN trained, then quantized three ways)
              pytest.mark.filterwarnings("ignore:.VariableState. was removed")]  # (qwix)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cnn"))
  config = digits.get_config("cnn")
  with config.unlocked():
    config.train.num_epochs = 4
    config.report.update(plots=False, html=False, tensorboard=False)
  train.run(config, workdir)
  programs = Programs(config)
  test = (np.asarray(programs.data.test.inputs), np.asarray(programs.data.test.targets))
  return config, workdir, portable.load(workdir, config), programs, test


@pytest.mark.parametrize("mode", quantization.MODES)
def test_int8_keeps_the_accuracy_at_a_fraction_of_the_bytes(cnn, mode):
  config, workdir, predictor, programs, (images, labels) = cnn
  calibration = quantization.calibration_inputs(programs, 256)
  quantized, in_float = quantization.quantize(predictor, mode, calibration)
  before = quantization.score(predictor, images, labels)
  after = quantization.score(quantized, images, labels)
  assert before.accuracy > 0.85  # a model worth quantizing
  assert abs(after.accuracy - before.accuracy) <= 0.02  # 7 of 359 test images at most
  outputs, float_outputs = quantized.outputs(images[:64]), predictor.outputs(images[:64])
  assert 0 < np.max(np.abs(outputs - float_outputs)) < 0.25 * np.max(np.abs(float_outputs))
  size = quantization.param_bytes(quantized.variables["params"])
  float_size = quantization.param_bytes(predictor.variables["params"])
  if mode == "weights":  # matmuls only: the two convolutions stay float, and are named
    assert in_float == ["['conv_0']['kernel']", "['conv_1']['kernel']"]
    assert size < float_size
  else:
    assert in_float == [] and size < 0.3 * float_size
  leaves = jax.tree_util.tree_leaves_with_path(quantized.variables["params"])
  has_activation_scales = any("lhs_scale" in jax.tree_util.keystr(p) for p, _ in leaves)
  assert has_activation_scales == (mode == "static")  # fixed scales only when calibrated


def test_static_needs_calibration_and_modes_are_named(cnn):
  predictor = cnn[2]
  with pytest.raises(ConfigError, match="calibrates activation scales"):
    quantization.quantize(predictor, "static", None)
  with pytest.raises(ConfigError, match="use one of weights, dynamic, static"):
    quantization.quantize(predictor, "int4", None)


def test_quantize_mode_and_a_quantized_export_through_run_py(cnn, tmp_path):
  config, workdir, predictor, _, (images, _) = cnn
  run = lambda *args: subprocess.run(
      [sys.executable, "run.py", f"--workdir={workdir}", "--compilation_cache=", *args],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  proc = run("--mode=quantize", "--quantize=dynamic")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, "quantized_dynamic.json")))
  assert results["test"]["float"]["count"] == len(images)
  assert results["param_bytes"]["int8"] < 0.3 * results["param_bytes"]["float"]
  assert "test: accuracy" in proc.stderr and "int8 (dynamic)" in proc.stderr
  proc = run("--mode=eval", "--quantize=weights")  # eval of the int8 model: the same report
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.exists(os.path.join(workdir, "quantized_weights.json"))
  proc = run("--mode=export", "--quantize=dynamic", f"--export_dir={tmp_path / 'int8'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  float_dir = export.export(config, workdir, out_dir=str(tmp_path / "float"), onnx=False)
  int8_size = os.path.getsize(tmp_path / "int8" / "model.jax")
  assert int8_size < 0.5 * os.path.getsize(os.path.join(float_dir, "model.jax"))
  assert not (tmp_path / "int8" / "model.onnx").exists()
  model = jax.export.deserialize(bytearray((tmp_path / "int8" / "model.jax").read_bytes()))
  quantized, _ = quantization.quantize(predictor, "dynamic")
  np.testing.assert_allclose(np.asarray(model.call(images[:5])), quantized.outputs(images[:5]),
                             atol=1e-5)


def _qat(workdir, variant, mode):
  config = digits.get_config(variant)
  with config.unlocked():
    config.train.num_epochs = 4
    config.quantize.aware = mode
    config.report.update(plots=False, html=False, tensorboard=False)
  return config, train.run(config, workdir)


def test_quantization_aware_training_then_int8_keeps_the_trained_accuracy(tmp_path, caplog):
  config, results = _qat(str(tmp_path / "dynamic"), "cnn", "dynamic")
  assert results["test_accuracy"] > 0.85
  _, in_float = _qat(str(tmp_path / "float"), "cnn", "")
  assert in_float["test_loss"] != results["test_loss"]  # int8 rounding in the forward pass
  scored = quantization.evaluate(config, str(tmp_path / "dynamic"), "dynamic")
  assert abs(scored["test"]["int8"]["accuracy"] - results["test_accuracy"]) <= 0.01
  # Static scales learnt during training (an MLP: qwix trains them through matmuls) are the
  # ones the conversion uses: no calibration pass.
  config, results = _qat(str(tmp_path / "static"), None, "static")
  with caplog.at_level("INFO"):
    scored = quantization.evaluate(config, str(tmp_path / "static"), "static")
  assert "static scales from the run's quantization-aware training" in caplog.text
  assert abs(scored["test"]["int8"]["accuracy"] - results["test_accuracy"]) <= 0.01
  with pytest.raises(ConfigError, match="qwix cannot train static activation scales"):
    _qat(str(tmp_path / "static_cnn"), "cnn", "static")
