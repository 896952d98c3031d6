"""Small building blocks shared by the model families."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models import backend
from bigjax.models.norm import BatchNorm
from bigjax.models.norm import LayerNorm
from bigjax.registry import Registry

ACTIVATIONS = Registry("activation")
for _name, _fn in {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,                                   # the tanh approximation
    "gelu_exact": partial(jax.nn.gelu, approximate=False),  # the erf form (timm, BERT)
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "silu": jax.nn.silu,
    "identity": lambda x: x,
}.items():
  ACTIVATIONS.register(_name)(_fn)


def max_pool(x_BxHxWxC: jax.Array, window: int) -> jax.Array:
  """Non-overlapping max pooling (stride == window, 'VALID': trailing rows/cols dropped).

  Same values and gradients as `flax.linen.max_pool(x, (w, w), (w, w), 'VALID')`, ties
  included (the gradient goes to the first maximum of each window, row-major), but as a
  reshape and a max-reduction with a hand-written gradient: on XLA:CPU, reduce_window's
  gradient (select-and-scatter), and a reduction's own gradient (which splits ties), were
  both measured several times slower than `_first_max_gradient`.
  """
  b, h, w, c = x_BxHxWxC.shape
  if h // window < 1 or w // window < 1:
    raise ValueError(f"max_pool: a {h}x{w} input is smaller than the {window}x{window} window.")
  if not backend.hand_written_kernels():
    return nn.max_pool(x_BxHxWxC, (window, window), (window, window), "VALID")
  return _max_pool(x_BxHxWxC, window)


def _windows(x_BxHxWxC: jax.Array, window: int) -> jax.Array:
  """[B, H/w, w, W/w, w, C]: the input cropped to whole windows, each window on axes 2, 4."""
  b, h, w, c = x_BxHxWxC.shape
  ho, wo = h // window, w // window
  x = x_BxHxWxC[:, :ho * window, :wo * window, :]
  return x.reshape(b, ho, window, wo, window, c)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x_BxHxWxC: jax.Array, window: int) -> jax.Array:
  return _windows(x_BxHxWxC, window).max(axis=(2, 4))


def _max_pool_forward(x, window):
  y = _max_pool(x, window)
  return y, (x, y)


def _first_max_gradient(window, residuals, g_BxHOxWOxC):
  x, y = residuals
  win = _windows(x, window)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(window):
    row = []
    for j in range(window):
      first = (win[:, :, i, :, j, :] == y) & ~taken  # the first maximum takes the gradient
      taken = taken | first
      row.append(jnp.where(first, g_BxHOxWOxC, jnp.zeros_like(g_BxHOxWOxC)))
    rows.append(jnp.stack(row, axis=3))  # [B, HO, WO, w, C]
  b, ho, wo, c = y.shape
  d_x = jnp.stack(rows, axis=2).reshape(b, ho * window, wo * window, c)
  h, w = x.shape[1:3]
  return (jnp.pad(d_x, ((0, 0), (0, h - ho * window), (0, w - wo * window), (0, 0))),)


_max_pool.defvjp(_max_pool_forward, _first_max_gradient)


# Parameter-free layers as modules, so the summary report (bigjax.outputs.summary) lists them with
# their shapes; they add nothing to the parameter tree.


class Activation(nn.Module):
  """An activation from ACTIVATIONS, by name."""
  kind: str = "relu"

  def __call__(self, x: jax.Array) -> jax.Array:
    return ACTIVATIONS.get(self.kind)(x)


class MaxPool(nn.Module):
  """Non-overlapping max pooling (see `max_pool`)."""
  window: int = 2

  def __call__(self, x: jax.Array) -> jax.Array:
    return max_pool(x, self.window)


class Dropout(nn.Module):
  """`flax.linen.Dropout` (no broadcast dims): the same keys and masks, drawn flat. XLA:CPU
  compiled a multi-dimensional threefry draw several times slower than the same bits drawn
  as one vector and reshaped (bench.kernel_census)."""
  rate: float
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - self.rate
    if backend.hand_written_kernels():  # one flat draw: the same bits, faster to compile on CPUs
      mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.size,)).reshape(x.shape)
    else:  # nn.Dropout's own draw
      mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


class Flatten(nn.Module):
  """[B, ...] -> [B, features]."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


def per_layer(value, count: int, field: str) -> tuple:
  """A config value given once for all layers, or once per layer."""
  if isinstance(value, (list, tuple)):
    if len(value) != count:
      raise ValueError(f"{field} has {len(value)} entries for {count} layers; give one value "
                       "or one per layer.")
    return tuple(value)
  return (value,) * count


def normalization(kind: str, train: bool, name: str):
  """None, or a BatchNorm/LayerNorm module ('batch' | 'layer')."""
  if kind in ("none", "", None):
    return None
  if kind == "batch":
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
  if kind == "layer":
    return LayerNorm(name=name)
  raise ValueError(f'norm "{kind}": use "none", "batch" or "layer".')
