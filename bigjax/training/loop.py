"""The training loop: one path for every strategy, periodic work in hooks.

    for chunk in programs.chunks(...):          # this epoch's calls
      state, metrics = programs.train(state, chunk)
      loop.advance(chunk.steps, metrics)
      for hook in hooks: hook.after_step(run, state)

What changes during training lives in `LoopState`; everything with a side effect is a hook
(bigjax/training/hooks.py) or the run's own records (train.Run).
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import time
from typing import Any

import jax
import numpy as np

from bigjax import data as data_lib

logging = py_logging.getLogger("bigjax.train")


@dataclasses.dataclass
class LoopState:
  """Where training is, and what it has seen: the step, the epoch, the latest metrics of
  each split, the best checkpoint, early stopping's state and why training stops."""
  step: int
  total_steps: int
  steps_per_epoch: int
  epoch: int = 0
  latest: dict = dataclasses.field(default_factory=dict)  # split -> its latest metrics
  evaluated_at: dict = dataclasses.field(default_factory=dict)  # split -> their step
  best: dict | None = None  # {"metric", "value", "step"} of the best checkpoint so far
  early_stopping: dict | None = None
  stop_reason: str | None = None
  pending: list = dataclasses.field(default_factory=list)  # (step, device metrics) unfetched
  first_loss: float | None = None  # the first step's loss (the divergence warning's yardstick)
  train_seconds: float = 0.0
  eval_seconds: float = 0.0

  @classmethod
  def resumed(cls, step: int, total_steps: int, steps_per_epoch: int,
              meta: dict) -> "LoopState":
    """At `step`, with what a checkpoint's metadata says (empty for a fresh start)."""
    loop = cls(step=step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
               epoch=step // steps_per_epoch, early_stopping=meta.get("early_stopping"),
               best=meta.get("best"), stop_reason=meta.get("stopped"),
               first_loss=meta.get("first_loss"),
               evaluated_at=dict(meta.get("evaluated_at") or {}))
    unlogged = meta.get("unlogged_train")
    if unlogged:  # the steps since the last train row, so the next row averages them too
      loop.pending.append((step, {key: np.asarray(v["values"], v["dtype"])
                                  for key, v in unlogged.items()}))
    if loop.stop_reason:
      logging.info("this run stopped at step %d (%s); not training further", step,
                   loop.stop_reason)
      loop.total_steps = step
    return loop

  @property
  def num_epochs(self) -> int:
    return -(-self.total_steps // self.steps_per_epoch)

  @property
  def position_in_epoch(self) -> int:
    """Steps taken in the current epoch (steps_per_epoch at its end)."""
    return self.step - self.epoch * self.steps_per_epoch

  def advance(self, steps: int, step_metrics: Any) -> None:
    self.step += steps
    self.pending.append((self.step, step_metrics))

  def unlogged_train(self) -> dict:
    """The per-step metrics not yet in a train row, for a checkpoint's metadata: a run
    resumed from it logs the same rows as one never stopped. (Fetched now and kept on the
    host, so the next row does not fetch them again.)"""
    if not self.pending:
      return {}
    fetched = jax.device_get([m for _, m in self.pending])
    self.pending[:] = [(step, m) for (step, _), m in zip(self.pending, fetched)]
    return {key: {"dtype": np.asarray(fetched[0][key]).dtype.name,
                  "values": np.concatenate([np.ravel(m[key]) for m in fetched]).tolist()}
            for key in fetched[0]}


def train(run, state):
  """Trains from run.loop.step to run.loop.total_steps (or a stop); returns the state."""
  programs, loop, hooks, config = run.programs, run.loop, run.hooks, run.config
  n_train = len(programs.data.train)
  t_segment = time.perf_counter()
  for hook in hooks:
    hook.start(run, state)
  while loop.step < loop.total_steps:
    order = data_lib.epoch_permutation(config.seed, loop.epoch, n_train)
    start = loop.position_in_epoch
    end = min(loop.steps_per_epoch, start + loop.total_steps - loop.step)  # may end early
    chunks = programs.chunks(order, start, end, loop.step, config.train.log_every_steps,
                             config.checkpoint.every_steps)
    try:
      for chunk in chunks:
        state, step_metrics = programs.train(state, chunk)
        loop.advance(chunk.steps, step_metrics)
        if not run.progress.started:
          jax.block_until_ready(state.step)  # the first call's time is not steady-state
          run.progress.start(loop.step)
        if run.signals.received is not None and loop.position_in_epoch < end:
          chunks.close()
          run.stop_for_signal(state)  # preempted mid-epoch: save, then stop
        for hook in hooks:
          hook.after_step(run, state)
    finally:
      chunks.close()
    # ------------------------------------------------------------ end of epoch
    run.flush_train_metrics()
    jax.block_until_ready(state.step)
    loop.train_seconds += time.perf_counter() - t_segment
    run.progress.pause()
    t_eval = time.perf_counter()
    for hook in hooks:
      hook.after_epoch(run, state)
    loop.eval_seconds += time.perf_counter() - t_eval
    run.progress.resume()
    t_segment = time.perf_counter()
    loop.epoch += 1
    if loop.stop_reason:
      logging.info("stopping at step %d of %d: %s", loop.step, loop.total_steps,
                   loop.stop_reason)
      break
    if run.signals.received is not None and loop.step < loop.total_steps:
      run.stop_for_signal(state, saved=True)  # the epoch's end saved
  return state
