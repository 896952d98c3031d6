"""LoRA: low-rank adapters on dense and conv kernels, the base params frozen.

With `config.lora.rank = r > 0`, the train state's params become {"base": the model's
params, "lora": adapters}. Each targeted kernel W (dense [in, out], conv [kh, kw, in, out])
gets A [fan_in, r] (random) and B [r, out] (zeros, so training starts from the base model),
and the model runs with W + (alpha / r) * reshape(A @ B): for a conv this equals the conv
with A reshaped to [kh, kw, in, r] followed by a 1x1 conv with B. Only A and B train (the
"^base/" params are frozen: no updates, no optimizer state).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from bigjax.finetuning.finetune import flatten
from bigjax.finetuning.finetune import unflatten
from bigjax.registry import ConfigError

BASE, ADAPTERS = "base", "lora"


def is_lora(params: Mapping[str, Any]) -> bool:
  return isinstance(params, Mapping) and set(params) == {BASE, ADAPTERS}


def add_adapters(params: Mapping[str, Any], rank: int, targets: str, rng: jax.Array) -> dict:
  """{"base": params, "lora": {kernel path: {"a", "b"}}} for kernels matching `targets`."""
  pattern = re.compile(targets)
  adapters = {}
  flat = flatten(params)
  chosen = [p for p, w in flat.items() if pattern.search(p) and p.endswith("kernel")
            and jnp.ndim(w) in (2, 4)]
  if not chosen:
    raise ConfigError(f'config.lora.targets="{targets}" matches no dense or conv kernel. '
                      f"Kernels: {', '.join(p for p in flat if p.endswith('kernel'))}.")
  for i, path in enumerate(chosen):
    kernel = flat[path]
    fan_in, out = math.prod(kernel.shape[:-1]), kernel.shape[-1]
    a = jax.random.normal(jax.random.fold_in(rng, i), (fan_in, rank), kernel.dtype)
    adapters[path] = {"a": a / math.sqrt(fan_in), "b": jnp.zeros((rank, out), kernel.dtype)}
  return {BASE: dict(params), ADAPTERS: unflatten({f"{p}/{k}": v for p, ab in adapters.items()
                                                   for k, v in ab.items()})}


def merge(params: Mapping[str, Any], scale: float) -> dict:
  """The model's params with every adapter folded into its kernel: W + scale * A @ B."""
  flat = flatten(params[BASE])
  adapters = flatten(params[ADAPTERS])
  for path in {p.rsplit("/", 1)[0] for p in adapters}:
    kernel = flat[path]
    delta = adapters[f"{path}/a"] @ adapters[f"{path}/b"]
    flat[path] = kernel + (scale * delta).reshape(kernel.shape).astype(kernel.dtype)
  return unflatten(flat)


def count(params: Mapping[str, Any]) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params[ADAPTERS]))


class LoRAModel:
  """A model whose params are {"base", "lora"}: applies the wrapped module with the merged
  params, so gradients reach the adapters (and, unless frozen, the base)."""

  def __init__(self, module, scale: float):
    self.module = module
    self.scale = scale

  def apply(self, variables, *args, **kwargs):
    variables = dict(variables)
    variables["params"] = merge(variables["params"], self.scale)
    return self.module.apply(variables, *args, **kwargs)

  def __getattr__(self, name):  # everything else (e.g. for summaries) is the module's
    return getattr(self.module, name)
