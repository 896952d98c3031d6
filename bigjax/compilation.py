"""Counting XLA compilations, to check that training compiles once and then only runs.

A function that is traced again on new shapes, dtypes or Python values recompiles silently
and can cost more than the step it runs; the driver counts compilations per epoch and warns
when an epoch after the first compiles anything.
"""

from __future__ import annotations

import threading

import jax

# Emitted by JAX once per backend (XLA) compilation, with its duration.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
  """Counts backend compilations (and their seconds) while entered, in any thread.

    with CompileCounter() as compiles:
      ...
    compiles.count, compiles.seconds
  """

  def __init__(self):
    self.count = 0
    self.seconds = 0.0
    self._lock = threading.Lock()

  def _listen(self, event: str, duration_secs: float, **kwargs) -> None:
    del kwargs
    if event == BACKEND_COMPILE_EVENT:
      with self._lock:
        self.count += 1
        self.seconds += duration_secs

  def __enter__(self) -> "CompileCounter":
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)
