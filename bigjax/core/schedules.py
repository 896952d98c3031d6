"""Learning-rate schedules, chosen by `config.optimizer.schedule.name`.

A schedule here is a *multiplier* of `config.optimizer.learning_rate` (1.0 = the base rate),
so the base rate stays an injected hyperparameter: changing it never recompiles anything.
Any schedule can be preceded by a linear warmup from 0 (`warmup_steps`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax.numpy as jnp
import optax

from bigjax.registry import ConfigError
from bigjax.registry import Registry

Schedule = Callable[[Any], Any]
SCHEDULES = Registry("schedule")
register_schedule = SCHEDULES.register


def _decay_steps(cfg: Mapping[str, Any], total_steps: int) -> int:
  """config decay_steps, or (when < 1) all the steps left after warmup."""
  steps = cfg["decay_steps"] if cfg["decay_steps"] > 0 else total_steps - cfg["warmup_steps"]
  return max(int(steps), 1)


@register_schedule("constant")
def constant(cfg, total_steps) -> Schedule:
  return optax.constant_schedule(1.0)


@register_schedule("cosine")
def cosine(cfg, total_steps) -> Schedule:
  """1 -> end_factor along a half cosine over decay_steps."""
  return optax.cosine_decay_schedule(1.0, _decay_steps(cfg, total_steps), alpha=cfg["end_factor"])


@register_schedule("linear")
def linear(cfg, total_steps) -> Schedule:
  """1 -> end_factor linearly over decay_steps."""
  return optax.linear_schedule(1.0, cfg["end_factor"], _decay_steps(cfg, total_steps))


@register_schedule("exponential")
def exponential(cfg, total_steps) -> Schedule:
  """decay_rate ** (step / transition_steps), smooth."""
  return optax.exponential_decay(1.0, cfg["transition_steps"], cfg["decay_rate"])


@register_schedule("piecewise")
def piecewise(cfg, total_steps) -> Schedule:
  """Step decay: at each of `boundaries` (steps) multiply by the matching `boundary_scales`."""
  boundaries, scales = tuple(cfg["boundaries"]), tuple(cfg["boundary_scales"])
  if len(boundaries) != len(scales):
    raise ConfigError(
        f"schedule piecewise needs as many boundary_scales as boundaries; got boundaries="
        f"{boundaries} and boundary_scales={scales}.")
  return optax.piecewise_constant_schedule(1.0, dict(zip(boundaries, scales)))


@register_schedule("reduce_on_plateau")
def reduce_on_plateau(cfg, total_steps) -> Schedule:
  """Constant here; bigjax.core.optimizers adds optax's reduce_on_plateau on the training loss."""
  return optax.constant_schedule(1.0)


def build_schedule(cfg: Mapping[str, Any], total_steps: int) -> Schedule:
  """The multiplier schedule, with linear warmup from 0 when `warmup_steps` > 0."""
  main = SCHEDULES.get(cfg["name"])(cfg, total_steps)
  warmup = int(cfg["warmup_steps"])
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(0.0, 1.0, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def values(schedule: Schedule, steps) -> list[float]:
  return [float(schedule(jnp.asarray(s))) for s in steps]
