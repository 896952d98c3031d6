"""bigjax's Conv (im2col on CPUs) against Flax's nn.Conv and lax's convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from bigjax.models.conv import Conv, conv2d, patches, resolve_impl

CASES = [  # input shape, kernel shape, strides, padding
    ((3, 28, 28, 1), (3, 3, 1, 8), (1, 1), "VALID"),     # the lessons' first conv
    ((2, 13, 13, 6), (3, 3, 6, 5), (1, 1), "VALID"),     # odd sizes, the second
    ((2, 9, 10, 3), (3, 3, 3, 4), (1, 1), "SAME"),       # ResNet's
    ((2, 9, 9, 4), (3, 3, 4, 6), (2, 2), "SAME"),        # ResNet's downsampling
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), "VALID"),       # projection shortcut
    ((1, 15, 15, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),  # ImageNet stem
    ((2, 7, 8, 2), (2, 3, 2, 3), (1, 2), ((1, 0), (2, 1))),   # uneven everything
]


def _reference(x, k, strides, padding):
  return lax.conv_general_dilated(x, k, strides, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=lax.Precision.HIGHEST)


@pytest.mark.slow
@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CASES)
def test_im2col_conv_equals_lax_conv_values_and_gradients(x_shape, k_shape, strides, padding):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, x_shape)
  k = jax.random.normal(kk, k_shape)
  ours = lambda x, k: conv2d(x, k, strides, padding, impl="im2col")
  ref = lambda x, k: _reference(x, k, strides, padding)
  y, y_ref = ours(x, k), ref(x, k)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
  g = jax.random.normal(kg, y.shape)  # a random cotangent: every output position matters
  dx, dk = jax.vjp(ours, x, k)[1](g)
  dx_ref, dk_ref = jax.vjp(ref, x, k)[1](g)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=2e-4)
  assert np.abs(dk_ref).max() > 1  # not trivially zero


@pytest.mark.slow
def test_im2col_second_derivatives_equal_lax_conv():
  """Reverse-over-reverse goes through the hand-written backward pass; it must still be
  the convolution's maths (e.g. for gradient penalties or Hessian-vector products)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 2))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 2))
  loss = lambda conv: lambda k: jnp.tanh(conv(x, k)).sum()
  ours = loss(lambda x, k: conv2d(x, k, impl="im2col"))
  ref = loss(lambda x, k: _reference(x, k, (1, 1), "VALID"))
  np.testing.assert_allclose(jax.hessian(ours)(k), jax.hessian(ref)(k), rtol=1e-4, atol=1e-4)


def test_patches_are_the_kernel_windows():
  x = jnp.arange(2 * 4 * 5 * 3, dtype=jnp.float32).reshape(2, 4, 5, 3)
  cols = patches(x, 2, 3, (1, 2))
  assert cols.shape == (2, 3, 2, 2 * 3 * 3)
  # Output (1, 1) with stride (1, 2) looks at rows 1-2, columns 2-4, in HWC order.
  np.testing.assert_array_equal(cols[1, 1, 1], x[1, 1:3, 2:5, :].reshape(-1))


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["im2col", "xla"])
def test_conv_module_matches_flax_conv(impl):
  """Same parameter tree and initial values as nn.Conv (checkpoints move between them), and
  the same outputs."""
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 12, 3))
  ours = Conv(8, (3, 3), strides=2, padding="SAME", impl=impl)
  flax_conv = nn.Conv(8, (3, 3), strides=2, padding="SAME",
                      bias_init=nn.initializers.normal(1.0))
  ours = ours.clone(bias_init=nn.initializers.normal(1.0))
  v_ours = ours.init(jax.random.PRNGKey(0), x)
  v_flax = flax_conv.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, v_ours) == jax.tree.map(jnp.shape, v_flax)
  jax.tree.map(np.testing.assert_array_equal, v_ours, v_flax)
  np.testing.assert_allclose(ours.apply(v_ours, x), flax_conv.apply(v_flax, x), rtol=1e-5,
                             atol=1e-5)


def test_conv_module_bfloat16_compute_keeps_float32_params():
  x = jnp.ones((1, 6, 6, 2))
  conv = Conv(4, (3, 3), dtype=jnp.bfloat16, impl="im2col")
  variables = conv.init(jax.random.PRNGKey(0), x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  assert conv.apply(variables, x).dtype == jnp.bfloat16
  grads = jax.grad(lambda v: conv.apply(v, x).astype(jnp.float32).sum())(variables)
  assert grads["params"]["kernel"].dtype == jnp.float32


def test_conv_impl_names():
  assert resolve_impl("auto") == ("im2col" if jax.default_backend() == "cpu" else "xla")
  assert resolve_impl("auto", padded=True) == "xla"
  assert resolve_impl("im2col", padded=True) == "im2col"
  with pytest.raises(ValueError, match='conv_impl "fft".*auto, xla, im2col'):
    resolve_impl("fft")
  with pytest.raises(ValueError, match='padding "CIRCULAR"'):
    Conv(4, padding="CIRCULAR").init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 1)))
