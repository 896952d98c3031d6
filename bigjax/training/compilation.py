"""Counting XLA compilations, and JAX's persistent compilation cache.

A function that is traced again on new shapes, dtypes or Python values recompiles silently
and can cost more than the step it runs; the driver counts compilations per epoch and warns
when an epoch after the first compiles anything.

The persistent cache keeps compiled executables on disk, keyed by the lowered program, the
compile options, the devices and the jax/jaxlib versions, so a second run of the same
config loads its train step instead of compiling it again (run.py turns it on by default).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading

import jax

# Emitted by JAX once per backend (XLA) compilation, with its duration.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Emitted (as well) when the executable was read from the persistent cache.
CACHE_LOAD_EVENT = "/jax/compilation_cache/cache_retrieval_time_sec"
# Executables that compile faster than this are not worth a file each.
CACHE_MIN_COMPILE_SECONDS = 0.2

log = logging.getLogger("bigjax")


def enable_persistent_cache(directory: str) -> str | None:
  """Turns JAX's persistent compilation cache on at `directory` (`~` expanded); "" leaves
  it off. Call before the first compilation: JAX decides once per process whether a cache
  is in use. A directory set by the user through JAX_COMPILATION_CACHE_DIR wins. Returns
  the directory in use, or None."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  if not directory:
    return None
  directory = os.path.abspath(os.path.expanduser(directory))
  try:
    # Private to the user (0700): the cache holds compiled programs that JAX loads and runs,
    # so a folder others can write would let them run code as this user.
    os.makedirs(directory, mode=0o700, exist_ok=True)
  except OSError as e:  # a read-only home is no reason not to train
    log.warning("compilation cache off: cannot create %s (%s); pass --compilation_cache=DIR "
                "to put it elsewhere, or --compilation_cache= to silence this", directory, e)
    return None
  info = os.stat(directory)
  if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
    log.warning("compilation cache off: %s is %s; it must be yours and writable by you "
                "alone (chmod go-w, or pass --compilation_cache=DIR)", directory,
                "another user's" if info.st_uid != os.getuid() else "writable by others")
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
  return directory


@contextlib.contextmanager
def gc_paused():
  """Python's cyclic garbage collector off while entered (as it was on leaving). Tracing a
  model allocates objects by the hundred thousand, each batch of them triggering another
  collection, and once TensorFlow and JAX are imported every full collection walks a heap
  of about 200,000 objects (bench/results/compile_times_vs_session_start_cpu2.md). What
  tracing leaves behind is collected after, as always."""
  was_enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if was_enabled:
      gc.enable()


class CompileCounter:
  """Counts compilations (and their seconds) while entered, in any thread (JAX reports a
  compile in the thread that compiles). An executable loaded from the persistent cache
  counts too: it was traced and lowered again all the same.

    with CompileCounter() as compiles:
      ...
    compiles.count, compiles.seconds, compiles.cache_loads
  """

  def __init__(self):
    self.count = 0
    self.cache_loads = 0  # of `count`, those read from the persistent cache
    self.seconds = 0.0
    self._lock = threading.Lock()

  def _listen(self, event: str, duration_secs: float, **kwargs) -> None:
    del kwargs
    # JAX times a cache load as a backend compile too, and adds its own load event.
    if event == BACKEND_COMPILE_EVENT:
      with self._lock:
        self.count += 1
        self.seconds += duration_secs
    elif event == CACHE_LOAD_EVENT:
      with self._lock:
        self.cache_loads += 1

  def __enter__(self) -> "CompileCounter":
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)
