"""Preemption: SIGTERM and SIGINT save a checkpoint before the run exits.

The handler only records the signal; the training loop checks it after each step, saves, and
raises `Interrupted`, so a signal never lands in the middle of a step or a save.
"""

from __future__ import annotations

import logging as py_logging
import signal
import threading

logging = py_logging.getLogger(__name__)


class Interrupted(Exception):
  """Training stopped by a signal after saving a checkpoint; run again to resume."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; the "
                     "checkpoint there resumes it")
    self.signum, self.step = signum, step


class SaveOnSignal:
  """SIGTERM and SIGINT (preemption, Ctrl-C) ask the loop to save and stop after the current
  step, instead of dying mid-epoch. A second SIGINT interrupts at once."""

  def __init__(self):
    self.received: int | None = None
    self._previous: dict = {}

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name if self.received else ""

  def _handle(self, signum, frame):
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum
    logging.info("%s received: saving a checkpoint after this step (Ctrl-C again to quit "
                 "without saving)", signal.Signals(signum).name)

  def stop(self, manager, step: int) -> None:
    """After the loop saved at `step`: wait for the save, then raise Interrupted."""
    manager.wait_until_finished()
    logging.info("%s: saved a checkpoint at step %d; run the same command again to resume",
                 self.name, step)
    raise Interrupted(self.received, step)

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return  # only the main thread may handle signals
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)

  def uninstall(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
