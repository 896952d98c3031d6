"""When to stop training: a target value and early stopping, as pure functions.

Both read metrics by key, "split/name" (e.g. "validation/accuracy", "validation/f1_macro",
"train/loss"), from the values the driver has after each epoch. Their state is a small JSON
dict that checkpoints carry, so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from typing import Any, Mapping

from bigjax.core.metrics import lower_is_better
from bigjax.registry import ConfigError
from bigjax.registry import did_you_mean

_OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_TARGET = re.compile(r"\s*([\w/]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*")


def lookup(values: Mapping[str, Mapping[str, Any]], key: str, config_key: str) -> float | None:
  """values["validation"]["accuracy"] for "validation/accuracy"; None if the split has not
  been evaluated yet; a ConfigError naming the known keys if the metric does not exist."""
  split, _, name = key.partition("/")
  if not name:
    raise ConfigError(f'{config_key}="{key}": name a metric as "split/metric", e.g. '
                      '"validation/accuracy" or "train/loss".')
  if split not in values:
    return None
  split_values = values[split]
  if name not in split_values or not isinstance(split_values[name], (int, float)):
    known = sorted(k for k, v in split_values.items() if isinstance(v, (int, float)))
    raise ConfigError(
        f'{config_key}="{key}": the {split} split has no metric "{name}".'
        f"{did_you_mean(name, known)} It has: {', '.join(known)}. (Metrics come from "
        "config.eval.metrics; precision, recall and f1 give <name>_macro and <name>_weighted.)")
  return float(split_values[name])


@dataclasses.dataclass(frozen=True)
class Target:
  """Stop once `key` `op` `value`, e.g. "validation/accuracy>=0.9"."""
  key: str
  op: str
  value: float

  @classmethod
  def parse(cls, spec: str) -> "Target | None":
    if not spec:
      return None
    match = _TARGET.fullmatch(spec)
    if not match:
      raise ConfigError(f'config.train.stop_when="{spec}": write "split/metric>=value", e.g. '
                        '"validation/accuracy>=0.9" or "train/loss<=0.1".')
    key, op, value = match.groups()
    try:
      return cls(key, op, float(value))
    except ValueError:
      raise ConfigError(f'config.train.stop_when="{spec}": "{value}" is not a number.') from None

  def reached(self, values: Mapping[str, Mapping[str, Any]]) -> bool:
    current = lookup(values, self.key, "config.train.stop_when")
    return current is not None and _OPERATORS[self.op](current, self.value)


def early_stopping_update(state: Mapping[str, Any] | None, value: float, *, mode: str,
                          patience: int, min_delta: float = 0.0) -> tuple[dict, bool]:
  """(new state, stop?) after one evaluation with metric `value`.

  An evaluation improves on the best so far when it is better by more than `min_delta`;
  training stops after `patience` evaluations in a row without improvement.
  """
  if mode not in ("min", "max"):
    raise ConfigError(f'early stopping mode must be "min" or "max"; got "{mode}".')
  state = dict(state or {"best": None, "bad_evals": 0})
  best = state["best"]
  improved = best is None or (value < best - min_delta if mode == "min"
                              else value > best + min_delta)
  if improved:
    state.update(best=value, bad_evals=0)
  else:
    state["bad_evals"] += 1
  return state, (not improved and state["bad_evals"] >= patience)


def mode_of(key: str, mode: str = "auto") -> str:
  """'min' for losses and errors, else 'max', unless given."""
  if mode != "auto":
    return mode
  return "min" if lower_is_better(key) else "max"
