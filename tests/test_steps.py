import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import metrics
from bigjax.losses import LOSSES
from bigjax.models import build_model, init_variables
from bigjax.optimizers import build_optimizer
from bigjax.steps import create_train_state, make_eval_step, make_train_step
from configs import mnist


def _setup(variant="mlp", batch=16, seed=0):
  config = mnist.get_config(variant)
  model = build_model(config.model)
  tx = build_optimizer(config.optimizer)
  loss_fn = LOSSES.get("softmax_cross_entropy")
  x = jax.random.uniform(jax.random.PRNGKey(seed), (batch, 28, 28, 1))
  y = jax.random.randint(jax.random.PRNGKey(seed + 1), (batch,), 0, 10)
  variables = init_variables(model, jax.random.PRNGKey(42), x[:1])
  state = create_train_state(variables, tx, jax.random.PRNGKey(7))
  return model, tx, loss_fn, state, {"image": x, "label": y}


@pytest.mark.parametrize("variant", ["mlp", "cnn"])
def test_one_train_step_lowers_the_loss_on_a_fixed_batch(variant):
  model, tx, loss_fn, state, batch = _setup(variant)
  train_step = jax.jit(make_train_step(model, loss_fn, tx))
  eval_step = jax.jit(make_eval_step(model, loss_fn))
  before = metrics.finalize(eval_step(state, batch))["loss"]
  state, step_metrics = train_step(state, batch)
  after = metrics.finalize(eval_step(state, batch))["loss"]
  assert float(step_metrics["loss"]) == pytest.approx(before, rel=1e-5)  # no dropout here
  assert after < before - 1e-3
  assert int(state.step) == 1


def test_train_step_is_traced_once_over_many_steps():
  model, tx, loss_fn, state, batch = _setup()
  step_fn = jax.jit(chex.assert_max_traces(make_train_step(model, loss_fn, tx), n=1))
  for i in range(5):
    shifted = {"image": batch["image"] * (1 + i / 10), "label": batch["label"]}
    state, _ = step_fn(state, shifted)
  assert int(state.step) == 5


def test_eval_step_is_traced_once_over_many_batches():
  model, _, loss_fn, state, batch = _setup()
  eval_fn = jax.jit(chex.assert_max_traces(make_eval_step(model, loss_fn), n=1))
  for i in range(3):
    eval_fn(state, {**batch, "mask": jnp.ones(16) * (i > 0)})


def test_jit_and_no_jit_agree():
  model, tx, loss_fn, state, batch = _setup("cnn")
  train_step = make_train_step(model, loss_fn, tx)
  s_jit, m_jit = jax.jit(train_step)(state, batch)
  s_eager, m_eager = train_step(state, batch)
  np.testing.assert_allclose(m_jit["loss"], m_eager["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               s_jit.params, s_eager.params)


def test_eval_masks_padding_exactly():
  model, _, loss_fn, state, batch = _setup(batch=10)
  eval_step = jax.jit(make_eval_step(model, loss_fn))
  real = metrics.finalize(eval_step(state, {k: v[:7] for k, v in batch.items()}))
  mask = jnp.array([1.0] * 7 + [0.0] * 3)
  padded = metrics.finalize(eval_step(state, {**batch, "mask": mask}))
  unmasked = metrics.finalize(eval_step(state, batch))
  assert padded["count"] == 7 and unmasked["count"] == 10
  assert unmasked["loss"] != pytest.approx(real["loss"])  # the padding would change it
  assert padded["loss"] == pytest.approx(real["loss"], rel=1e-6)
  assert padded["accuracy"] == pytest.approx(real["accuracy"])


def test_dropout_rng_changes_each_step_and_is_reproducible():
  config = mnist.get_config("mlp")
  model = build_model(dict(config.model, dropout_rate=0.5))
  tx = build_optimizer(dict(name="sgd", learning_rate=0.0))
  loss_fn = LOSSES.get("softmax_cross_entropy")
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1))
  batch = {"image": x, "label": jnp.zeros(8, jnp.int32)}
  state = create_train_state(init_variables(model, jax.random.PRNGKey(0), x[:1]), tx,
                             jax.random.PRNGKey(3))
  step = jax.jit(make_train_step(model, loss_fn, tx))
  s1, m1 = step(state, batch)
  _, m2 = step(s1, batch)   # same params (lr 0), next step's dropout mask
  _, m1_again = step(state, batch)
  assert float(m1["loss"]) != float(m2["loss"])
  assert float(m1["loss"]) == float(m1_again["loss"])


def test_loss_with_wrong_shape_fails_at_trace_with_expected_shape():
  model, tx, _, state, batch = _setup()
  bad_loss = lambda logits, batch: jnp.mean(logits)
  with pytest.raises(ValueError, match=r"returned shape \(\).*shape \(16,\)"):
    jax.jit(make_train_step(model, bad_loss, tx))(state, batch)


def test_scan_of_k_steps_equals_k_separate_steps():
  from bigjax.steps import gather_batch, scan_steps
  model, tx, loss_fn, state, batch = _setup("mlp", batch=64)
  train_step = make_train_step(model, loss_fn, tx)
  on_indices = lambda s, x, y, i: train_step(s, gather_batch(x, y, i))
  indices = jax.random.randint(jax.random.PRNGKey(3), (5, 16), 0, 64)
  one = jax.jit(on_indices)
  separate, losses = state, []
  for i in range(5):
    separate, m = one(separate, batch["image"], batch["label"], indices[i])
    losses.append(float(m["loss"]))
  scanned, stacked = jax.jit(scan_steps(on_indices))(state, batch["image"], batch["label"],
                                                     indices)
  assert int(scanned.step) == 5 and stacked["loss"].shape == (5,)
  np.testing.assert_allclose(stacked["loss"], losses, rtol=1e-6)
  chex.assert_trees_all_close(scanned.params, separate.params, rtol=1e-6, atol=1e-7)
