"""Devices: the mesh, how the batch and the train state are laid out on it, and the
multi-host runtime.

Default (`config.parallel.mode="jit"`): one program over a device mesh with axes
("data", "fsdp"). The global batch is split over every device; params and optimizer state
are replicated, except that with an fsdp axis of size > 1 the large ones (or those a regex
names) are split over it along their largest evenly divisible dimension, so a model too big
for one device trains. `mode="pmap"` runs the same pure step under `jax.pmap` instead.
"""

from __future__ import annotations

import logging as py_logging
import os
import re
from typing import Any, Mapping

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from bigjax.registry import ConfigError

logging = py_logging.getLogger(__name__)

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch is split over both: each device holds 1/N of it
MODES = ("jit", "pmap")


def maybe_initialize_distributed(parallel_config: Mapping[str, Any]) -> None:
  """Starts JAX's multi-host runtime when this process is one of several: always with
  distributed="on"; with "auto" when the environment names a coordinator or a multi-worker
  TPU slice / SLURM job. Must run before anything touches the devices."""
  mode = parallel_config.get("distributed", "auto")
  if mode not in ("auto", "on", "off"):
    raise ConfigError(f'config.parallel.distributed="{mode}": use auto, on or off.')
  env = os.environ
  several = (bool(env.get("JAX_COORDINATOR_ADDRESS"))
             or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
             or int(env.get("SLURM_NTASKS", "1") or 1) > 1)
  if not (mode == "on" or (mode == "auto" and several)) or jax.distributed.is_initialized():
    return
  if env.get("JAX_COORDINATOR_ADDRESS"):  # a launcher of your own (or a test) names it all
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not env.get(k)]
    if missing:
      raise ConfigError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not: set "
                        "all three (coordinator host:port, process count, this process's id).")
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                               int(env["JAX_PROCESS_ID"]))
  else:  # TPU pod slices, SLURM and Open MPI are detected by JAX itself
    jax.distributed.initialize()


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ConfigError(f'config.parallel.mode="{mode}": use "jit" (a device mesh with named '
                      'shardings, the default) or "pmap".')
  return mode


def check_platform(platform: str) -> None:
  """config.parallel.platform ("" = whatever JAX found) must be what JAX is running on."""
  if not platform:
    return
  if platform not in ("cpu", "gpu", "tpu"):
    raise ConfigError(f'config.parallel.platform="{platform}": use "", cpu, gpu or tpu.')
  found = jax.default_backend()
  if found != platform:
    raise ConfigError(
        f"config.parallel.platform={platform!r}, but JAX is running on {found.upper()} "
        f"({jax.device_count()} device(s)): JAX found no {platform.upper()}, or its plugin is "
        f"not installed (pip install 'jax[{'cuda12' if platform == 'gpu' else platform}]'). "
        "On Colab, Runtime > Change runtime type. Or set --config.parallel.platform=\"\" to "
        "run on what is there.")


def select_devices(num_devices: int) -> list:
  devices = jax.devices()
  if num_devices in (-1, 0, None):
    return devices
  if num_devices > len(devices):
    raise ConfigError(
        f"config.parallel.num_devices={num_devices}, but JAX sees {len(devices)} "
        f"{devices[0].platform.upper()} device(s). Use --config.parallel.num_devices=-1 "
        f"(all) or a number up to {len(devices)}.")
  if jax.process_count() > 1:
    raise ConfigError("config.parallel.num_devices must be -1 (every device) with several "
                      "host processes.")
  return devices[:num_devices]


