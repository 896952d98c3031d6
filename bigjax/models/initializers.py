"""Weight initialisers, chosen by name in the model config (`kernel_init`, `bias_init`).

A spec is a name, optionally with a scale after a colon: "he_normal", "normal:0.05",
"orthogonal:1.4". The scale is the standard deviation for normal, the standard deviation of
the normal before truncation at +-2 for truncated_normal (Flax's convention), the half-width
for uniform (U(-s, s)), the gain for orthogonal, and a multiplier of the variance for the
fan-based schemes (default 1: Glorot's sqrt(2/(fan_in+fan_out)), He's sqrt(2/fan_in), LeCun's
sqrt(1/fan_in) standard deviations).
"""

from __future__ import annotations

from typing import Callable

from flax.linen import initializers as init
import jax
import jax.numpy as jnp

from bigjax.registry import ConfigError
from bigjax.registry import Registry

Initializer = Callable[..., jax.Array]
INITIALIZERS = Registry("initializer")


def _symmetric_uniform(scale: float) -> Initializer:
  def draw(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return draw


def _fan(scale: float, mode: str, distribution: str, base: float) -> Initializer:
  return init.variance_scaling(base * scale, mode, distribution)


_FACTORIES: dict[str, tuple[float, Callable[[float], Initializer]]] = {
    # name: (default scale, scale -> initializer)
    "normal": (0.01, init.normal),
    "truncated_normal": (0.01, init.truncated_normal),
    "uniform": (0.05, _symmetric_uniform),
    "xavier_normal": (1.0, lambda s: _fan(s, "fan_avg", "normal", 1.0)),
    "xavier_uniform": (1.0, lambda s: _fan(s, "fan_avg", "uniform", 1.0)),
    "he_normal": (1.0, lambda s: _fan(s, "fan_in", "normal", 2.0)),
    "he_uniform": (1.0, lambda s: _fan(s, "fan_in", "uniform", 2.0)),
    "lecun_normal": (1.0, lambda s: _fan(s, "fan_in", "truncated_normal", 1.0)),
    "lecun_uniform": (1.0, lambda s: _fan(s, "fan_in", "uniform", 1.0)),
    "orthogonal": (1.0, init.orthogonal),
    "zeros": (0.0, lambda s: init.zeros),
    "ones": (1.0, lambda s: init.ones),
}
_ALIASES = {"glorot_normal": "xavier_normal", "glorot_uniform": "xavier_uniform",
            "kaiming_normal": "he_normal", "kaiming_uniform": "he_uniform"}
for _name, (_default, _factory) in _FACTORIES.items():
  INITIALIZERS.register(_name)((_default, _factory))
for _alias, _name in _ALIASES.items():
  INITIALIZERS.register(_alias)(_FACTORIES[_name])


def get_initializer(spec: str) -> Initializer:
  """ "name" or "name:scale" -> a Flax initializer."""
  name, _, scale_text = str(spec).partition(":")
  entry = INITIALIZERS.get(name.strip())
  if not isinstance(entry, tuple):  # a dotted path to the user's own initializer
    if scale_text:
      raise ConfigError(f'Initializer "{spec}": a scale after ":" is only for built-in names.')
    return entry
  default, factory = entry
  try:
    scale = float(scale_text) if scale_text else default
  except ValueError:
    raise ConfigError(f'Initializer "{spec}": the part after ":" must be a number (the '
                      'scale), e.g. "normal:0.05".') from None
  return factory(scale)
