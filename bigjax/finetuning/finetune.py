"""Fine-tuning: params from another run (`config.init_from`), frozen params, learning-rate
multipliers and layer-wise decay (`config.finetune`).

Paths are '/'-joined parameter names, e.g. "dense_0/kernel" or "head/bias"; every regex in
the config is searched (`re.search`) in them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigjax.core.regularization import path_mask
from bigjax.registry import ConfigError
from bigjax.training import checkpoint

# ------------------------------------------------------------------ paths


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "/"))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


# ------------------------------------------------------------------ reading a checkpoint


@dataclasses.dataclass
class Source:
  """A checkpoint to initialise from: where, which step, and what it holds."""
  directory: str           # the checkpoints folder
  step: int
  params: dict             # flat path -> array
  model_state: dict        # flat "collection/path" -> array
  model_name: str | None   # config.model.name of the run that wrote it, when known


def locate(path: str, step: str | int = "latest") -> tuple[str, str, int]:
  """(workdir, checkpoints folder kind, step) for a workdir, a checkpoints folder, or one
  checkpoint's step folder."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.init_from.path={path} does not exist. Point it at a "
                            "workdir of a finished run (or its checkpoints/<step> folder).")
  base = os.path.basename(path)
  if base.isdigit() and os.path.basename(os.path.dirname(path)) in (checkpoint.LATEST,
                                                                    checkpoint.BEST):
    return os.path.dirname(os.path.dirname(path)), os.path.basename(os.path.dirname(path)), int(base)
  if base in (checkpoint.LATEST, checkpoint.BEST):
    workdir, kind = os.path.dirname(path), base
  else:
    workdir, kind = path, checkpoint.BEST if step == "best" else checkpoint.LATEST
  folder = checkpoint.checkpoint_dir(workdir, kind)
  steps = checkpoint.list_steps(workdir, kind)
  if not steps:
    raise FileNotFoundError(
        f"config.init_from.path={path} holds no checkpoint (looked in {folder}). Train that "
        "run first, or point at the workdir of one that has finished an epoch.")
  return workdir, kind, checkpoint.pick_step(steps, step, folder)


def read_hf(path: str) -> Source:
  """A Hugging Face checkpoint folder (hf:FOLDER) as a Source in bigjax's param paths; its
  tensors with no place in bigjax's model appear in the load table as unused."""
  from bigjax.models import hf
  hf_config = hf.read_config(path)
  params = hf.convert(hf.read_tensors(path), hf_config)
  params = {key.replace("unused:", "(hf) "): value for key, value in params.items()}
  return Source(hf.folder_of(path), 0, params, {}, hf.model_config(hf_config)["name"])


def with_checkpoint_architecture(config):
  """The config with its model's architecture read from an hf: init_from checkpoint (the
  user names only the head, num_classes and dropout); other configs as they are."""
  from bigjax.models import hf
  path = config.init_from.path
  if not hf.is_hf(path):
    return config
  hf_config = hf.read_config(path)
  architecture = hf.model_config(hf_config)
  if config.model.name != architecture["name"]:
    raise ConfigError(
        f'config.init_from.path={path} is a {hf_config["model_type"]} checkpoint, which '
        f'bigjax builds as model "{architecture["name"]}", but config.model.name is '
        f'"{config.model.name}". Set --config.model.name={architecture["name"]} (with the '
        "head you want), or init_from a checkpoint of this model.")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.update(architecture)
  config.lock()
  return config


def read(path: str, step: str | int = "latest") -> Source:
  from bigjax.models import hf
  if hf.is_hf(path):
    return read_hf(path)
  workdir, kind, chosen = locate(path, step)
  # "latest" and "best" take the newest intact checkpoint; a step (or step folder) exactly it.
  named_step = os.path.basename(os.path.abspath(path)).isdigit() or str(step).isdigit()
  restored, _, chosen = checkpoint.read(workdir, chosen if named_step else step, kind=kind)
  model_name = None
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      model_name = json.load(f).get("model", {}).get("name")
  return Source(checkpoint.checkpoint_dir(workdir, kind), chosen,
                flatten(restored.get("params") or {}), flatten(restored.get("model_state") or {}),
                model_name)


# ------------------------------------------------------------------ matching


