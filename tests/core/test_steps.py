import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.core import metrics
from bigjax.core.losses import LOSSES
from bigjax.models import build_model, init_variables
from bigjax.core.optimizers import build_optimizer
from bigjax.core.steps import create_train_state, make_eval_step, make_train_step
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_scan_of_k_steps_equals_k_separate_steps():
  from bigjax.core.steps import gather_batch, scan_steps
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


# ---------------------------------------------------------------- gradient scale, plain SGD
# Adam ignores a gradient's scale and clipping rescales it, so the step's division by the
# batch's total weight is checked under plain SGD with no clipping: the update must be
# exactly -lr * grad(weighted mean loss), computed here independently of bigjax.core.steps.

LR = 0.5


def _tiny_mlp(batch=16):
  model = build_model(dict(name="mlp", hidden_sizes=(8,), activation="relu",
                           dropout_rate=0.0, num_classes=3))
  x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 4, 4, 1))
  y = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, 3)
  params = init_variables(model, jax.random.PRNGKey(2), x[:1])["params"]
  return model, params, {"image": x, "label": y}


def _sgd_step(model, params, batch, grad_accum_steps=1):
  tx = build_optimizer({"name": "sgd", "learning_rate": LR})
  state = create_train_state({"params": params}, tx, jax.random.PRNGKey(0))
  loss_fn = LOSSES.get("softmax_cross_entropy")
  return jax.jit(make_train_step(model, loss_fn, tx, grad_accum_steps))(state, batch)


def _reference_sgd(model, params, batch, weights):
  """-lr * grad of sum(w * loss) / sum(w), by hand: log-softmax, picked label, mean."""
  def weighted_mean_loss(p):
    logits = model.apply({"params": p}, batch["image"])
    per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits),
                                       batch["label"][:, None], axis=1)[:, 0]
    return (per_example * weights).sum() / weights.sum()
  loss, grads = jax.value_and_grad(weighted_mean_loss)(params)
  return jax.tree.map(lambda p, g: p - LR * g, params, grads), loss


def _assert_params_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)


def _largest_difference(a, b):
  return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a),
                                                          jax.tree.leaves(b)))


@pytest.mark.parametrize("grad_accum_steps", [1, 2, 4])
def test_sgd_update_is_minus_lr_times_the_weighted_mean_gradient(grad_accum_steps):
  model, params, batch = _tiny_mlp()
  mask = jnp.array([1.0] * 10 + [0.0] * 6)  # padding spread unevenly over micro-batches
  weight = jnp.linspace(0.5, 2.0, 16)
  batch = dict(batch, mask=mask, weight=weight)
  state, step_metrics = _sgd_step(model, params, batch, grad_accum_steps)
  expected, loss = _reference_sgd(model, params, batch, mask * weight)
  _assert_params_close(state.params, expected)
  assert float(step_metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
  # The check can fail: dividing by the padded batch size (16) instead of the total weight
  # (about 11.7 here) gives an update 27% smaller, far outside the tolerance.
  total = float((mask * weight).sum())
  wrong_scale = jax.tree.map(lambda p, e: p + (e - p) * total / 16, params, expected)
  assert _largest_difference(wrong_scale, expected) > 100 * _largest_difference(
      state.params, expected)


def test_sgd_padding_is_the_same_as_leaving_the_examples_out():
  model, params, batch = _tiny_mlp()
  padded, _ = _sgd_step(model, params, dict(batch, mask=jnp.array([1.0] * 12 + [0.0] * 4)))
  trimmed, _ = _sgd_step(model, params, jax.tree.map(lambda x: x[:12], batch))
  unmasked, _ = _sgd_step(model, params, batch)
  _assert_params_close(padded.params, trimmed.params)
  assert _largest_difference(unmasked.params, trimmed.params) > 1e-3  # padding would show


def test_sgd_weight_of_two_is_the_same_as_showing_an_example_twice():
  model, params, batch = _tiny_mlp()
  doubled, _ = _sgd_step(model, params, dict(batch, weight=jnp.array([2.0] + [1.0] * 15)))
  repeated, _ = _sgd_step(model, params, jax.tree.map(lambda x: jnp.concatenate([x[:1], x]),
                                                      batch))
  plain, _ = _sgd_step(model, params, batch)
  _assert_params_close(doubled.params, repeated.params)
  assert _largest_difference(plain.params, repeated.params) > 1e-4


@pytest.mark.parametrize("grad_accum_steps", [2, 4])
def test_sgd_accumulated_micro_batches_equal_one_big_batch(grad_accum_steps):
  model, params, batch = _tiny_mlp()
  batch = dict(batch, mask=jnp.array([1.0] * 10 + [0.0] * 6))
  big, big_metrics = _sgd_step(model, params, batch)
  small, small_metrics = _sgd_step(model, params, batch, grad_accum_steps)
  _assert_params_close(small.params, big.params)
  assert float(small_metrics["loss"]) == pytest.approx(float(big_metrics["loss"]), rel=1e-6)
  assert float(small_metrics["accuracy"]) == pytest.approx(float(big_metrics["accuracy"]))


def test_multi_label_accuracy_is_subset_accuracy_of_thresholded_outputs():
  """With a multi-label loss, a prediction with every class right scores 1, not 1/k."""
  loss_fn = LOSSES.get("sigmoid_binary_cross_entropy")
  assert loss_fn.multi_label
  logits = jnp.array([[3.0, 2.0, -1.0],    # predicts {0, 1}: right
                      [3.0, -2.0, -1.0],   # predicts {0}: one class missed
                      [-3.0, -2.0, 4.0]])  # predicts {2}: right
  labels = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  np.testing.assert_array_equal(metrics.correct_predictions(logits, labels, multi_label=True),
                                [1.0, 0.0, 1.0])
  # Single-label accuracy (argmax against the label's argmax) would score the first 1, the
  # second 1 too: the case this changes.
  np.testing.assert_array_equal(metrics.correct_predictions(logits, labels), [1.0, 1.0, 1.0])

  class Fixed(nn.Module):  # outputs the logits above whatever the input
    @nn.compact
    def __call__(self, x, train=False):
      bias = self.param("bias", lambda key: logits)
      return bias + 0.0 * x.reshape(x.shape[0], -1)[:, :1]

  model = Fixed()
  batch = {"image": jnp.zeros((3, 2, 2, 1)), "label": labels}
  state = create_train_state(model.init(jax.random.PRNGKey(0), batch["image"]),
                             build_optimizer({"name": "sgd", "learning_rate": 0.0}),
                             jax.random.PRNGKey(0))
  sums = jax.jit(make_eval_step(model, loss_fn, ("loss", "accuracy")))(state, batch)
  assert metrics.finalize(sums)["accuracy"] == pytest.approx(2 / 3)
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.0})
  _, step_metrics = jax.jit(make_train_step(model, loss_fn, tx))(state, batch)
  assert float(step_metrics["accuracy"]) == pytest.approx(2 / 3)


