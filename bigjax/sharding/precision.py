"""Mixed precision: the dtype the forward and backward passes compute in, and the dtype
params are stored in (config.precision)."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from bigjax.registry import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype(name: str, key: str):
  if name not in DTYPES:
    raise ConfigError(f'config.precision.{key}="{name}": use one of {", ".join(DTYPES)}'
                      + (' or "auto"' if key == "compute_dtype" else "") + ".")
  return DTYPES[name]


def resolve(precision_config: Mapping[str, Any] | None) -> tuple[Any, Any]:
  """(compute dtype, param dtype). compute_dtype "auto" is bfloat16 on TPUs (their matrix
  units' native type) and float32 elsewhere."""
  config = dict(precision_config or {})
  compute = config.get("compute_dtype", "auto")
  if compute == "auto":
    compute = "bfloat16" if jax.default_backend() == "tpu" else "float32"
  return _dtype(compute, "compute_dtype"), _dtype(config.get("param_dtype", "float32"),
                                                  "param_dtype")


def describe(compute, params) -> str:
  return (f"compute {jnp.dtype(compute).name}, params {jnp.dtype(params).name}, "
          "losses and softmax float32")