@dataclasses.dataclass
class Row:
  path: str
  status: str        # loaded | re-initialised | unused | shape-mismatched | missing
  source_shape: tuple | None
  target_shape: tuple | None
  why: str = ""


def plan(source: Mapping[str, Any], target: Mapping[str, Any], *, skip: str = "",
         reinit_mismatched: str = "") -> list[Row]:
  """What happens to every path: loaded, re-initialised (skipped, allowed mismatch),
  unused (in the source only), shape-mismatched or missing (errors in strict mode)."""
  skip_re = re.compile(skip) if skip else None
  reinit_re = re.compile(reinit_mismatched) if reinit_mismatched else None
  rows = []
  for path in sorted(set(source) | set(target)):
    src = tuple(np.shape(source[path])) if path in source else None
    tgt = tuple(np.shape(target[path])) if path in target else None
    skipped = bool(skip_re and skip_re.search(path))
    if tgt is None:
      rows.append(Row(path, "unused", src, None, "skipped" if skipped else ""))
    elif skipped:
      rows.append(Row(path, "re-initialised", src, tgt, "skipped by init_from.skip"))
    elif src is None:
      rows.append(Row(path, "missing", None, tgt, "not in the checkpoint"))
    elif src != tgt:
      if reinit_re and reinit_re.search(path):
        rows.append(Row(path, "re-initialised", src, tgt, "shape changed; allowed by "
                                                          "init_from.reinit_mismatched"))
      else:
        rows.append(Row(path, "shape-mismatched", src, tgt))
    else:
      rows.append(Row(path, "loaded", src, tgt))
  return rows


def table(rows: list[Row]) -> str:
  def shape(s):
    return "x".join(map(str, s)) if s else ("scalar" if s == () else "-")
  width = max([len(r.path) for r in rows] + [4])
  lines = [f"{'path':<{width}}  {'status':<16}  {'checkpoint':>14}  {'this model':>14}  note"]
  for r in rows:
    lines.append(f"{r.path:<{width}}  {r.status:<16}  {shape(r.source_shape):>14}  "
                 f"{shape(r.target_shape):>14}  {r.why}")
  counts = {}
  for r in rows:
    counts[r.status] = counts.get(r.status, 0) + 1
  lines.append(", ".join(f"{n} {status}" for status, n in counts.items()))
  return "\n".join(lines)


def load(state: Any, source: Source, init_config: Mapping[str, Any],
         model_name: str | None = None) -> tuple[Any, str]:
  """`state` with params (and, if asked, model state) taken from `source` as planned;
  returns (state, the table). Strict mode refuses unused, missing and mismatched paths."""
  from bigjax.finetuning import lora
  lora_on = lora.is_lora(state.params)
  target = flatten(state.params[lora.BASE] if lora_on else state.params)
  rows = plan(source.params, target, skip=init_config["skip"],
              reinit_mismatched=init_config["reinit_mismatched"])
  collections = {}
  if init_config["model_state"] and state.model_state:
    target_state = flatten(state.model_state)
    state_rows = plan(source.model_state, target_state, skip=init_config["skip"],
                      reinit_mismatched=init_config["reinit_mismatched"])
    rows += [dataclasses.replace(r, path="[state] " + r.path) for r in state_rows]
    collections = {r.path: source.model_state[r.path] for r in state_rows
                   if r.status == "loaded"}
  text = table(rows)
  bad = [r for r in rows if r.status in ("shape-mismatched", "missing")
         or (r.status == "unused" and not r.why)]
  loaded = [r for r in rows if r.status == "loaded"]
  if init_config["strict"] and bad or not loaded:
    family = (f' It was written by a "{source.model_name}" model'
              + (f'; this config builds a "{model_name}".' if model_name else ".")
              if source.model_name else "")
    details = "\n  ".join(
        f"{r.path}: {r.status}"
        + (f" (checkpoint {r.source_shape}, this model {r.target_shape})"
           if r.source_shape is not None and r.target_shape is not None else "")
        for r in (bad or rows))
    raise ConfigError(
        f"config.init_from: the checkpoint at {source.directory}/{source.step} does not fit "
        f"this model{' (nothing matched)' if not loaded else ''}.{family}\n  {details}\n"
        "Set config.init_from.skip to a regex of the paths not to load (e.g. '^head/' for "
        "a new head; it also silences unused paths), config.init_from.reinit_mismatched to "
        "let those paths re-initialise when their shapes differ, or "
        "config.init_from.strict=False to load only what fits.")
  params = dict(target)
  for r in loaded:
    if not r.path.startswith("[state] "):
      params[r.path] = jnp.asarray(source.params[r.path], dtype=target[r.path].dtype)
  loaded_params = unflatten(params)
  if lora_on:  # the adapters stay as initialised
    loaded_params = {lora.BASE: loaded_params, lora.ADAPTERS: state.params[lora.ADAPTERS]}
  new_state = state.replace(params=loaded_params)
  if collections:
    model_state = flatten(state.model_state)
    model_state.update({p: jnp.asarray(v, model_state[p].dtype) for p, v in collections.items()})
    new_state = new_state.replace(model_state=unflatten(model_state))
  return new_state, text


