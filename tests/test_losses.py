import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import losses
from bigjax.optimizers import build_optimizer
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


def test_mean_squared_error_hand_computed():
  got = losses.mean_squared_error(jnp.array([[1.0, 2.0], [0.0, 0.0]]),
                                  jnp.array([[1.0, 4.0], [3.0, -1.0]]))
  np.testing.assert_allclose(got, [2.0, 5.0])  # (0 + 4) / 2, (9 + 1) / 2


def test_mean_squared_error_loss_uses_one_hot_labels():
  outputs = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
  got = losses.LOSSES.get("mean_squared_error")(outputs, {"label": jnp.array([0, 2])})
  np.testing.assert_allclose(got, [0.0, (0.25 + 0.25 + 1.0) / 3], rtol=1e-6)


def test_weighted_mean_ignores_padding():
  values = jnp.array([1.0, 3.0, 100.0])
  assert float(losses.weighted_mean(values, jnp.array([1.0, 1.0, 0.0]))) == 2.0
  assert float(losses.weighted_mean(values, None)) == pytest.approx(104 / 3)


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
