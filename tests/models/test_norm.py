"""bigjax's BatchNorm and LayerNorm (closed-form gradients) against Flax's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.models.norm import BatchNorm, LayerNorm

SHAPES = [(16, 5, 5, 8), (32, 6), (4, 3, 3, 2)]
LAYERS = {"batch": (nn.BatchNorm, BatchNorm), "layer": (nn.LayerNorm, LayerNorm)}


def _pair(shape, kind="batch", **kwargs):
  """Flax's and bigjax's layer with the same (perturbed) variables, and an input."""
  x = jax.random.normal(jax.random.PRNGKey(0), shape) * 3.0 + 1.0
  ref, ours = (layer(**kwargs) for layer in LAYERS[kind])
  train = {"use_running_average": False} if kind == "batch" else {}
  variables = ref.init(jax.random.PRNGKey(1), x, **train)
  assert (jax.tree.structure(variables) ==
          jax.tree.structure(ours.init(jax.random.PRNGKey(1), x, **train)))
  # Scale, bias and running statistics away from their initial 1s and 0s.
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  variables = jax.tree.unflatten(tree, [v + jax.random.uniform(k, v.shape, minval=0.5)
                                        for v, k in zip(leaves, keys)])
  return ref, ours, variables, x


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_forward_statistics_and_gradients_equal_flax(shape):
  ref, ours, variables, x = _pair(shape, momentum=0.9, epsilon=1e-5)
  weights = jax.random.normal(jax.random.PRNGKey(3), shape)  # a random cotangent

  def loss(module):
    def f(params, x):
      y, updated = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                x, use_running_average=False, mutable=["batch_stats"])
      return (jnp.tanh(y) * weights).sum(), (y, updated)
    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)

  (loss_ref, (y_ref, stats_ref)), grads_ref = loss(ref)(variables["params"], x)
  (loss_ours, (y_ours, stats_ours)), grads_ours = loss(ours)(variables["params"], x)
  np.testing.assert_array_equal(y_ours, y_ref)  # the same operations in the same order
  jax.tree.map(np.testing.assert_array_equal, stats_ours, stats_ref)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grads_ours, grads_ref)
  assert np.abs(grads_ref[1]).max() > 0.01  # not trivially zero


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(4, 7, 16), (8, 5), (2, 3, 4, 6)])
def test_layer_norm_forward_and_gradients_equal_flax(shape):
  ref, ours, variables, x = _pair(shape, "layer")
  weights = jax.random.normal(jax.random.PRNGKey(3), shape)
  loss = lambda m: jax.value_and_grad(
      lambda v, x: (jnp.tanh(m.apply(v, x)) * weights).sum(), argnums=(0, 1))
  (value_ref, grads_ref), (value_ours, grads_ours) = (loss(ref)(variables, x),
                                                      loss(ours)(variables, x))
  np.testing.assert_array_equal(ours.apply(variables, x), ref.apply(variables, x))
  assert value_ours == value_ref
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grads_ours, grads_ref)
  assert np.abs(grads_ref[1]).max() > 0.01


@pytest.mark.slow
def test_gradient_through_the_batch_statistics_equals_flax():
  """A loss that reads the updated running statistics: their cotangents reach x too."""
  ref, ours, variables, x = _pair((8, 4, 4, 3), momentum=0.5)

  def loss(module):
    def f(x):
      y, updated = module.apply(variables, x, use_running_average=False,
                                mutable=["batch_stats"])
      stats = updated["batch_stats"]
      return jnp.sin(y).sum() + (3.0 * stats["mean"]).sum() + (stats["var"] ** 2).sum()
    return jax.grad(f)

  np.testing.assert_allclose(loss(ours)(x), loss(ref)(x), rtol=1e-4, atol=1e-5)


def test_evaluation_uses_the_running_statistics_like_flax():
  ref, ours, variables, x = _pair((6, 4, 4, 3))
  np.testing.assert_array_equal(ours.apply(variables, x, use_running_average=True),
                                ref.apply(variables, x, use_running_average=True))


@pytest.mark.slow
def test_second_derivatives_equal_flax():
  """Reverse-over-reverse differentiates the hand-written backward pass itself."""
  ref, ours, variables, x = _pair((6, 5))
  f = lambda module: lambda scale: jnp.tanh(module.apply(
      {"params": dict(variables["params"], scale=scale), "batch_stats":
       variables["batch_stats"]}, x, use_running_average=False,
      mutable=["batch_stats"])[0]).sum()
  scale = variables["params"]["scale"]
  np.testing.assert_allclose(jax.hessian(f(ours))(scale), jax.hessian(f(ref))(scale),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_half_precision_inputs_keep_float32_statistics_like_flax():
  ref, ours, variables, x = _pair((8, 3, 3, 4))
  x = x.astype(jnp.bfloat16)
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), variables["params"])
  run = lambda m, x: m.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                             use_running_average=False, mutable=["batch_stats"])
  (y_ours, stats_ours), (y_ref, _) = run(ours, x), run(ref, x)
  assert y_ours.dtype == y_ref.dtype == jnp.bfloat16
  assert stats_ours["batch_stats"]["mean"].dtype == jnp.float32
  np.testing.assert_array_equal(y_ours.astype(jnp.float32), y_ref.astype(jnp.float32))
  grad = lambda m: jax.grad(lambda x: run(m, x)[0].astype(jnp.float32).sum())(x)
  assert grad(ours).dtype == jnp.bfloat16


def test_a_constant_channel_gives_finite_gradients():
  """Variance 0 (clipped): the output is the bias and the gradient stays finite."""
  x = jnp.ones((8, 3)).at[:, 1].set(jax.random.normal(jax.random.PRNGKey(0), (8,)))
  variables = BatchNorm().init(jax.random.PRNGKey(0), x, use_running_average=False)
  f = lambda x: (BatchNorm().apply(variables, x, use_running_average=False,
                                   mutable=["batch_stats"])[0] ** 2).sum()
  assert np.isfinite(np.asarray(jax.grad(f)(x))).all()