# ------------------------------------------------------------------ what trains, how fast


def trainable_mask(params: Any, freeze: str) -> Any:
  """True for params that train, False for those `freeze` matches."""
  if not freeze:
    return jax.tree.map(lambda _: True, params)
  return jax.tree.map(lambda frozen: not frozen, path_mask(params, freeze))


def parse_multipliers(spec: str) -> list[tuple[re.Pattern, float]]:
  """'^head/=10; conv=0.1' -> [(re '^head/', 10.0), (re 'conv', 0.1)]."""
  out = []
  for part in filter(None, (p.strip() for p in spec.split(";"))):
    regex, sep, value = part.rpartition("=")
    try:
      if not sep or not regex:
        raise ValueError
      out.append((re.compile(regex), float(value)))
    except (ValueError, re.error):
      raise ConfigError(f'config.finetune.lr_multipliers="{spec}": write "regex=factor" '
                        'pairs separated by ";", e.g. "^head/=10;^conv_0/=0.1".') from None
  return out


def learning_rate_factors(params: Mapping[str, Any], multipliers: str = "",
                          layer_decay: float = 1.0) -> dict:
  """A tree like `params` of per-parameter learning-rate factors: the product of every
  matching multiplier, times layer_decay ** (layers above it), where a layer is a top-level
  module in creation order (the last, usually the head, gets 1)."""
  pairs = parse_multipliers(multipliers)
  flat = flatten(params)
  layers = list(dict.fromkeys(path.split("/")[0] for path in flat))
  factors = {}
  for path in flat:
    factor = layer_decay ** (len(layers) - 1 - layers.index(path.split("/")[0]))
    for pattern, value in pairs:
      if pattern.search(path):
        factor *= value
    factors[path] = float(factor)
  return unflatten(factors)


def scale_updates(factors: Any) -> optax.GradientTransformation:
  """Multiplies each update by its (static) factor."""
  def init(params):
    return optax.EmptyState()

  def update(updates, state, params=None):
    return jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors), state

  return optax.GradientTransformation(init, update)


def wrap_optimizer(tx: optax.GradientTransformation, params: Any,
                   finetune_config: Mapping[str, Any]) -> optax.GradientTransformation:
  """Frozen params get zero updates and no optimizer state; the rest get `tx`, scaled by
  their learning-rate factors. Without any fine-tuning setting, `tx` is returned as is."""
  freeze = finetune_config["freeze"]
  multipliers = finetune_config["lr_multipliers"]
  decay = finetune_config["layer_decay"]
  if not freeze and not multipliers and decay == 1.0:
    return tx
  mask = trainable_mask(params, freeze)
  if not any(jax.tree.leaves(mask)):
    raise ConfigError(f'config.finetune.freeze="{freeze}" freezes every parameter: nothing '
                      "would train.")
  labels = jax.tree.map(lambda trains: "train" if trains else "frozen", mask)
  wrapped = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  if multipliers or decay != 1.0:
    wrapped = optax.chain(wrapped, scale_updates(learning_rate_factors(params, multipliers,
                                                                       decay)))
  return wrapped


def count_trainable(params: Any, freeze: str) -> tuple[int, int]:
  """(trainable, frozen) parameter counts."""
  mask = trainable_mask(params, freeze)
  trainable = sum(int(np.size(p)) for p, m in zip(jax.tree.leaves(params),
                                                  jax.tree.leaves(mask)) if m)
  total = sum(int(np.size(p)) for p in jax.tree.leaves(params))
  return trainable, total - trainable
