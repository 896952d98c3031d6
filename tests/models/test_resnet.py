"""ResNets: published parameter counts, BatchNorm state in the train state, depth."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.core import losses
from bigjax.outputs import summary
from bigjax.models import build_model, init_variables
from bigjax.core.optimizers import build_optimizer
from bigjax.core.steps import count_params, create_train_state, make_train_step


def _init(name, shape=(1, 32, 32, 3), **fields):
  model = build_model(dict(name=name, num_classes=10, **fields))
  return model, init_variables(model, jax.random.PRNGKey(0), jnp.zeros(shape))


@pytest.mark.parametrize("name,params", [
    # He et al. 2016 (CIFAR, option A shortcuts): 0.27M, 0.46M, 0.85M; ResNet-18/34 with a
    # 3x3 stem on 32x32 images, as in the common CIFAR ports: 11.17M, 21.28M.
    ("resnet20", 269_722), ("resnet32", 464_154), ("resnet56", 853_018),
    ("resnet18", 11_173_962), ("resnet34", 21_282_122)])
def test_published_parameter_counts(name, params):
  model = build_model(dict(name=name, num_classes=10))
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), x))
  assert count_params(variables["params"]) == params


@pytest.mark.slow
@pytest.mark.parametrize("name,params,depth", [
    # torchvision's resnet50/101/152 (1000 classes): the same counts, layer for layer.
    ("resnet50", 25_557_032, 50), ("resnet101", 44_549_160, 101),
    ("resnet152", 60_192_808, 152)])
def test_bottleneck_resnets_have_torchvisions_parameter_counts(name, params, depth):
  model = build_model(dict(name=name))
  x = jnp.zeros((1, 224, 224, 3))
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), x))
  assert count_params(variables["params"]) == params
  report = summary.summarize(model, variables, x)
  assert report["trainable_params"] == params and report["depth"] == depth
  assert report["layers"][-1]["output_shape"] == [1000]


@pytest.mark.slow
def test_a_bottleneck_resnet_trains_a_step_on_small_images():
  model = build_model(dict(name="resnet", block="bottleneck", stage_sizes=(1, 1),
                           stage_features=(4, 8), num_classes=3))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  variables = init_variables(model, jax.random.PRNGKey(1), x[:1])
  assert variables["params"]["stage_1_block_0"]["conv_2"]["kernel"].shape == (1, 1, 8, 32)
  out, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out.shape == (4, 3) and bool(jnp.isfinite(out).all())
  with pytest.raises(ValueError, match='block "wide": use "basic" or "bottleneck"'):
    build_model(dict(name="resnet", block="wide")).init(jax.random.PRNGKey(0), x[:1])


def test_depth_of_resnet20_is_20_with_either_shortcut():
  for shortcut in ("padding", "projection"):
    model = build_model(dict(name="resnet20", num_classes=10, shortcut=shortcut))
    variables = jax.eval_shape(
        lambda: init_variables(model, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    report = summary.summarize(model, variables, jnp.zeros((1, 32, 32, 3)))
    assert report["depth"] == 20, shortcut
    assert report["non_trainable_params"] == count_params(variables["batch_stats"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(8, 28, 28, 1), (8, 32, 32, 3)])
def test_batch_norm_statistics_update_in_training_and_stay_fixed_in_eval(shape):
  model, variables = _init("resnet20", shape=(1,) + shape[1:])
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9})
  state = create_train_state(variables, tx, jax.random.PRNGKey(1))
  batch = {"image": jax.random.normal(jax.random.PRNGKey(2), shape) * 2 + 1,
           "label": jnp.arange(shape[0]) % 10}
  train_step = jax.jit(make_train_step(model, losses.softmax_cross_entropy, tx))
  # Eval normalises with the stored statistics, not the batch's: an example's logits do not
  # depend on what else is in the batch (in training mode they would).
  apply = lambda x, train: model.apply({"params": state.params, **state.model_state}, x,
                                       train=train, mutable=["batch_stats"] if train else False)
  np.testing.assert_allclose(apply(batch["image"], False)[:4], apply(batch["image"][:4], False),
                             rtol=1e-5, atol=1e-5)
  train_logits = lambda x: apply(x, True)[0]
  assert not np.allclose(train_logits(batch["image"])[:4], train_logits(batch["image"][:4]),
                         atol=1e-3)
  new_state, metrics = train_step(state, batch)
  old_mean = state.model_state["batch_stats"]["stem_norm"]["mean"]
  new_mean = new_state.model_state["batch_stats"]["stem_norm"]["mean"]
  assert not np.allclose(old_mean, new_mean)  # running statistics moved towards the batch's
  assert np.isfinite(float(metrics["loss"]))
  assert jax.tree.structure(new_state.model_state) == jax.tree.structure(state.model_state)


@pytest.mark.slow
def test_resnet_config_trains_checkpoints_statistics_and_evaluates_the_same(
    fashion_mnist_dir, tmp_path):
  from conftest import REPO_ROOT
  run = lambda *args: subprocess.run([sys.executable, "run.py", *args], cwd=REPO_ROOT,
                                     capture_output=True, text=True, timeout=600)
  # 3 epochs of 1,600 images (36 steps): enough to learn, and for the BatchNorm running
  # statistics (momentum 0.9) to settle, so the evaluation shows it.
  proc = run("--config=configs/fashion_mnist_resnet.py:resnet20,small", f"--workdir={tmp_path}",
             "--config.train.num_epochs=3", "--config.data.max_test_examples=500")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["num_params"] == 269_722 - 2 * 3 * 3 * 16  # a 1-channel stem: 2 fewer input channels
  # It learned: well below chance's loss (ln 10 = 2.30) and above chance's accuracy (measured
  # 1.02 and 0.618).
  assert results["test_loss"] < 1.6 and results["test_accuracy"] > 0.45, results
  # Eval mode restores params *and* BatchNorm statistics: the same test metrics exactly.
  proc = run("--mode=eval", f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.loads((tmp_path / "eval_results.json").read_text())
  assert evaluated["test"]["loss"] == results["test_loss"]