def test_a_regression_batch_may_call_its_values_target():
  model = build_model(dict(name="mlp", hidden_sizes=(8,), activation="relu",
                           dropout_rate=0.0, num_classes=1))
  x = jax.random.uniform(jax.random.PRNGKey(0), (16, 4))
  y = x.sum(axis=1)
  loss_fn = LOSSES.get("mean_squared_error")
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.05})
  state = create_train_state(init_variables(model, jax.random.PRNGKey(1), x[:1]), tx,
                             jax.random.PRNGKey(2))
  step = jax.jit(make_train_step(model, loss_fn, tx))
  evaluate = jax.jit(make_eval_step(model, loss_fn, ("loss", "mse")))
  as_target, as_label = {"image": x, "target": y}, {"image": x, "label": y}
  before = metrics.finalize(evaluate(state, as_target), ("loss", "mse"))
  assert before["loss"] == pytest.approx(metrics.finalize(evaluate(state, as_label), ("loss", "mse"))["loss"])
  trained, _ = step(state, as_target)
  same, _ = step(state, as_label)
  chex.assert_trees_all_close(trained.params, same.params)
  assert metrics.finalize(evaluate(trained, as_target), ("loss", "mse"))["loss"] < before["loss"]
  with pytest.raises(KeyError, match='needs "label" .* or "target"'):
    step(state, {"image": x, "y": y})


def test_float16_compute_trains_float32_params_like_float32():
  model, params, batch = _tiny_mlp()
  batch = dict(batch, image=batch["image"] * 4.0)
  tx = build_optimizer({"name": "sgd", "learning_rate": LR})
  loss_fn = LOSSES.get("softmax_cross_entropy")
  state = create_train_state({"params": params}, tx, jax.random.PRNGKey(0))
  results = {}
  for dtype in (None, jnp.float16):
    step = jax.jit(make_train_step(model, loss_fn, tx, compute_dtype=dtype))
    results[dtype] = step(state, batch)
  (full, full_metrics), (half, half_metrics) = results[None], results[jnp.float16]
  assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.float32)}
  assert half_metrics["loss"].dtype == jnp.float32
  assert float(half_metrics["loss"]) == pytest.approx(float(full_metrics["loss"]), rel=2e-3)
  moved = _largest_difference(full.params, params)
  # float16's rounding shows (so the step really computed in it), and is all that differs.
  assert 0 < _largest_difference(half.params, full.params) < 0.02 * moved and moved > 1e-2
