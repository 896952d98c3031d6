"""Optimizers, chosen by `config.optimizer.name`; the other keys are the factory's arguments.

Contract: an optimizer is any callable returning an `optax.GradientTransformation`.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import optax

from bigjax.registry import ConfigError, Registry, did_you_mean

OPTIMIZERS = Registry("optimizer")
register_optimizer = OPTIMIZERS.register
OPTIMIZERS.register("adam")(optax.adam)
OPTIMIZERS.register("sgd")(optax.sgd)


def _check_arguments(name: str, factory: Any, kwargs: Mapping[str, Any]) -> None:
  try:
    params = inspect.signature(factory).parameters
  except (TypeError, ValueError):
    return  # builtins without a signature: let the call itself complain
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return
  unknown = [k for k in kwargs if k not in params]
  if unknown:
    hints = "".join(did_you_mean(k, params) for k in unknown)
    raise ConfigError(
        f'config.optimizer has keys {unknown} that optimizer "{name}" does not take.{hints} '
        f"It takes: {', '.join(params)}.")


def build_optimizer(optimizer_config: Mapping[str, Any]) -> optax.GradientTransformation:
  kwargs = dict(optimizer_config)
  name = kwargs.pop("name")
  factory = OPTIMIZERS.get(name)
  _check_arguments(name, factory, kwargs)
  tx = factory(**kwargs)
  if not isinstance(tx, optax.GradientTransformation):
    raise ConfigError(
        f'Optimizer "{name}" returned {type(tx).__name__}, not an optax.GradientTransformation.')
  return tx
