"""Magnitude pruning: Zhu & Gupta's schedule, exact sparsity per layer or globally, pruned
weights that stay zero under a momentum optimizer, masks that survive a resume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import train
from bigjax.compression import pruning
from bigjax.registry import ConfigError
from bigjax.training import checkpoint
from configs import digits


def _config(**prune):
  return dict({"sparsity": 0.8, "scope": "layer", "include": "kernel", "initial_sparsity": 0.0,
               "start_step": 0, "end_step": 40, "every_steps": 10}, **prune)


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=(30,)), jnp.float32)},
          "head": {"kernel": jnp.asarray(0.01 * rng.normal(size=(30, 10)), jnp.float32)}}


def test_the_schedule_is_zhu_and_gupta_cubic():
  sparsity_at, (start, end, every) = pruning.schedule(
      _config(initial_sparsity=0.1, start_step=100, end_step=500), 1000)
  for step in (100, 200, 300, 500, 900):
    progress = min(max((step - 100) / 400, 0.0), 1.0)
    expected = 0.8 + (0.1 - 0.8) * (1 - progress) ** 3
    assert float(sparsity_at(step)) == pytest.approx(expected, abs=1e-6)
  assert (start, end, every) == (100, 500, 10)
  assert pruning.schedule(_config(end_step=-1), 1000)[1][1] == 750  # 75% of the steps


def test_pruned_weights_stay_zero_under_adam_at_exactly_the_sparsity():
  params = _params()
  tx = pruning.wrap(optax.adam(1e-2), _config(), 100, params)
  state = tx.init(params)
  rng = np.random.default_rng(1)
  step = jax.jit(tx.update)
  zero_sets = []
  for i in range(60):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    zero_sets.append(np.asarray(params["dense"]["kernel"]) == 0)
  kernel, head = np.asarray(params["dense"]["kernel"]), np.asarray(params["head"]["kernel"])
  assert (kernel == 0).sum() == int(0.8 * kernel.size)  # per layer, exactly
  assert (head == 0).sum() == int(0.8 * head.size)
  assert (np.asarray(params["dense"]["bias"]) != 0).all()  # biases are not pruned
  for later in zero_sets[41:]:  # after the last mask update (step 40), the zeros stay zeros
    assert (later == zero_sets[40]).all()
  assert not (zero_sets[9] & ~zero_sets[0]).all()  # gradual: more zeros as the steps go
  assert zero_sets[5].sum() < zero_sets[25].sum() < zero_sets[45].sum()


def test_global_scope_prunes_the_small_weights_wherever_they_are():
  params = _params()  # the head's weights are 100x smaller than the dense layer's
  masks = pruning.new_masks(params, pruning.targets(params, "kernel"), 0.5, "global")
  assert float(masks["head"]["kernel"].mean()) == 0.0  # all of the small layer pruned
  assert masks["dense"]["bias"] == ()
  layer = pruning.new_masks(params, pruning.targets(params, "kernel"), 0.5, "layer")
  assert float(layer["head"]["kernel"].mean()) == 0.5


def test_bad_pruning_settings_are_one_line():
  params = _params()
  with pytest.raises(ConfigError, match="matches no kernel"):
    pruning.wrap(optax.sgd(0.1), _config(include="^nothing$"), 100, params)
  with pytest.raises(ConfigError, match="sparsity=1.5"):
    pruning.wrap(optax.sgd(0.1), _config(sparsity=1.5), 100, params)
  with pytest.raises(ConfigError, match='scope="row"'):
    pruning.wrap(optax.sgd(0.1), _config(scope="row"), 100, params)


def _digits(steps, **prune):
  config = digits.get_config()
  with config.unlocked():
    config.train.num_steps = steps
    config.report.update(plots=False, html=False, tensorboard=False)
    config.prune.update({"sparsity": 0.8, "end_step": 80, "every_steps": 10, "scope": "layer",
                         **prune})
  return config


@pytest.mark.slow
def test_a_pruned_run_resumes_with_its_masks_bit_for_bit(tmp_path):
  straight = train.run(_digits(160), str(tmp_path / "straight"))
  layers = straight["pruning"]["layers"]
  assert layers["dense_0/kernel"]["nonzero"] == 8192 - int(0.8 * 8192)
  assert layers["head/kernel"]["nonzero"] == 1280 - int(0.8 * 1280)
  assert straight["test_accuracy"] > 0.8  # 80% sparse and still a working classifier
  from bigjax.outputs import summary  # --mode=summary of the run: non-zero per layer
  report = summary.report_for_run(_digits(160), str(tmp_path / "straight"))
  by_path = {layer["path"]: layer for layer in report["layers"]}
  _, params = checkpoint.latest_params(str(tmp_path / "straight"))
  bias_nonzero = int(np.count_nonzero(params["dense_0"]["bias"]))  # (a dead unit's stays 0)
  assert by_path["dense_0"]["nonzero"] == 8192 - int(0.8 * 8192) + bias_nonzero
  assert report["nonzero_params"] == straight["pruning"]["nonzero_params"]
  assert "non-zero |" in summary.to_markdown(report)
  train.run(_digits(50), str(tmp_path / "resumed"))  # stopped mid-schedule, then resumed
  resumed = train.run(_digits(160), str(tmp_path / "resumed"))
  assert resumed["resumed_from_step"] == 50
  _, a = checkpoint.latest_params(str(tmp_path / "straight"))
  _, b = checkpoint.latest_params(str(tmp_path / "resumed"))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert resumed["test_accuracy"] == straight["test_accuracy"]
