"""Optimizers, schedules, clipping, regularisation and gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax.core import losses, regularization, schedules
from bigjax.models import build_model, init_variables
from bigjax.core.optimizers import OPTIMIZERS, build_optimizer, current_learning_rate
from bigjax.registry import ConfigError
from bigjax.core.steps import create_train_state, make_train_step
from configs import mnist

SCHEDULE_DEFAULTS = dict(mnist.get_config().optimizer.schedule)


def _mlp(hidden=(8,)):
  model = build_model(dict(name="mlp", hidden_sizes=hidden, activation="relu",
                           dropout_rate=0.0, num_classes=3))
  x = jax.random.uniform(jax.random.PRNGKey(0), (16, 4, 4, 1))
  y = jax.random.randint(jax.random.PRNGKey(1), (16,), 0, 3)
  params = init_variables(model, jax.random.PRNGKey(2), x[:1])["params"]
  return model, params, {"image": x, "label": y}


def _grads(model, params, batch):
  loss = lambda p: losses.softmax_cross_entropy(model.apply({"params": p}, batch["image"]),
                                                batch).mean()
  return jax.grad(loss)(params)


def _schedule(total_steps=100, **cfg):
  return schedules.build_schedule({**SCHEDULE_DEFAULTS, **cfg}, total_steps)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_and_takes_a_finite_step(name):
  model, params, batch = _mlp()
  tx = build_optimizer({"name": name, "learning_rate": 1e-2})
  updates, _ = jax.jit(tx.update)(_grads(model, params, batch), tx.init(params), params)
  changed = [float(jnp.abs(u).max()) for u in jax.tree.leaves(updates)]
  assert all(np.isfinite(changed)) and max(changed) > 0, (name, changed)


def test_optimizer_hyperparameters_reach_the_optimizer():
  model, params, batch = _mlp()
  grads = _grads(model, params, batch)
  ours = build_optimizer({"name": "sgd", "learning_rate": 0.1, "momentum": 0.5})
  reference = optax.sgd(0.1, momentum=0.5)
  s, r = ours.init(params), reference.init(params)
  for _ in range(3):
    u, s = ours.update(grads, s, params)
    v, r = reference.update(grads, r, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u, v)


# Each built-in name against optax's own construction: a name wired to the wrong
# optimizer or hyperparameter (nesterov without Nesterov, say) gives other updates.
OPTAX_REFERENCES = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: optax.adam(lr),
    "adamw": lambda lr: optax.adamw(lr, weight_decay=0.0),
    "rmsprop": lambda lr: optax.rmsprop(lr),
    "adagrad": lambda lr: optax.adagrad(lr),
    "adafactor": lambda lr: optax.adafactor(lr),
    "lamb": lambda lr: optax.lamb(lr, weight_decay=0.0),
    "lion": lambda lr: optax.lion(lr, weight_decay=0.0),
}


def test_every_builtin_optimizer_has_an_optax_reference():
  assert sorted(OPTAX_REFERENCES) == sorted(OPTIMIZERS.names())


@pytest.mark.parametrize("name", sorted(OPTAX_REFERENCES))
def test_builtin_optimizer_takes_optax_steps(name):
  _, params, _ = _mlp()
  # Gradients that change from step to step, so momentum and its variants differ.
  grads_at = lambda i: jax.tree.map(lambda p: jnp.sin((3.0 + i) * p) + 0.1 * i, params)
  ours = build_optimizer({"name": name, "learning_rate": 3e-2})
  reference = OPTAX_REFERENCES[name](3e-2)
  s, r, p_ours, p_ref = ours.init(params), reference.init(params), params, params
  for i in range(4):
    u, s = ours.update(grads_at(i), s, p_ours)
    v, r = reference.update(grads_at(i), r, p_ref)
    p_ours, p_ref = optax.apply_updates(p_ours, u), optax.apply_updates(p_ref, v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               p_ours, p_ref)


def test_nesterov_and_heavy_ball_momentum_really_differ():
  """(So the parity test above can tell them apart.)"""
  _, params, _ = _mlp()
  grads_at = lambda i: jax.tree.map(lambda p: jnp.sin((3.0 + i) * p) + 0.1 * i, params)
  finals = []
  for name in ("momentum", "nesterov"):
    tx = build_optimizer({"name": name, "learning_rate": 3e-2})
    state, p = tx.init(params), params
    for i in range(4):
      u, state = tx.update(grads_at(i), state, p)
      p = optax.apply_updates(p, u)
    finals.append(p)
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1]))) > 1e-3


def test_adam_with_weight_decay_equals_optax_adamw():
  model, params, batch = _mlp()
  grads = _grads(model, params, batch)
  mask = regularization.path_mask(params, "kernel")
  reference = optax.adamw(3e-3, weight_decay=0.1, mask=mask)
  for name in ("adam", "adamw"):
    ours = build_optimizer({"name": name, "learning_rate": 3e-3, "weight_decay": 0.1})
    p, q, s, r = params, params, ours.init(params), reference.init(params)
    for _ in range(3):
      u, s = ours.update(grads, s, p)
      v, r = reference.update(grads, r, q)
      p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p, q)
    assert not np.allclose(p["dense_0"]["kernel"], params["dense_0"]["kernel"])


def test_penalty_mask_is_kernels_only():
  _, params, _ = _mlp(hidden=(8, 5))
  assert regularization.path_mask(params, "kernel") == {
      "dense_0": {"kernel": True, "bias": False},
      "dense_1": {"kernel": True, "bias": False},
      "head": {"kernel": True, "bias": False}}
  assert regularization.path_mask(params, "^head/") == {
      "dense_0": {"kernel": False, "bias": False},
      "dense_1": {"kernel": False, "bias": False},
      "head": {"kernel": True, "bias": True}}


def test_penalty_gradient_is_the_gradient_of_the_penalty():
  _, params, _ = _mlp()
  zeros = jax.tree.map(jnp.zeros_like, params)
  added, _ = regularization.add_penalty_gradient(0.01, 0.3, "kernel").update(zeros, None, params)
  expected = jax.grad(lambda p: regularization.penalty(p, 0.01, 0.3, "kernel"))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), added, expected)
  assert float(jnp.abs(added["head"]["bias"]).max()) == 0.0  # biases are not penalised
  hand = 0.01 * jnp.abs(params["head"]["kernel"]).sum() + 0.3 * jnp.square(
      params["head"]["kernel"]).sum()
  head_only = regularization.penalty(params, 0.01, 0.3, "^head/kernel")
  assert float(head_only) == pytest.approx(float(hand), rel=1e-6)


def test_l2_through_the_optimizer_equals_sgd_on_loss_plus_penalty():
  model, params, batch = _mlp()
  loss = lambda p: (losses.softmax_cross_entropy(model.apply({"params": p}, batch["image"]),
                                                 batch).mean()
                    + regularization.penalty(p, 0.0, 0.05, "kernel"))
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.1}, {"l2": 0.05})
  updates, _ = tx.update(_grads(model, params, batch), tx.init(params), params)
  expected = jax.tree.map(lambda g: -0.1 * g, jax.grad(loss)(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
               updates, expected)


def _norm(tree):
  return jnp.sqrt(sum(jnp.square(x).sum() for x in jax.tree.leaves(tree)))


def test_clipping_bounds_the_global_norm_and_zero_turns_it_off():
  model, params, batch = _mlp()
  grads = jax.tree.map(lambda g: 100.0 * g, _grads(model, params, batch))
  clipped = build_optimizer({"name": "sgd", "learning_rate": 1.0, "clip_norm": 0.5})
  updates, _ = clipped.update(grads, clipped.init(params), params)
  assert float(_norm(updates)) == pytest.approx(0.5, rel=1e-5)
  free = build_optimizer({"name": "sgd", "learning_rate": 1.0, "clip_norm": 0.0})
  updates, _ = free.update(grads, free.init(params), params)
  assert float(_norm(updates)) == pytest.approx(
      float(_norm(grads)), rel=1e-5)


@pytest.mark.parametrize("cfg,total,expected", [
    (dict(name="constant"), 100, {0: 1.0, 50: 1.0, 1000: 1.0}),
    (dict(name="cosine"), 100, {0: 1.0, 50: 0.5, 100: 0.0}),
    (dict(name="cosine", end_factor=0.1), 100, {0: 1.0, 50: 0.55, 100: 0.1}),
    (dict(name="cosine", decay_steps=20), 100, {10: 0.5, 20: 0.0, 90: 0.0}),
    (dict(name="linear"), 100, {0: 1.0, 25: 0.75, 100: 0.0, 200: 0.0}),
    (dict(name="exponential", decay_rate=0.5, transition_steps=10), 100,
     {0: 1.0, 5: 0.5 ** 0.5, 10: 0.5, 20: 0.25}),
    (dict(name="piecewise", boundaries=(30, 60), boundary_scales=(0.1, 0.5)), 100,
     {0: 1.0, 29: 1.0, 30: 0.1, 59: 0.1, 60: 0.05, 99: 0.05}),
    # warmup from 0 over 10 steps, then cosine over the 100 steps left
    (dict(name="cosine", warmup_steps=10), 110, {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.5, 110: 0.0}),
    (dict(name="constant", warmup_steps=4), 100, {0: 0.0, 1: 0.25, 3: 0.75, 4: 1.0, 50: 1.0}),
])
def test_schedule_values_at_chosen_steps(cfg, total, expected):
  values = schedules.values(_schedule(total, **cfg), list(expected))
  np.testing.assert_allclose(values, list(expected.values()), atol=1e-6)


def test_logged_learning_rate_is_the_one_the_update_used():
  _, params, _ = _mlp()
  schedule = dict(SCHEDULE_DEFAULTS, name="cosine", warmup_steps=5)
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.2, "schedule": schedule},
                       total_steps=25)
  multiplier = _schedule(25, name="cosine", warmup_steps=5)
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for step in range(25):
    updates, state = tx.update(grads, state, params)
    lr = 0.2 * float(multiplier(step))
    assert float(current_learning_rate(state)) == pytest.approx(lr, abs=1e-7)
    # SGD's update is -lr * grad, so the update itself shows the rate used.
    assert float(updates["head"]["bias"][0]) == pytest.approx(-lr, abs=1e-7)


def test_reduce_on_plateau_lowers_the_rate_when_the_loss_stalls():
  _, params, _ = _mlp()
  schedule = dict(SCHEDULE_DEFAULTS, name="reduce_on_plateau", plateau_factor=0.5,
                  plateau_patience=2, plateau_accumulation_steps=1)
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.1, "schedule": schedule})
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  rates = []
  for loss in [5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]:
    _, state = tx.update(grads, state, params, value=jnp.asarray(loss))
    rates.append(round(float(current_learning_rate(state)), 6))
  # Improving until the third value; the scale halves after `patience` values without
  # improvement, and again after `patience` more.
  assert rates == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]


def test_unknown_schedule_and_bad_schedule_arguments():
  with pytest.raises(ConfigError, match=r'Unknown schedule "cosin".*Did you mean "cosine".*'
                                        r"piecewise"):
    _schedule(name="cosin")
  with pytest.raises(ConfigError, match="as many boundary_scales as boundaries"):
    _schedule(name="piecewise", boundaries=(10, 20), boundary_scales=(0.1,))


def test_optimizer_key_the_optimizer_does_not_take():
  with pytest.raises(ConfigError, match=r"\['momentum'\] that optimizer \"adam\" does not take"
                                        r".*It takes: learning_rate, b1"):
    build_optimizer({"name": "adam", "learning_rate": 1e-3, "momentum": 0.9})


def test_user_optimizer_must_return_a_gradient_transformation():
  OPTIMIZERS.register("broken_for_test", overwrite=True)(lambda learning_rate: "not optax")
  try:
    with pytest.raises(ConfigError, match="returned str, not an optax.GradientTransformation"):
      build_optimizer({"name": "broken_for_test", "learning_rate": 1e-3})
  finally:
    OPTIMIZERS.unregister("broken_for_test")


def _lowered_train_step(model, params, batch, opt_config, loss_config):
  tx = build_optimizer(opt_config, loss_config, total_steps=100)
  state = create_train_state({"params": params}, tx, jax.random.PRNGKey(0))
  step = make_train_step(model, losses.softmax_cross_entropy, tx)
  return jax.jit(step).lower(state, batch).as_text()


def test_overriding_hyperparameters_never_changes_the_compiled_step():
  model, params, batch = _mlp()
  base_opt = {"name": "adam", "learning_rate": 1e-3, "weight_decay": 0.0, "clip_norm": 0.0,
              "b1": 0.9}
  base_loss = {"l1": 0.0, "l2": 0.0}
  reference = _lowered_train_step(model, params, batch, base_opt, base_loss)
  for opt_change in [{"learning_rate": 0.3}, {"b1": 0.5}]:
    assert _lowered_train_step(model, params, batch, {**base_opt, **opt_change},
                               base_loss) == reference, opt_change
  # A stage that is on keeps one program whatever its (non-zero) value.
  regularised_opt = {**base_opt, "weight_decay": 0.01, "clip_norm": 1.0}
  regularised_loss = {"l1": 1e-4, "l2": 1e-3}
  regularised = _lowered_train_step(model, params, batch, regularised_opt, regularised_loss)
  assert regularised != reference  # turning stages on is a structural change
  for opt_change, loss_change in [({"weight_decay": 0.1}, {}), ({"clip_norm": 2.5}, {}),
                                  ({"learning_rate": 0.3}, {"l1": 1e-2, "l2": 5e-4})]:
    assert _lowered_train_step(model, params, batch, {**regularised_opt, **opt_change},
                               {**regularised_loss, **loss_change}) == regularised
  # ...and a structural change does show in the compiled step (the comparison can fail).
  assert _lowered_train_step(model, params, batch, {**base_opt, "name": "lion"},
                             base_loss) != reference


def test_stages_at_zero_are_left_out_exactly_and_keep_the_state_structure():
  """A 0 stage is dropped from the compiled step; the updates are bit for bit those of the
  chain that computes it, and the optimizer state has the same structure (so a checkpoint
  restores whichever stages are on)."""
  from bigjax.core import optimizers
  _, params, _ = _mlp()
  grads = jax.tree.map(lambda p: jnp.sin(3.0 * p) + 0.1, params)
  kwargs = dict(learning_rate=3e-3, lr_multiplier=1.0, weight_decay=0.0, clip_norm=0.0,
                l1=0.0, l2=0.0, factory=optax.adam, penalty_regex="kernel",
                decay_regex="kernel")
  lean = optimizers._core(**kwargs, stages=())
  full = optimizers._core(**kwargs, stages=optimizers.STAGES)
  assert (jax.tree.structure(lean.init(params)) == jax.tree.structure(full.init(params)))
  lean_state, full_state, p_lean, p_full = lean.init(params), full.init(params), params, params
  for _ in range(3):
    u_lean, lean_state = jax.jit(lean.update)(grads, lean_state, p_lean)
    u_full, full_state = jax.jit(full.update)(grads, full_state, p_full)
    p_lean, p_full = optax.apply_updates(p_lean, u_lean), optax.apply_updates(p_full, u_full)
  jax.tree.map(np.testing.assert_array_equal, p_lean, p_full)
  assert optimizers.active_stages({"clip_norm": 1.0, "weight_decay": 0.1}, {"l2": 1e-4},
                                  optax.adam) == ("l2", "clip", "decay")
  # adamw decays inside the optimizer itself: bigjax's decoupled stage stays off.
  assert optimizers.active_stages({"weight_decay": 0.1}, {}, optax.adamw) == ()


def _train(model, params, batch, grad_accum_steps, steps=3):
  tx = build_optimizer({"name": "adam", "learning_rate": 1e-2, "clip_norm": 1.0})
  state = create_train_state({"params": params}, tx, jax.random.PRNGKey(0))
  step = jax.jit(make_train_step(model, losses.softmax_cross_entropy, tx, grad_accum_steps))
  for _ in range(steps):
    state, metrics = step(state, batch)
  return state, metrics


def test_accumulating_k_micro_batches_equals_one_big_batch():
  model, params, batch = _mlp()
  # Padding spread unevenly over the micro-batches: the mean must still be over real examples.
  batch = dict(batch, mask=jnp.array([1.0] * 10 + [0.0] * 6),
               weight=jnp.linspace(0.5, 2.0, 16))
  big, big_metrics = _train(model, params, batch, grad_accum_steps=1)
  for k in (2, 4):
    small, small_metrics = _train(model, params, batch, grad_accum_steps=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                 small.params, big.params)
    for key in ("loss", "accuracy"):
      assert float(small_metrics[key]) == pytest.approx(float(big_metrics[key]), rel=1e-5)


@pytest.mark.slow
def test_padding_and_weights_in_the_train_step():
  model, params, batch = _mlp()
  padded = dict(batch, mask=jnp.array([1.0] * 12 + [0.0] * 4))
  trimmed = jax.tree.map(lambda x: x[:12], batch)
  a, _ = _train(model, params, padded, 1, steps=1)
  b, _ = _train(model, params, trimmed, 1, steps=1)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
               a.params, b.params)
  # A weight of 2 on an example is the same as showing it twice.
  doubled = dict(batch, weight=jnp.array([2.0] + [1.0] * 15))
  repeated = jax.tree.map(lambda x: jnp.concatenate([x[:1], x]), batch)
  c, _ = _train(model, params, doubled, 1, steps=1)
  d, _ = _train(model, params, repeated, 1, steps=1)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
               c.params, d.params)


@pytest.mark.parametrize("mask, decayed", [("kernel", "kernel"), ("bias", "bias")])
def test_weight_decay_mask_decays_only_the_matching_params(mask, decayed):
  """With zero gradients, SGD's update is the decay alone: -lr * wd * w on matching paths."""
  _, params, _ = _mlp()
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.5, "weight_decay": 0.1,
                        "weight_decay_mask": mask})
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  for layer in params:
    for name, value in params[layer].items():
      expected = -0.5 * 0.1 * value if name == decayed else jnp.zeros_like(value)
      np.testing.assert_allclose(updates[layer][name], expected, rtol=1e-6, atol=1e-8)


def test_reduce_on_plateau_waits_out_its_cooldown_after_each_reduction():
  _, params, _ = _mlp()
  schedule = dict(SCHEDULE_DEFAULTS, name="reduce_on_plateau", plateau_factor=0.5,
                  plateau_patience=2, plateau_cooldown=3, plateau_accumulation_steps=1)
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.1, "schedule": schedule})
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  rates = []
  for loss in [5.0, 4.0, 3.0] + [3.0] * 9:
    _, state = tx.update(grads, state, params, value=jnp.asarray(loss))
    rates.append(round(float(current_learning_rate(state)), 6))
  # As without a cooldown up to the first halving; then 3 values in which nothing is
  # counted, before `patience` more stalled values halve it again (without the cooldown:
  # every second value, as in the test above).
  first = rates.index(0.05)
  assert rates[:first] == [0.1] * first
  second = rates.index(0.025)
  assert second - first == 3 + 2, rates
