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
  """Training stopped by a signal after saving a checkpoint (or before it had anything to
  save); run again to resume."""

  def __init__(self, signum: int, step: int, what: str = ""):
    super().__init__(what or f"stopped by {signal.Signals(signum).name} at step {step}; the "
                     "checkpoint there resumes it")
    self.signum, self.step = signum, step


class SaveOnSignal:
  """SIGTERM and SIGINT (preemption, Ctrl-C), from start-up to the last output, end the run
  with a checkpoint that resumes it and exit status 128+signal. While training, the loop is
  asked to save and stop after the current step (a second SIGINT interrupts at once); in the
  start-up phase (nothing trained yet) and the final one (the last state already saved) the
  run stops at once."""

  def __init__(self):
    self.received: int | None = None
    self.phase = "startup"  # startup | training | final
    self.step = 0           # the step a checkpoint holds, for the startup and final phases
    self._previous: dict = {}

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name if self.received else ""

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.phase != "training":
      self.received = signum
      raise Interrupted(signum, self.step, (
          f"stopped by {name} before training started; run the same command again to start"
          if self.phase == "startup" else
          f"stopped by {name} after training, at step {self.step}: its checkpoint is saved; "
          "run the same command again for the final evaluation and outputs"))
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum
    logging.info("%s received: saving a checkpoint after this step (Ctrl-C again to quit "
                 "without saving)", name)

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
