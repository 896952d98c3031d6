"""Orbax checkpoints of the whole train state, plus JSON metadata (epoch, metrics).

Orbax writes each step to a temporary folder and renames it only when complete, so a crash
mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  pass


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, max_to_keep: int | None = 3,
                 create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Starts an (asynchronous where Orbax can) save; `manager.wait_until_finished()` ends it."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
      meta=ocp.args.JsonSave(meta)), force=True)


def restore(manager: ocp.CheckpointManager, step: int, target_state: Any) -> tuple[Any, dict]:
  """(state, meta) at `step`, shaped like `target_state` (whose values are not used)."""
  target_dict = flax.serialization.to_state_dict(target_state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_dict)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointMismatchError(
        f"The checkpoint at {manager.directory}/{step} does not fit the train state built "
        f"from this config (model, optimizer or data shape differ): {e}\nUse the config the "
        "run was trained with (its workdir's config.json), or another --workdir.") from e
  state = flax.serialization.from_state_dict(target_state, restored["state"])
  return state, dict(restored["meta"] or {})
