import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.core import losses
from bigjax.core.optimizers import build_optimizer
from bigjax.registry import ConfigError


def test_softmax_cross_entropy_hand_computed():
  # softmax([0, ln 3]) = [1/4, 3/4]
  logits = jnp.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
  got = losses.softmax_cross_entropy(logits, {"label": jnp.array([1, 0])})
  np.testing.assert_allclose(got, [-math.log(0.75), -math.log(0.25)], rtol=1e-6)


def test_softmax_cross_entropy_one_hot_equals_integer_labels():
  logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  labels = jnp.array([0, 3, 2, 1, 3])
  as_int = losses.softmax_cross_entropy(logits, {"label": labels})
  as_one_hot = losses.softmax_cross_entropy(logits, {"label": jax.nn.one_hot(labels, 4)})
  assert float(as_int.std()) > 0.01  # the examples really differ
  np.testing.assert_allclose(as_int, as_one_hot, rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 10), (3, 5, 256)])  # class logits; LM tokens
def test_integer_label_cross_entropy_equals_optax(shape):
  """The label's logit is picked by comparison (an elementwise gradient, not optax's gather
  and scatter-add): the same losses and gradients as optax's integer-label loss."""
  import optax
  logits = 4.0 * jax.random.normal(jax.random.PRNGKey(1), shape)
  labels = jax.random.randint(jax.random.PRNGKey(2), shape[:-1], 0, shape[-1])
  ours = lambda x: losses._integer_label_cross_entropy(x, labels)
  theirs = lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels)
  np.testing.assert_allclose(ours(logits), theirs(logits), rtol=1e-6, atol=1e-6)
  weights = jax.random.uniform(jax.random.PRNGKey(3), shape[:-1])
  grad = lambda f: jax.grad(lambda x: (f(x) * weights).sum())(logits)
  np.testing.assert_allclose(grad(ours), grad(theirs), rtol=1e-6, atol=1e-7)
  assert losses.token_cross_entropy(logits, {"label": labels}).shape == shape[:1]


def test_integer_label_cross_entropy_is_nan_for_a_label_out_of_range():
  got = losses.softmax_cross_entropy(jnp.zeros((3, 4)), {"label": jnp.array([0, 4, -1])})
  assert np.isfinite(got[0]) and np.isnan(got[1]) and np.isnan(got[2])


def test_mean_squared_error_hand_computed():
  got = losses.mean_squared_error(jnp.array([[1.0, 2.0], [0.0, 0.0]]),
                                  jnp.array([[1.0, 4.0], [3.0, -1.0]]))
  np.testing.assert_allclose(got, [2.0, 5.0])  # (0 + 4) / 2, (9 + 1) / 2


def test_mean_squared_error_loss_uses_one_hot_labels():
  outputs = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
  got = losses.LOSSES.get("mean_squared_error")(outputs, {"label": jnp.array([0, 2])})
  np.testing.assert_allclose(got, [0.0, (0.25 + 0.25 + 1.0) / 3], rtol=1e-6)


def test_lesson_worked_example_linear_regression():
  """y = theta*x + b, theta=1, b=0 on x=(2,4,6), y=(3,6,9); the lesson's arithmetic, corrected."""
  x, y = jnp.array([2.0, 4.0, 6.0]), jnp.array([3.0, 6.0, 9.0])
  params = {"theta": jnp.array(1.0), "b": jnp.array(0.0)}

  def cost(p):
    return losses.mean_squared_error((p["theta"] * x + p["b"])[:, None], y[:, None]).mean()

  value, grads = jax.value_and_grad(cost)(params)
  assert float(value) == pytest.approx(14 / 3, rel=1e-6)
  assert float(grads["theta"]) == pytest.approx(-56 / 3, rel=1e-6)
  assert float(grads["b"]) == pytest.approx(-4.0, rel=1e-6)

  tx = build_optimizer({"name": "sgd", "learning_rate": 0.1})
  updates, _ = tx.update(grads, tx.init(params), params)
  new = jax.tree.map(lambda p, u: p + u, params, updates)
  assert round(float(new["theta"]), 4) == 2.8667
  assert round(float(new["b"]), 4) == 0.4


def test_unknown_loss_lists_known_and_suggests():
  with pytest.raises(ConfigError) as e:
    losses.LOSSES.get("softmax_crossentropy")
  assert 'Did you mean "softmax_cross_entropy"' in str(e.value)
  assert "mean_squared_error" in str(e.value)


def test_unknown_optimizer_and_bad_arguments():
  with pytest.raises(ConfigError, match='Unknown optimizer "adma".*Did you mean "adam"'):
    build_optimizer({"name": "adma", "learning_rate": 1e-3})
  with pytest.raises(ConfigError, match=r"learning_rat.*Did you mean \"learning_rate\""):
    build_optimizer({"name": "adam", "learning_rat": 1e-3})


# --- the catalogue against hand-computed values -------------------------------------------

def test_label_smoothing_hand_computed():
  # softmax([ln 1, ln 3]) = [0.25, 0.75]; label 1 smoothed by 0.2 over 2 classes -> [0.1, 0.9]
  logits = jnp.log(jnp.array([[1.0, 3.0]]))
  value = losses.softmax_cross_entropy(logits, {"label": jnp.array([1])}, label_smoothing=0.2)
  expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
  assert float(value[0]) == pytest.approx(expected, rel=1e-6)
  one_hot = losses.softmax_cross_entropy(logits, {"label": jnp.array([[0.0, 1.0]])},
                                         label_smoothing=0.2)
  assert float(one_hot[0]) == pytest.approx(expected, rel=1e-6)


