"""Orbax checkpoints of the whole train state, plus JSON metadata (epoch, metrics, and an
integrity record of every array).

Orbax writes each step to a temporary folder and renames it only when complete, so a crash
mid-save leaves the previous checkpoint intact. What happens to it later (a flipped bit, a
truncated or deleted file) is caught on restore: every array's shape, dtype and two
checksums of its bits are in the metadata, and every restore (resume, eval, predict, sample,
init_from, resume_from) goes through `restore`, which checks them. A state that is not
finite is never saved.
"""

from __future__ import annotations

import errno
import logging as py_logging
import os
import shutil
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

logging = py_logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
  """The checkpoint is whole but does not fit this config's train state."""


class DamagedCheckpointError(RuntimeError):
  """The checkpoint does not read back as it was written."""


class CheckpointAccessError(PermissionError):
  """The checkpoint cannot be read for a reason outside it (permissions): not damage."""


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


def _shapes_by_path(tree: Any) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def mismatches(stored: Any, target: Any, input_channels: int | None = None) -> list[str]:
  """One line per path that is missing, unexpected, or of another shape.

  With `input_channels` (the data's), a conv kernel that differs only in its input channels,
  and takes the data's channels in this config, is named as a data/model channel mismatch.
  """
  return _mismatch_lines(_shapes_by_path(stored), _shapes_by_path(target), input_channels)


def _mismatch_lines(a: dict[str, tuple], b: dict[str, tuple],
                    input_channels: int | None) -> list[str]:
  """mismatches() on {path: shape} of the stored and the target state."""
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


# ------------------------------------------------------------------ integrity records

_ODD = np.uint32(2654435761)  # Knuth's multiplicative hash constant


def _words(x: jax.Array) -> jax.Array:
  """The array's bits as uint32 words (1- and 2-byte types widened, 8-byte split)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


def _summaries(tree: Any) -> tuple[dict, jax.Array]:
  """Per leaf: [sum of words, position-weighted sum of words] mod 2^32 (any one flipped bit
  changes the first, since 2^k is not 0 mod 2^32; swapped words change the second, whose
  weights are odd and differ by position); and whether every float is finite."""
  sums, finite = {}, jnp.array(True)
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    words = _words(leaf)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * _ODD * np.uint32(2) + np.uint32(1)
    sums[jax.tree_util.keystr(path)] = jnp.stack([words.sum(dtype=jnp.uint32),
                                                  (words * weights).sum(dtype=jnp.uint32)])
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
      finite = finite & jnp.isfinite(leaf).all()
  return sums, finite


_summaries_jit = jax.jit(_summaries)


def integrity_record(tree: Any) -> tuple[dict, bool]:
  """({path: [shape, dtype, sum, weighted sum]}, all floats finite) of a state dict."""
  tree = jax.tree.map(jnp.asarray, tree)
  sums, finite = jax.device_get(_summaries_jit(tree))
  leaves = dict((jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree))
  return ({path: [list(leaves[path].shape), str(leaves[path].dtype), int(s[0]), int(s[1])]
           for path, s in sums.items()}, bool(finite))


def _verify(tree: Any, record: dict, where: str) -> None:
  actual, _ = integrity_record(tree)
  if set(actual) != set(record):
    missing = sorted(set(record) - set(actual)) + sorted(set(actual) - set(record))
    raise DamagedCheckpointError(
        f"{where} is damaged: its arrays are not those it recorded ({', '.join(missing[:3])})")
  bad = [path for path in record if actual[path] != record[path]]
  if bad:
    raise DamagedCheckpointError(
        f"{where} is damaged: {len(bad)} of {len(record)} arrays differ from what was saved "
        f"(checksum mismatch in {', '.join(bad[:3])})")


# ------------------------------------------------------------------ save


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> bool:
  """Starts an (asynchronous where Orbax can) save; `manager.wait_until_finished()` ends it.
  A state with a NaN or infinity is not written (returns False): a diverged run must not
  replace the last good checkpoint with one that every resume would load."""
  state_dict = flax.serialization.to_state_dict(state)
  record, finite = integrity_record(state_dict)
  if not finite:
    logging.warning("not saving step %d to %s: the train state holds NaN or infinite "
                    "values (the last finite checkpoint stays the latest)", step,
                    manager.directory)
    return False
  _check_free_space(manager, step, record)
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state_dict),
      meta=ocp.args.JsonSave({**meta, "arrays": record})), force=True)
  return True


class DiskFullError(RuntimeError):
  """Too little free disk space for the next checkpoint (none was written)."""


def _check_free_space(manager: ocp.CheckpointManager, step: int, record: dict) -> None:
  """Refuses a save the disk cannot hold, before Orbax half-writes it and fails in its
  threads: the checkpoint's size (its arrays' bytes; a save still in flight counted again)
  with a 10% margin and 1 MB of metadata, against the free space of a local workdir."""
  directory = str(manager.directory)
  if not os.path.isdir(directory):
    return  # a remote (gs://...) path: the store reports its own errors
  size = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
             for shape, dtype, _, _ in record.values())
  in_flight = getattr(manager, "is_saving_in_progress", lambda: True)()
  need = int(1.1 * size * (2 if in_flight else 1)) + 2 ** 20
  free = shutil.disk_usage(directory).free
  if free < need:
    raise DiskFullError(
        f"The disk holding {directory} has {free / 2 ** 20:.1f} MB free; saving step {step} "
        f"needs about {need / 2 ** 20:.1f} MB. The checkpoints before it are intact: free "
        "some space (or use another --workdir's disk) and run the same command again to "
        "resume.")


# ------------------------------------------------------------------ restore


def _access_problem(error: BaseException) -> str | None:
  """A permission error anywhere in the exception's chain, as one line; else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, PermissionError) or (
        isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM)):
      return str(error)
    text = str(error)
    if "Permission denied" in text or "PERMISSION_DENIED" in text:
      return text.splitlines()[0][:300]
    error = error.__cause__ or error.__context__
  return None


