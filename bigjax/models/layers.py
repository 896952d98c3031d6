"""Small building blocks shared by the model families."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.registry import Registry

ACTIVATIONS = Registry("activation")
for _name, _fn in {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "silu": jax.nn.silu,
    "identity": lambda x: x,
}.items():
  ACTIVATIONS.register(_name)(_fn)


def max_pool(x_BxHxWxC: jax.Array, window: int) -> jax.Array:
  """Non-overlapping max pooling (stride == window, 'VALID': trailing rows/cols dropped).

  Same values and gradients as `flax.linen.max_pool(x, (w, w), (w, w), 'VALID')`, but as a
  reshape and a max-reduction: on XLA:CPU the gradient of reduce_window (select-and-scatter)
  is several times slower than the gradient of a plain reduction.
  """
  b, h, w, c = x_BxHxWxC.shape
  ho, wo = h // window, w // window
  if ho < 1 or wo < 1:
    raise ValueError(f"max_pool: a {h}x{w} input is smaller than the {window}x{window} window.")
  x = x_BxHxWxC[:, :ho * window, :wo * window, :]
  x = x.reshape(b, ho, window, wo, window, c)
  return x.max(axis=(2, 4))


# Parameter-free layers as modules, so the summary report (bigjax.summary) lists them with
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
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
  if kind == "layer":
    return nn.LayerNorm(name=name)
  raise ValueError(f'norm "{kind}": use "none", "batch" or "layer".')