def test_sigmoid_binary_cross_entropy_hand_computed():
  # sigmoid(0) = 0.5 with target 1; sigmoid(ln 3) = 0.75 with target 0; mean over classes
  logits = jnp.array([[0.0, math.log(3.0)]])
  value = losses.sigmoid_binary_cross_entropy(logits, {"label": jnp.array([[1.0, 0.0]])})
  assert float(value[0]) == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)


def test_multiclass_hinge_hand_computed():
  logits = jnp.array([[1.0, 3.0, 2.0]] * 3)
  value = losses.multiclass_hinge(logits, {"label": jnp.array([0, 1, 2])})
  # label 0: 1 + 3 - 1 = 3; label 1: 1 + 2 - 3 = 0; label 2: 1 + 3 - 2 = 2
  np.testing.assert_allclose(value, [3.0, 0.0, 2.0])
  wide = losses.multiclass_hinge(logits, {"label": jnp.array([1, 1, 1])}, margin=2.5)
  np.testing.assert_allclose(wide, [1.5] * 3)


def test_mean_absolute_error_hand_computed():
  outputs = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  value = losses.mean_absolute_error_loss(outputs, {"target": jnp.array([[0.0, 4.0], [1.0, -1.0]])})
  np.testing.assert_allclose(value, [1.5, 1.0])


@pytest.mark.parametrize("name,kwargs", [("softmax_cross_entropy", {}),
                                         ("softmax_cross_entropy", {"label_smoothing": 0.1}),
                                         ("multiclass_hinge", {})])
def test_gradients_match_finite_differences(name, kwargs):
  # Points away from the hinge's kinks, where the loss is differentiable.
  logits = jnp.array([[0.3, -1.2, 2.0, 0.5], [1.0, 0.2, -0.4, 0.9]])
  batch = {"label": jnp.array([1, 3])}
  fn = losses.LOSSES.get(name)
  total = lambda z: fn(z, batch, **kwargs).sum()
  analytic = jax.grad(total)(logits)
  eps = 1e-2
  numeric = np.zeros(logits.shape)
  for index in np.ndindex(*logits.shape):
    step = jnp.zeros(logits.shape).at[index].set(eps)
    numeric[index] = (total(logits + step) - total(logits - step)) / (2 * eps)
  np.testing.assert_allclose(analytic, numeric, atol=2e-3)
  assert np.abs(analytic).sum() > 0.1  # not a vacuous comparison of zeros


def test_every_loss_is_per_example_and_jittable():
  logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  # ("image": what an autoencoder reconstructs, shaped like its outputs.)
  batch = {"label": jnp.array([0, 1, 2, 3, 0]), "image": jnp.zeros((5, 4))}
  for name in losses.LOSSES.names():
    value = jax.jit(losses.LOSSES.get(name))(logits, batch)
    assert value.shape == (5,) and bool(jnp.all(jnp.isfinite(value))), name


def test_lesson_linear_regression_converges_with_sgd():
  """The seed's example (x = 2, 4, 6; y = 3, 6, 9) trained with bigjax's SGD: theta=1.5, b=0."""
  x, y = jnp.array([2.0, 4.0, 6.0]), jnp.array([3.0, 6.0, 9.0])
  params = {"theta": jnp.array(1.0), "b": jnp.array(0.0)}
  tx = build_optimizer({"name": "sgd", "learning_rate": 0.04})

  def cost(p):
    return losses.mean_squared_error((p["theta"] * x + p["b"])[:, None], y[:, None]).mean()

  def step(carry, _):
    p, opt_state = carry
    updates, opt_state = tx.update(jax.grad(cost)(p), opt_state, p)
    return (jax.tree.map(jnp.add, p, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=3000)
  assert float(params["theta"]) == pytest.approx(1.5, abs=1e-4)
  assert float(params["b"]) == pytest.approx(0.0, abs=1e-4)
  assert float(cost(params)) < 1e-8


def test_loss_with_wrong_signature_fails_when_built():
  def needs_three(outputs, batch, temperature):
    return outputs.sum(-1)

  losses.register_loss("needs_three_for_test", overwrite=True)(needs_three)
  try:
    with pytest.raises(ConfigError, match=r'Loss "needs_three_for_test" cannot be called.*'
                                          r"temperature"):
      losses.build_loss({"name": "needs_three_for_test"})
  finally:
    losses.LOSSES.unregister("needs_three_for_test")
  with pytest.raises(ConfigError, match=r"\['margn'\].*Did you mean \"margin\""):
    losses.build_loss({"name": "multiclass_hinge", "margn": 2.0})


def test_dotted_path_that_does_not_import_names_path_and_reason():
  with pytest.raises(ConfigError, match=r'"nosuchpkg.losses:focal".*module "nosuchpkg.losses" '
                                        r"failed to import"):
    losses.build_loss({"name": "nosuchpkg.losses:focal"})
  with pytest.raises(ConfigError, match=r'has no attribute "softmax_cross_entropi".*Did you mean '
                                        r'"softmax_cross_entropy"'):
    losses.build_loss({"name": "bigjax.core.losses:softmax_cross_entropi"})
