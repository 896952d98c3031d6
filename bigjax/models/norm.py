"""BatchNorm and LayerNorm with a hand-written gradient.

`BatchNorm` and `LayerNorm` are drop-ins for `flax.linen.BatchNorm` and `nn.LayerNorm` as
bigjax's models use them (features on the last axis, statistics in float32): the same
parameters, collections and forward pass, so checkpoints move between them and Flax's
(tested). Their gradient is the closed form of normalisation's: with g = dy * scale and
means over the axes the statistics are taken over,

  dx = rsqrt(var + eps) * (g - mean(g) - xhat * mean(g * xhat)),

two reductions and one elementwise pass, where differentiating through the statistics
gives XLA several more ops per layer to fuse and compile (ResNet-20's train step has 57
fewer fused kernels; bench.kernel_census) and was slower per step on CPUs (bench/README.md).
Tests check the forward pass and all gradients against Flax's layers.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models import backend


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
              axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(x - mean) * rsqrt(var + eps) * scale + bias, with mean and variance over `axes`
  (float32, Flax's fast variance E[x^2] - E[x]^2 clipped at 0) and scale and bias over the
  last axis: -> (y, mean, var), the statistics with `axes` kept as size 1."""
  return _forward(x, scale, bias, epsilon, axes)[0]


def _scale_and_shift(x, mean, inv, scale, bias):
  """(x - mean) * (inv * scale) + bias in float32, in x, scale and bias's result type: the
  same operations in the same order as Flax's _normalize, so the outputs agree."""
  y = (x.astype(jnp.float32) - mean) * (inv * scale) + bias
  return y.astype(jnp.result_type(x, scale, bias))


def _forward(x, scale, bias, epsilon, axes):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axes, keepdims=True)
  raw_var = (x32 * x32).mean(axes, keepdims=True) - mean * mean
  var = jnp.maximum(0.0, raw_var)
  inv = jax.lax.rsqrt(var + epsilon)
  return (_scale_and_shift(x, mean, inv, scale, bias), mean, var), (x, scale, mean, inv, raw_var)


def _backward(epsilon, axes, residuals, cotangents):
  del epsilon  # in inv already
  x, scale, mean, inv, raw_var = residuals
  dy, d_mean, d_var = cotangents
  count = x.size // mean.size
  param_axes = tuple(range(x.ndim - 1))
  centered, dy32 = x.astype(jnp.float32) - mean, dy.astype(jnp.float32)
  xhat = centered * inv
  d_bias = dy32.sum(param_axes)
  d_scale = (dy32 * xhat).sum(param_axes)
  g = dy32 * scale
  # d loss / d mean and d loss / d var, through y and through the returned statistics.
  d_mean_total = d_mean - inv * g.sum(axes, keepdims=True)
  d_var_total = d_var - 0.5 * inv * inv * (g * xhat).sum(axes, keepdims=True)
  # The clipped variance is constant where the clip is active: no gradient through it.
  d_var_total = jnp.where(raw_var > 0, d_var_total, 0.0)
  # d mean / dx = 1 / count, d var / dx = 2 (x - mean) / count.
  dx = g * inv + (d_mean_total + d_var_total * 2.0 * centered) / count
  return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


normalize.defvjp(_forward, _backward)


def _normalize(x, scale, bias, epsilon, axes):
  """`normalize` with the closed-form gradient on CPUs, where it was measured faster; on
  GPUs and TPUs the same forward pass differentiated by JAX, as Flax's layers are, until a
  measurement there says otherwise (bigjax.models.backend)."""
  if backend.hand_written_kernels():
    return normalize(x, scale, bias, epsilon, axes)
  return _forward(x, scale, bias, epsilon, axes)[0]


def _affine(module: nn.Module, features: int):
  return (module.param("scale", module.scale_init, (features,), module.param_dtype),
          module.param("bias", module.bias_init, (features,), module.param_dtype))


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm(axis=-1)`'s parameters, collections and forward pass, with the
  closed-form gradient in training."""
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  param_dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    scale, bias = _affine(self, features)
    if use_running_average:
      return _scale_and_shift(x, ra_mean.value, jax.lax.rsqrt(ra_var.value + self.epsilon),
                              scale, bias)
    y, mean, var = _normalize(x, scale, bias, self.epsilon, tuple(range(x.ndim - 1)))
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.reshape(-1)
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.reshape(-1)
    return y


class LayerNorm(nn.Module):
  """`flax.linen.LayerNorm()`'s parameters and forward pass (over the last axis), with the
  closed-form gradient."""
  epsilon: float = 1e-6
  param_dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale, bias = _affine(self, x.shape[-1])
    return _normalize(x, scale, bias, self.epsilon, (x.ndim - 1,))[0]