def _first_line(error: BaseException) -> str:
  """The error's type and first sentence (TensorStore appends pages of its spec)."""
  text = str(error).split(" See full TensorStore details")[0].splitlines()
  return f"{type(error).__name__}: {(text[0] if text else '')[:200]}"


def _read_meta(manager: ocp.CheckpointManager, step: int, where: str) -> dict:
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # noqa: BLE001 (a missing or unreadable JSON file: many kinds)
    if _access_problem(e):
      raise CheckpointAccessError(f"{where}: cannot read it: {_access_problem(e)}. Fix the "
                                  "permissions of the workdir.") from e
    raise DamagedCheckpointError(f"{where} is damaged: its metadata does not read back "
                                 f"({_first_line(e)})") from e
  if not isinstance(meta, dict):
    raise DamagedCheckpointError(f"{where} is damaged: its metadata is empty")
  return meta


def _restore_one(manager: ocp.CheckpointManager, step: int, target_state: Any | None,
                 input_channels: int | None) -> tuple[Any, dict]:
  """(state or raw state dict, meta) at `step`, checked; raises CheckpointMismatchError,
  DamagedCheckpointError or CheckpointAccessError."""
  where = f"checkpoint {manager.directory}/{step}"
  meta = _read_meta(manager, step, where)
  record = meta.pop("arrays", None)  # None: saved before integrity records (not verified)
  abstract = None
  if target_state is not None:
    target_dict = flax.serialization.to_state_dict(target_state)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_dict)
    # Compare shapes first: a clear list of every mismatched path, instead of Orbax's error
    # from deep inside an asynchronous read. Against the record written at save time where
    # there is one, so damaged Orbax metadata is not mistaken for a config change.
    if record is not None:
      problems = _mismatch_lines({path: tuple(entry[0]) for path, entry in record.items()},
                                 _shapes_by_path(abstract), input_channels)
    else:
      try:
        stored_tree = manager.item_metadata(step)["state"]
      except Exception as e:  # noqa: BLE001
        raise DamagedCheckpointError(
            f"{where} is damaged: its array metadata does not read back ({_first_line(e)})"
        ) from e
      problems = mismatches(stored_tree, abstract, input_channels)
    if problems:
      raise CheckpointMismatchError(
          f"The checkpoint at {manager.directory}/{step} does not fit the train state built "
          "from this config (model, optimizer or data shape differ):\n  "
          + "\n  ".join(problems)
          + "\nUse the config the run was trained with (its workdir's config.json), or "
          "another --workdir.")
  wanted = abstract
  if record is not None and abstract is not None:  # read as stored, checked, then cast
    abstract = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jax.ShapeDtypeStruct(
            leaf.shape, record[jax.tree_util.keystr(path)][1],
            sharding=getattr(leaf, "sharding", None)), abstract)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
  except Exception as e:  # noqa: BLE001 -- Orbax/TensorStore raise many kinds
    problem = _access_problem(e)
    if problem:
      raise CheckpointAccessError(f"{where}: cannot read it: {problem}. Fix the permissions "
                                  "of the workdir.") from e
    raise DamagedCheckpointError(
        f"{where} is damaged: its arrays do not read back ({_first_line(e)})") from e
  if record is not None:
    _verify(restored, record, where)
    if wanted is not None:
      restored = jax.tree.map(lambda x, want: x if x.dtype == want.dtype else
                              x.astype(want.dtype), restored, wanted)
  if target_state is not None:
    restored = flax.serialization.from_state_dict(target_state, restored)
  return restored, meta


