"""Magnitude pruning to a target sparsity on a gradual schedule (Zhu & Gupta 2017,
"To prune, or not to prune"), during training or fine-tuning.

The pruning is an optax transformation chained after the optimizer: its state holds one
0/1 mask per pruned kernel, so masks live in the train state, are checkpointed with it and
resume bit for bit. Every step it turns the optimizer's update into one that lands on
`mask * (params + update)`, so a pruned weight is exactly zero after every step whatever
the optimizer's momentum says. Every `every_steps` steps between `start_step` and
`end_step` the masks are recomputed from the weights' magnitudes to the schedule's sparsity

    s_t = s_final + (s_initial - s_final) * (1 - (t - start) / (end - start)) ** 3,

per kernel ("layer") or over all of them together ("global"). Written here because optax
has no magnitude-pruning transformation and qwix prunes only inside its own quantized
layers; this one works with any optimizer, model and parallel layout bigjax trains.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigjax.core.regularization import path_mask
from bigjax.registry import ConfigError


class PruneState(NamedTuple):
  count: jax.Array  # steps taken
  masks: Any        # like params: a 0/1 mask (the param's dtype) for pruned kernels, else ()


def is_on(prune_config: Mapping[str, Any] | None) -> bool:
  return bool(prune_config) and float(prune_config.get("sparsity", 0.0)) > 0.0


def targets(params: Any, include: str) -> Any:
  """True for the params that are pruned: path matches `include`, 2 or more dimensions."""
  matched = path_mask(params, include)
  return jax.tree.map(lambda hit, p: bool(hit) and np.ndim(p) >= 2, matched, params)


def schedule(prune_config: Mapping[str, Any], total_steps: int):
  """step -> the sparsity the masks are recomputed to at that step (a jnp function), and
  (start, end, every) resolved."""
  final = float(prune_config["sparsity"])
  initial = float(prune_config.get("initial_sparsity", 0.0))
  start = int(prune_config.get("start_step", 0))
  end = int(prune_config.get("end_step", -1))
  end = int(0.75 * total_steps) if end < 0 else end  # then fine-tune at the final sparsity
  every = int(prune_config.get("every_steps", 100))
  if not 0.0 < final < 1.0 or not 0.0 <= initial <= final:
    raise ConfigError(f"config.prune.sparsity={final} (initial_sparsity={initial}): use "
                      "0 <= initial_sparsity <= sparsity < 1 (e.g. 0.8 for 80% zeros).")
  if every < 1 or end < start:
    raise ConfigError(f"config.prune: every_steps={every}, start_step={start}, end_step={end}"
                      f": use every_steps >= 1 and start_step <= end_step (of "
                      f"{total_steps} steps).")

  def sparsity_at(step):
    progress = jnp.clip((step - start) / max(end - start, 1), 0.0, 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3

  return sparsity_at, (start, end, every)


def _keep_top(magnitudes: jax.Array, sparsity) -> jax.Array:
  """A 0/1 mask keeping all but the floor(sparsity * n) smallest entries (exactly)."""
  flat = magnitudes.ravel()
  n_pruned = jnp.floor(sparsity * flat.size).astype(jnp.int32)
  ranks = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)
  return (ranks >= n_pruned).reshape(magnitudes.shape)


def new_masks(params: Any, pruned: Any, sparsity, scope: str) -> Any:
  if scope == "layer":
    return jax.tree.map(lambda p, hit: _keep_top(jnp.abs(p), sparsity).astype(p.dtype)
                        if hit else (), params, pruned)
  leaves = [p for p, hit in zip(jax.tree.leaves(params), jax.tree.leaves(pruned)) if hit]
  keep = _keep_top(jnp.concatenate([jnp.abs(p).ravel().astype(jnp.float32)
                                    for p in leaves]), sparsity)
  pieces, offset = [], 0
  for p in leaves:
    pieces.append(keep[offset:offset + p.size].reshape(p.shape).astype(p.dtype))
    offset += p.size
  pieces_iter = iter(pieces)
  return jax.tree.map(lambda hit: next(pieces_iter) if hit else (), pruned)


def transformation(prune_config: Mapping[str, Any], total_steps: int,
                   params_shapes: Any) -> optax.GradientTransformation:
  """The pruning step to chain after an optimizer (see the module's docstring)."""
  scope = prune_config.get("scope", "layer")
  if scope not in ("layer", "global"):
    raise ConfigError(f'config.prune.scope="{scope}": use "layer" or "global".')
  include = prune_config.get("include", "kernel")
  try:
    re.compile(include)
  except re.error as e:
    raise ConfigError(f'config.prune.include="{include}" is not a regex ({e}).') from None
  pruned = targets(params_shapes, include)
  if not any(jax.tree.leaves(pruned)):
    raise ConfigError(f'config.prune.include="{include}" matches no kernel (a param of 2 or '
                      "more dimensions whose path matches): nothing would be pruned.")
  sparsity_at, (start, end, every) = schedule(prune_config, total_steps)

  def init(params):
    masks = jax.tree.map(lambda p, hit: jnp.ones_like(p) if hit else (), params, pruned)
    return PruneState(jnp.zeros((), jnp.int32), masks)

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("pruning needs the params (optax.chain passes them)")
    step = state.count
    due = (step >= start) & (step <= end) & ((step - start) % every == 0)
    proposed = jax.tree.map(lambda p, u: p + u, params, updates)
    masks = jax.lax.cond(due, lambda: new_masks(proposed, pruned, sparsity_at(step), scope),
                         lambda: state.masks)
    updates = jax.tree.map(lambda p, u, m, hit: (m * (p + u) - p).astype(u.dtype) if hit else u,
                           params, updates, masks, pruned)
    return updates, PruneState(step + 1, masks)

  return optax.GradientTransformation(init, update)


def wrap(tx: optax.GradientTransformation, prune_config: Mapping[str, Any] | None,
         total_steps: int, params_shapes: Any) -> optax.GradientTransformation:
  if not is_on(prune_config):
    return tx
  return optax.chain(tx, transformation(prune_config, total_steps, params_shapes))


def nonzero_report(params: Any, include: str = "kernel") -> dict:
  """Per pruned kernel ('/'-joined path): non-zero count and size; and the totals."""
  from bigjax.finetuning.finetune import flatten
  flat = flatten(jax.device_get(params))
  pruned = flatten(targets(params, include))
  layers = {path: {"nonzero": int(np.count_nonzero(value)), "size": int(np.size(value))}
            for path, value in flat.items() if pruned.get(path)}
  kept = sum(v["nonzero"] for v in layers.values())
  size = sum(v["size"] for v in layers.values())
  all_nonzero = sum(int(np.count_nonzero(v)) for v in flat.values())
  return {"layers": layers, "pruned_sparsity": 1.0 - kept / max(size, 1),
          "nonzero_params": all_nonzero,
          "params": int(sum(np.size(v) for v in flat.values()))}
