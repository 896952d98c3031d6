"""The depth and parameter report (bigjax.outputs.summary, run.py --mode=summary)."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from bigjax.outputs import summary
from bigjax.models import build_model, init_variables
from configs import mnist

from conftest import REPO_ROOT


def _report(variant):
  model = build_model(mnist.get_config(variant).model)
  x = jnp.zeros((1, 28, 28, 1))
  return summary.summarize(model, init_variables(model, jax.random.PRNGKey(0), x), x)


@pytest.mark.parametrize("variant,params,depth", [
    ("mlp", 101_770, 2), ("mlp2", 109_386, 3), ("mlp3", 242_762, 4), ("cnn", 121_930, 4)])
def test_lesson_models_counts_and_depth(variant, params, depth):
  report = _report(variant)
  assert report["trainable_params"] == params
  assert sum(layer["trainable"] for layer in report["layers"]) == params
  assert report["depth"] == depth and report["non_trainable_params"] == 0
  assert report["param_bytes"] == 4 * params


def test_dense_layer_rows_by_formula():
  layers = {layer["path"]: layer for layer in _report("mlp")["layers"]}
  dense = layers["dense_0"]
  assert (dense["type"], dense["input_shape"], dense["output_shape"]) == ("dense", [784], [128])
  assert (dense["weights"], dense["biases"]) == (784 * 128, 128)
  assert dense["flops_per_example"] == 2 * 784 * 128 + 128
  assert layers["head"]["flops_per_example"] == 2 * 128 * 10 + 10
  # Parameter-free layers are listed, with 0 parameters.
  assert [layer["type"] for layer in _report("mlp")["layers"]] == [
      "flatten", "dense", "activation", "dense"]


def test_conv_layer_flops_by_formula():
  layers = {layer["path"]: layer for layer in _report("cnn")["layers"]}
  conv = layers["conv_1"]
  assert conv["input_shape"] == [13, 13, 32] and conv["output_shape"] == [11, 11, 64]
  assert conv["flops_per_example"] == 2 * 3 * 3 * 32 * 11 * 11 * 64 + 11 * 11 * 64
  assert layers["MaxPool_0"]["type"] == "pooling" and layers["MaxPool_0"]["trainable"] == 0


def test_non_trainable_state_is_reported_apart():
  class Normed(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.Dense(8)(x.reshape(x.shape[0], -1))
      x = nn.BatchNorm(use_running_average=not train)(x)
      return nn.Dense(3, name="head")(x)

  x = jnp.zeros((2, 4, 4, 1))
  variables = Normed().init(jax.random.PRNGKey(0), x)
  report = summary.summarize(Normed(), dict(variables), x)
  norm = report["by_type"]["normalisation"]
  assert norm == {"layers": 1, "trainable": 16, "non_trainable": 16, "flops_per_example": 16}
  assert report["non_trainable_params"] == 16 and report["depth"] == 2
  assert report["trainable_params"] == 16 * 8 + 8 + 16 + 8 * 3 + 3


@pytest.mark.slow
def test_run_py_summary_writes_files_without_training(tmp_path):
  proc = subprocess.run([sys.executable, "run.py", "--config=configs/digits.py:cnn",
                         "--mode=summary", f"--workdir={tmp_path}"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "summary.json").read_text())
  assert report["input_shape"] == [8, 8, 1] and report["depth"] >= 3
  assert "| layer type |" in (tmp_path / "summary.md").read_text()
  assert "| conv_0 | conv |" in proc.stdout
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_side_by_side_comparison_command(tmp_path):
  out = tmp_path / "compare.md"
  proc = subprocess.run([sys.executable, "-m", "bigjax.outputs.summary", "configs/digits.py",
                         "configs/digits.py:cnn", f"--out={out}"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  header, _, *rows = out.read_text().splitlines()
  assert header == "| | configs/digits.py | configs/digits.py:cnn |"
  trainable = rows[0].split("|")
  assert trainable[1].strip() == "trainable parameters"
  assert int(trainable[2].replace(",", "")) == 64 * 128 + 128 + 128 * 10 + 10


def test_vit_reports_attention_as_one_layer_and_every_parameter():
  model = build_model(dict(name="vit", patch_size=4, hidden_size=32, depth=2, num_heads=4,
                           mlp_ratio=2.0, num_classes=10))
  x = jnp.zeros((1, 28, 28, 1))
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), x))
  report = summary.summarize(model, variables, x)
  assert sum(layer["trainable"] for layer in report["layers"]) == report["trainable_params"]
  attention = [layer for layer in report["layers"] if layer["type"] == "attention"]
  n, d = 7 * 7 + 1, 32  # 49 patches and the class token
  assert len(attention) == 2 and attention[0]["trainable"] == 4 * (d * d + d)
  assert attention[0]["flops_per_example"] == 8 * n * d * d + 4 * n * n * d
  # patch embedding + 2 x (attention + 2 MLP dense) + head
  assert report["depth"] == 1 + 2 * 3 + 1
  assert report["layers"][0]["path"] == "(top level) class_token, position_embedding"


def test_gpt_reports_attention_mlp_and_norm_parameters_per_block():
  d, ratio, vocab, n = 32, 4, 256, 16
  model = build_model(dict(name="gpt", vocab_size=vocab, context_length=n, hidden_size=d,
                           depth=2, num_heads=4, mlp_ratio=float(ratio), positions="learned",
                           norm="layer", tie_embeddings=True))
  x = jnp.zeros((1, n), jnp.int32)
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), x))
  report = summary.summarize(model, variables, x)
  assert sum(layer["trainable"] for layer in report["layers"]) == report["trainable_params"]
  attention = 4 * (d * d + d)                              # q, k, v and output projections
  mlp = (d * ratio * d + ratio * d) + (ratio * d * d + d)  # mlp_in, mlp_out
  norms = 2 * 2 * d                                        # two LayerNorms: scale, bias
  assert [b["block"] for b in report["blocks"]] == ["block_0", "block_1"]
  for block in report["blocks"]:
    assert block["by_type"] == {"attention": attention, "dense": mlp, "normalisation": norms}
    assert block["trainable"] == attention + mlp + norms
  assert report["by_type"]["embedding"]["trainable"] == vocab * d + n * d  # tokens, positions
  markdown = summary.to_markdown(report)
  assert (f"| block_1 | {mlp:,} | {norms:,} | {attention:,} | {attention + mlp + norms:,} |"
          in markdown)


@pytest.mark.parametrize("spec", ["fashion_mnist.py:cnn", "lm_tiny.py:small",
                                  "cifar10_vit.py:small", "cats_vs_dogs.py:small"])
def test_the_input_spec_from_the_config_is_the_datas(spec, tmp_path):
  """What --mode=summary builds the model on, read from the config and the dataset's
  metadata, is exactly one example of the data (shape and dtype), for each kind of source."""
  import os
  import numpy as np
  import tensorflow_datasets as tfds
  from bigjax import data as data_lib
  from bigjax.data import spec as spec_lib
  config = summary.load_config_file(os.path.join(REPO_ROOT, "configs", spec))
  if config.data.source == "idx" and not os.path.isdir(config.data.path):
    pytest.skip(f"{config.data.path} is not installed")
  if config.data.source == "text" and not os.path.exists(config.data.path):
    pytest.skip(f"{config.data.path} is not installed (apt-get install fortunes)")
  example = spec_lib.example_input(config.data)
  assert example is not None
  with tfds.testing.mock_data(num_examples=8, data_dir=str(tmp_path)):
    data = data_lib.load(config.data)
  first = np.asarray(data.train.inputs[:1])
  assert (example.shape, example.dtype) == (first.shape, first.dtype)


def test_summary_of_a_tfds_config_runs_offline_without_the_dataset(tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "no_data"))
  proc = subprocess.run([sys.executable, "run.py", "--config=configs/mnist.py",
                         "--mode=summary", f"--workdir={tmp_path}", "--compilation_cache="],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "101,770" in proc.stdout  # 784-128-10


def test_a_tied_output_head_counts_its_flops_but_no_parameters():
  """GPT's head is the token embedding transposed: 2 x D x V FLOPs per position, as for an
  untied head of the same shape, with no parameters of its own."""
  d, vocab, n = 32, 256, 16
  reports = {}
  for tied in (True, False):
    model = build_model(dict(name="gpt", vocab_size=vocab, context_length=n, hidden_size=d,
                             depth=1, num_heads=4, mlp_ratio=4.0, positions="learned",
                             norm="layer", tie_embeddings=tied))
    x = jnp.zeros((1, n), jnp.int32)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), x))
    reports[tied] = summary.summarize(model, variables, x)
  head = [layer for layer in reports[True]["layers"] if "tied head" in layer["path"]]
  assert len(head) == 1 and head[0]["trainable"] == 0
  assert head[0]["flops_per_example"] == 2 * d * vocab * n
  untied = [layer for layer in reports[False]["layers"] if layer["path"] == "head"][0]
  bias_adds = untied["flops_per_example"] - 2 * d * vocab * n  # 0 without a bias
  assert reports[True]["flops_per_example"] == (reports[False]["flops_per_example"]
                                                - bias_adds)
  assert reports[True]["depth"] == reports[False]["depth"] - 1  # (the tied head: not counted)