def build_mesh(parallel_config: Mapping[str, Any]) -> Mesh:
  """The ("data", "fsdp") mesh over the selected devices; a -1 axis takes what is left."""
  check_platform(parallel_config.get("platform", ""))
  devices = select_devices(parallel_config.get("num_devices", -1))
  n = len(devices)
  shape = dict(parallel_config.get("mesh") or {"data": -1, "fsdp": 1})
  unknown = sorted(set(shape) - set(AXES))
  if unknown:
    raise ConfigError(f"config.parallel.mesh has unknown axes {unknown}; its axes are "
                      f"{list(AXES)}.")
  sizes = [int(shape.get(axis, 1)) for axis in AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"config.parallel.mesh={shape}: give positive sizes, at most one -1.")
  if free:
    fixed = int(np.prod([s for s in sizes if s != -1]))
    if n % fixed:
      raise ConfigError(f"config.parallel.mesh={shape}: {n} devices do not divide by "
                        f"{fixed}; use sizes whose product divides {n}.")
    sizes[free[0]] = n // fixed
  if int(np.prod(sizes)) != n:
    raise ConfigError(
        f"config.parallel.mesh={dict(zip(AXES, sizes))} multiplies to {int(np.prod(sizes))} "
        f"devices, but {n} are in use. Make the sizes multiply to {n} (e.g. data={n}, "
        "fsdp=1), or set one to -1.")
  return Mesh(np.asarray(devices).reshape(sizes), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.train.batch_size"
                     ) -> None:
  n = mesh.size
  if batch_size % n:
    lower, upper = (batch_size // n) * n, -(-batch_size // n) * n
    sizes = ", ".join(str(s) for s in (lower, upper) if s > 0)
    raise ConfigError(f"{what}={batch_size} does not divide over the {n} devices in use; "
                      f"use a multiple of {n} (e.g. {sizes}), or fewer devices "
                      "(config.parallel.num_devices).")


def leaf_spec(path: str, shape: tuple, fsdp: int, min_size: int, regex: str) -> P:
  """Replicated, or split over "fsdp" along the largest dimension that divides evenly."""
  if fsdp <= 1 or not shape:
    return P()
  wanted = (regex and re.search(regex, path)) or int(np.prod(shape)) >= min_size
  if not wanted:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(state: Any, mesh: Mesh, parallel_config: Mapping[str, Any]) -> Any:
  """A NamedSharding for every leaf of the train state (params, optimizer state, ...)."""
  fsdp = mesh.shape["fsdp"]
  min_size = int(parallel_config.get("fsdp_min_size", 2 ** 18))
  regex = parallel_config.get("fsdp_regex", "") or ""

  def one(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, leaf_spec(jax.tree_util.keystr(path), shape, fsdp, min_size,
                                         regex))
  return jax.tree_util.tree_map_with_path(one, state)


def put_global_batch(batch: Any, sharding: NamedSharding) -> Any:
  """A process-local batch (this host's share) as one global array split over the mesh."""
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicate_per_device(tree: Any, devices: list) -> Any:
  """Each leaf stacked [len(devices), ...], copy i on device i: the inputs `jax.pmap` takes."""
  sharding = NamedSharding(Mesh(np.asarray(devices), ("devices",)), P("devices"))
  return jax.tree.map(lambda x: jax.device_put(
      np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))), sharding), tree)


def topology(mesh: Mesh, mode: str, batch_size: int) -> str:
  """The start-of-run table: processes, devices, mesh and batch per device."""
  device = mesh.devices.flat[0]
  rows = [("processes", f"{jax.process_count()} (this is {jax.process_index()})"),
          ("devices", f"{mesh.size} in use of {jax.device_count()} "
                      f"({jax.local_device_count()} local) {device.platform.upper()} "
                      f"{getattr(device, 'device_kind', '')}"),
          ("mode", mode),
          ("mesh", " x ".join(f"{axis}={size}" for axis, size in mesh.shape.items())),
          ("batch", f"global {batch_size}, per device {batch_size // mesh.size}")]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def describe_shardings(shardings: Any) -> str:
  """'12 of 34 arrays split over fsdp', for the log."""
  specs = [s.spec for s in jax.tree.leaves(shardings, is_leaf=lambda x: hasattr(x, "spec"))]
  split = sum(1 for spec in specs if any(axis is not None for axis in spec))
  return f"{split} of {len(specs)} state arrays split over fsdp"