def restore(manager: ocp.CheckpointManager, step: int | str, target_state: Any | None = None,
            input_channels: int | None = None, *, fall_back: bool = False,
            quarantine: bool = False) -> tuple[Any, dict, int]:
  """(state, meta, step) from `manager`'s checkpoint at `step` ("latest", "best" or a
  number), shaped like `target_state` (or the raw state dict without one), its integrity
  checked. With `fall_back`, a damaged checkpoint is skipped with a warning for the next
  older one; with `quarantine` (training, which will save that step again) it is also moved
  to <checkpoints>_damaged/<step>. A checkpoint that does not fit the config, or cannot be
  read for its permissions, is an error, never damage."""
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
  if step in ("latest", "best"):
    candidates = steps if fall_back else steps[:1]
  else:
    if int(step) not in steps:
      raise FileNotFoundError(f"{manager.directory} has no checkpoint at step {step}; it has "
                              f"steps {sorted(steps)}. Pass latest, best, or one of those.")
    candidates = [int(step)]
  damaged = []
  for candidate in candidates:
    try:
      state, meta = _restore_one(manager, candidate, target_state, input_channels)
      return state, meta, candidate
    except DamagedCheckpointError as e:
      damaged.append(candidate)
      older = [s for s in candidates if s < candidate]
      aside = f"; moved to {_move_aside(manager, candidate)}" if quarantine else ""
      logging.warning("%s%s; %s", e, aside,
                      f"trying step {older[0]}" if older else "no older checkpoint left")
  others = sorted(set(steps) - set(damaged))
  raise DamagedCheckpointError(
      f"The checkpoint{'s' if len(damaged) > 1 else ''} at step "
      f"{', '.join(map(str, sorted(damaged)))} in {manager.directory} "
      f"{'are' if len(damaged) > 1 else 'is'} damaged"
      + (f" (moved to {str(manager.directory).rstrip('/')}_damaged)" if quarantine else "")
      + (f"; intact steps may be {others}: pass one of them." if others else
         "; restore the workdir from a backup, or train again in a new --workdir."))


def restore_newest_intact(manager: ocp.CheckpointManager, target_state: Any,
                          input_channels: int | None = None) -> tuple[Any, dict, int] | None:
  """Training's resume: (state, meta, step) from the newest intact checkpoint, damaged ones
  quarantined; None when the workdir has none. A workdir whose every checkpoint was found
  damaged (now or by an earlier run) refuses to start afresh: the one line says what to do."""
  aside = str(manager.directory).rstrip("/") + "_damaged"
  if not manager.all_steps():
    if os.path.isdir(aside) and os.listdir(aside):
      raise DamagedCheckpointError(
          f"{manager.directory} has no intact checkpoint: the damaged ones are in {aside}. "
          f"Delete or move {aside} to train this workdir from step 0, or restore the "
          "checkpoints from a backup.")
    return None
  return restore(manager, "latest", target_state, input_channels, fall_back=True,
                 quarantine=True)


def require(workdir: str, step: str | int = "latest", what: str = "",
            kind: str | None = None) -> None:
  """Fails fast (before any data is loaded) when the workdir has no checkpoint to read."""
  kind = kind or (BEST if step == "best" else LATEST)
  if not list_steps(workdir, kind):
    why = (" (config.checkpoint.best_metric was off, or no epoch has ended)"
           if kind == BEST else "")
    raise FileNotFoundError(
        f"No checkpoint in {checkpoint_dir(workdir, kind)}{why}{what}: train this workdir "
        f"first (python run.py --config=... --workdir={os.path.abspath(workdir)}).")


def read(workdir: str, step: str | int = "latest", target_state: Any | None = None,
         input_channels: int | None = None, kind: str | None = None) -> tuple[Any, dict, int]:
  """(state, meta, step) of a workdir's checkpoint for eval, predict, sample and init_from
  (`kind` defaults to checkpoints_best for step "best"): the newest intact one for "latest"
  and "best" (damaged ones skipped with a warning and left where they are), exactly `step`
  otherwise."""
  kind = kind or (BEST if step == "best" else LATEST)
  require(workdir, step, kind=kind)
  manager = make_manager(workdir, create=False, kind=kind)
  try:
    return restore(manager, step, target_state, input_channels, fall_back=True)
  finally:
    manager.close()


def latest_params(workdir: str) -> tuple[int, Any]:
  """(step, params) of a workdir's latest intact checkpoint, as saved (no config needed)."""
  state, _, step = read(workdir)
  return step, state["params"]


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
