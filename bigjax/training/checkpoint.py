"""Orbax checkpoints of the whole train state, plus JSON metadata (epoch, metrics).

Orbax writes each step to a temporary folder and renames it only when complete, so a crash
mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging as py_logging
import os
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp

logging = py_logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  pass


# The two kinds of checkpoint a workdir holds, each in its own folder: the latest few (to
# resume from) and the best by config.checkpoint.best_metric (to evaluate or fine-tune from).
LATEST, BEST = "checkpoints", "checkpoints_best"


def checkpoint_dir(workdir: str, kind: str = LATEST) -> str:
  return os.path.join(os.path.abspath(workdir), kind)


def make_manager(workdir: str, max_to_keep: int | None = 3, create: bool = True,
                 kind: str = LATEST, async_save: bool = True) -> ocp.CheckpointManager:
  """With `async_save`, `save` returns once the arrays are copied off the device and the
  writing happens in a background thread (training goes on meanwhile)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir, kind), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()})


def list_steps(workdir: str, kind: str = LATEST) -> list[int]:
  """The complete checkpoints' steps in a workdir's folder of `kind`, ascending (Orbax's
  unfinished saves are named <step>.orbax-checkpoint-tmp-*, so they are not listed)."""
  folder = checkpoint_dir(workdir, kind)
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def pick_step(steps: list[int], step: str | int, folder: str) -> int:
  """The newest of `steps` for "latest" or "best" (a best folder keeps one), else `step`."""
  if step in ("latest", "best"):
    return max(steps)
  if int(step) not in steps:
    raise FileNotFoundError(f"{folder} has no checkpoint at step {step}; it has steps "
                            f"{sorted(steps)}. Pass latest, best, or one of those.")
  return int(step)


def latest_params(workdir: str) -> tuple[int, Any]:
  """(step, params) of a workdir's latest checkpoint, as saved (no config needed)."""
  manager = make_manager(workdir, create=False)
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return step, restored["state"]["params"]


def _shapes_by_path(tree: Any) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def mismatches(stored: Any, target: Any, input_channels: int | None = None) -> list[str]:
  """One line per path that is missing, unexpected, or of another shape.

  With `input_channels` (the data's), a conv kernel that differs only in its input channels,
  and takes the data's channels in this config, is named as a data/model channel mismatch.
  """
  a, b = _shapes_by_path(stored), _shapes_by_path(target)
  lines = [f"{p}: in the checkpoint, not in this config's state" for p in sorted(set(a) - set(b))]
  lines += [f"{p}: in this config's state, not in the checkpoint" for p in sorted(set(b) - set(a))]
  for p in sorted(set(a) & set(b)):
    if a[p] == b[p]:
      continue
    old, new = tuple(a[p]), tuple(b[p])
    if (input_channels is not None and len(old) == 4 and len(new) == 4 and old[:2] == new[:2]
        and old[3] == new[3] and new[2] == input_channels and p.startswith("['params']")
        and p.endswith("['kernel']")):
      lines.insert(0, f"{p}: the model was trained on {old[2]}-channel images, but this data "
                   f"has {new[2]} channels. Convert the images (e.g. grayscale <-> RGB) or use "
                   "the data config the model was trained with.")
    else:
      lines.append(f"{p}: checkpoint shape {a[p]}, this config's shape {b[p]}")
  return lines


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Starts an (asynchronous where Orbax can) save; `manager.wait_until_finished()` ends it."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
      meta=ocp.args.JsonSave(meta)), force=True)


def restore(manager: ocp.CheckpointManager, step: int, target_state: Any,
            input_channels: int | None = None) -> tuple[Any, dict]:
  """(state, meta) at `step`, shaped like `target_state` (whose values are not used)."""
  target_dict = flax.serialization.to_state_dict(target_state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_dict)
  # Compare shapes first: a clear list of every mismatched path, instead of Orbax's error
  # from deep inside an asynchronous read.
  problems = mismatches(manager.item_metadata(step)["state"], abstract, input_channels)
  if problems:
    raise CheckpointMismatchError(
        f"The checkpoint at {manager.directory}/{step} does not fit the train state built "
        "from this config (model, optimizer or data shape differ):\n  "
        + "\n  ".join(problems)
        + "\nUse the config the run was trained with (its workdir's config.json), or "
        "another --workdir.")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  state = flax.serialization.from_state_dict(target_state, restored["state"])
  return state, dict(restored["meta"] or {})


def restore_newest_intact(manager: ocp.CheckpointManager, target_state: Any,
                          input_channels: int | None = None) -> tuple[Any, dict, int] | None:
  """(state, meta, step) from the newest checkpoint that reads back whole, or None if there
  is none. A damaged one (a truncated or missing file) is skipped with a warning; a
  checkpoint that does not fit the config is an error, not damage. A damaged checkpoint is
  moved to <checkpoints>_damaged/<step> (kept for inspection), so training can save that
  step again."""
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      state, meta = restore(manager, step, target_state, input_channels)
      return state, meta, step
    except CheckpointMismatchError:
      raise
    except Exception as e:  # noqa: BLE001 -- Orbax/TensorStore raise many kinds
      older = [s for s in steps if s < step]
      aside = _move_aside(manager, step)
      logging.warning("checkpoint %s/%d is damaged (%s: %s); moved to %s; %s",
                      manager.directory, step, type(e).__name__, str(e).splitlines()[0][:200],
                      aside, f"trying step {older[0]}" if older else "no older checkpoint left")
  if steps:
    raise RuntimeError(
        f"Every checkpoint in {manager.directory} (steps {sorted(steps)}) is damaged. Move "
        "the folder away to start afresh, or restore it from a backup.")
  return None


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  source = os.path.join(str(manager.directory), str(step))
  aside_root = str(manager.directory).rstrip("/") + "_damaged"
  os.makedirs(aside_root, exist_ok=True)
  target = os.path.join(aside_root, str(step))
  suffix = 0
  while os.path.exists(target):
    suffix += 1
    target = os.path.join(aside_root, f"{step}.{suffix}")
  os.rename(source, target)
  manager.reload()
  return target
