"""Periodic work in the training loop, as hooks that each decide when they are due.

The loop (bigjax/training/loop.py) calls every hook at the same points, built-in ones first, then the
user's (`train.run(config, workdir, hooks=[...])`, or `config.hooks=("mypkg.mod:MyHook",)`):

  start(run, state)                 before the first step
  after_step(run, state)            after each call of the train program (run.loop.step is
                                    the new step; k steps per call: every k steps)
  on_metrics(run, split, step, values)  each row of metrics the run records: "train" (means
                                    since the last log line) and every evaluated split
  after_epoch(run, state)           after each epoch, once its evaluation is done
  end(run, state, results)          after the final evaluation and results.json
  close(run)                        always, when the loop ends (also on an error)

`run` (train.Run) holds the config, the workdir, the programs, the loop's state and
`run.is_writer` (process 0 of a multi-host job). `state` is the loop's train state; for the
state as it is saved and evaluated (one copy under pmap) use
`run.programs.to_logical(state)`. A hook may end training by setting
`run.loop.stop_reason` in after_epoch.
"""

from __future__ import annotations

import logging as py_logging
import os
import time
from typing import Any, Sequence

import flax
import jax

from bigjax.core import metrics as metrics_lib
from bigjax.outputs import artifacts
from bigjax.registry import ConfigError
from bigjax.registry import import_object
from bigjax.training import checkpoint
from bigjax.training import compilation
from bigjax.training import termination

logging = py_logging.getLogger("bigjax.train")

PLOT_INTERVAL_SECONDS = 60.0
# The metrics a log line shows, when computed.
HEADLINE = ("loss", "accuracy", "masked_accuracy", "f1_macro", "mse", "r2", "perplexity",
            "bits_per_byte")


class Hook:
  """A no-op at every point: subclass it and override what you need."""

  def start(self, run, state) -> None:
    pass

  def after_step(self, run, state) -> None:
    pass

  def on_metrics(self, run, split: str, step: int, values: dict) -> None:
    pass

  def after_epoch(self, run, state) -> None:
    pass

  def end(self, run, state, results: dict) -> None:
    pass

  def close(self, run) -> None:
    pass


class LogTrainMetrics(Hook):
  """Training metrics to the log and metrics.jsonl every `every_steps` steps and at least
  every `every_seconds` (a slow config is never silent for long); the epoch's end logs too."""

  def __init__(self, every_steps: int, every_seconds: float):
    self.every_steps, self.every_seconds = every_steps, every_seconds
    self._last = time.monotonic()

  def after_step(self, run, state) -> None:
    due_by_time = self.every_seconds > 0 and time.monotonic() - self._last >= self.every_seconds
    if run.loop.step % self.every_steps == 0 or due_by_time:
      run.flush_train_metrics()
      self._last = time.monotonic()


class EvaluateEachEpoch(Hook):
  """Evaluates `splits` after each epoch and stops training at a target value
  (config.train.stop_when) or when early stopping says so."""

  def __init__(self, splits: Sequence[str], stop_when: str, early_stopping):
    self.splits = list(splits)
    self.target = termination.Target.parse(stop_when)
    self.early = early_stopping

  def after_epoch(self, run, state) -> None:
    loop = run.loop
    logical = run.programs.to_logical(state)
    for split in self.splits:
      values = run.programs.evaluate(logical, split)
      loop.latest[split], loop.evaluated_at[split] = values, loop.step
      run.record(split, values, epoch=loop.epoch + 1)
    train_row = loop.latest.get("train", {})
    logging.info("epoch %d/%d done at step %d | train %s%s", loop.epoch + 1, loop.num_epochs,
                 loop.step, " ".join(f"{name} {train_row[name]:.4f}"
                                     for name in ("loss", "accuracy") if name in train_row),
                 "".join(f" | {split} " + headline(loop.latest[split])
                         for split in self.splits))
    if self.target is not None and self.target.reached(loop.latest):
      loop.stop_reason = f"{self.target.key} reached {self.target.op} {self.target.value:g}"
    if self.early.metric:
      value = termination.lookup(loop.latest, self.early.metric,
                                 "config.train.early_stopping.metric")
      if value is not None:
        loop.early_stopping, stop = termination.early_stopping_update(
            loop.early_stopping, value, mode=termination.mode_of(self.early.metric,
                                                                 self.early.mode),
            patience=self.early.patience, min_delta=self.early.min_delta)
        if stop and loop.stop_reason is None:
          loop.stop_reason = (f"early stopping: {self.early.metric} did not improve on "
                              f"{loop.early_stopping['best']:.4g} for {self.early.patience} "
                              "evaluations")


def headline(values: dict) -> str:
  return " ".join(f"{name} {values[name]:.4f}" for name in HEADLINE if name in values)


class Checkpoints(Hook):
  """The latest checkpoint every `every_steps` steps and after each epoch (at most every
  `min_interval` seconds; the last epoch, a stop and a signal always save), and the best one
  by `best_key` ("split/metric", in direction `best_mode`: min, max or auto)."""

  def __init__(self, manager, best_manager, every_steps: int, min_interval: float,
               best_key: str, best_mode: str):
    self.manager, self.best_manager = manager, best_manager
    self.every_steps, self.min_interval = every_steps, min_interval
    self.best_key, self.best_mode = best_key, termination.mode_of(best_key, best_mode)
    # When the last epoch-end save was (from the start: a crash loses at most the interval).
    self._last_epoch_save = time.monotonic()
    self._pending_best: list = []  # [(step, epoch, state copy, best)] not yet written

  def start(self, run, state) -> None:
    # Compiles the integrity record's checksums now, not at the first save (which may fall
    # in a later epoch, where WatchCompiles would take it for a retrace).
    checkpoint.integrity_record(flax.serialization.to_state_dict(
        run.programs.to_logical(state)))

  def _write_pending_best(self) -> None:
    for step, epoch, state, best in self._pending_best:
      if step not in self.best_manager.all_steps():
        checkpoint.save(self.best_manager, step, state, {"epoch": epoch, "best": best})
    self._pending_best.clear()

  def save_latest(self, run, state, epoch: int, stopped: str | None = None) -> None:
    """The loop's state as the latest checkpoint (the pending best first: a latest that
    names it is only written after it)."""
    self._write_pending_best()
    loop = run.loop
    checkpoint.save(self.manager, loop.step, run.programs.to_logical(state), {
        "epoch": epoch, "metrics": {s: metrics_lib.scalars(loop.latest[s]) for s in loop.latest},
        "early_stopping": loop.early_stopping, "best": loop.best, "stopped": stopped,
        "first_loss": loop.first_loss, "unlogged_train": loop.unlogged_train(),
        "evaluated_at": loop.evaluated_at})

  def after_step(self, run, state) -> None:
    loop = run.loop
    if (self.every_steps and loop.step % self.every_steps == 0
        and loop.position_in_epoch < loop.steps_per_epoch):  # the epoch's end saves anyway
      self.save_latest(run, state, loop.epoch)

  def after_epoch(self, run, state) -> None:
    loop = run.loop
    due = (time.monotonic() - self._last_epoch_save >= self.min_interval
           or loop.step >= loop.total_steps or loop.stop_reason is not None
           or run.signals.received is not None)
    if self.best_manager is not None:
      value = termination.lookup(loop.latest, self.best_key, "config.checkpoint.best_metric")
      if value is not None and (loop.best is None or (
          value < loop.best["value"] if self.best_mode == "min" else value > loop.best["value"])):
        loop.best = {"metric": self.best_key, "value": value, "step": loop.step}
        # Kept until the next save writes it (best first: a kill between the two saves
        # re-runs this epoch, not loses it). Re-run after a resume, the step may already
        # be there: the same state, bit for bit.
        # (A copy by transfer, not jnp.copy: that compiles a program per leaf shape, which
        # the compile watch would see as a retrace in whichever epoch first copies.)
        logical = run.programs.to_logical(state)
        self._pending_best[:] = [(loop.step, loop.epoch + 1, logical if due else
                                  jax.device_put(logical, may_alias=False), dict(loop.best))]
    if due:
      self.save_latest(run, state, loop.epoch + 1, stopped=loop.stop_reason)
      self._last_epoch_save = time.monotonic()

  def wait(self) -> None:
    """Until every save started has finished (the driver calls it before the final
    evaluation)."""
    self.manager.wait_until_finished()
    if self.best_manager is not None:
      self.best_manager.wait_until_finished()


class WatchCompiles(Hook):
  """Every function the loop needs compiles in its first epoch (train step, evaluation,
  checkpoint copies); a compilation in a later epoch means something retraces each time."""

  def __init__(self):
    self.per_epoch: list[int] = []
    self._counter = None

  def start(self, run, state) -> None:
    self._counter = compilation.CompileCounter().__enter__()

  def after_epoch(self, run, state) -> None:
    self.per_epoch.append(self._counter.count - sum(self.per_epoch))
    if len(self.per_epoch) > 1 and self.per_epoch[-1]:
      logging.warning(
          "%d XLA compilation(s) in epoch %d, after the first epoch: something is traced "
          "again each epoch (new shapes, dtypes or Python values), which costs time. "
          "JAX_LOG_COMPILES=1 names what compiles.", self.per_epoch[-1], run.loop.epoch + 1)

  def close(self, run) -> None:
    if self._counter is not None:
      self._counter.__exit__()
      self._counter = None


class LearningCurves(Hook):
  """metrics.csv after each epoch, and the learning curves redrawn at most once a minute
  (a plot costs more than an epoch of a small run)."""

  def __init__(self, plots: bool):
    self.plots = plots
    self._last_plot = time.monotonic()

  def after_epoch(self, run, state) -> None:
    if not run.is_writer:
      return
    artifacts.write_metrics_csv(run.workdir)
    if self.plots and time.monotonic() - self._last_plot > PLOT_INTERVAL_SECONDS:
      artifacts.plot_learning_curves(run.workdir, run.loop.steps_per_epoch)
      self._last_plot = time.monotonic()


class TensorBoard(Hook):
  """TensorBoard event files in `directory` (tensorboardX, no TensorFlow): every metrics
  row as scalars ("split/name"), the run's config as text, and at the end the pictures the
  run drew (confusion matrix, prediction grids) as images. Process 0 only."""

  def __init__(self, directory: str):
    self.directory = directory
    self.writer = None

  def start(self, run, state) -> None:
    if not run.is_writer:
      return
    import tensorboardX
    self.writer = tensorboardX.SummaryWriter(self.directory)
    self.writer.add_text("config", "```\n" + run.config.to_json_best_effort(indent=2)
                         + "\n```", global_step=run.loop.step)

  def on_metrics(self, run, split, step, values) -> None:
    if self.writer is None:
      return
    for key, value in metrics_lib.scalars(values).items():
      self.writer.add_scalar(f"{split}/{key}", value, global_step=step)

  def end(self, run, state, results) -> None:
    if self.writer is None:
      return
    for name, path in artifacts.picture_files(run.workdir):
      self.writer.add_image(name, _png_as_array(path), global_step=run.loop.step,
                            dataformats="HWC")
    self.writer.flush()

  def close(self, run) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None


class WandB(Hook):
  """Weights & Biases (`pip install -e '.[wandb]'`): the config, every metrics row, the
  results and the run's pictures. The project is $WANDB_PROJECT (default "bigjax"), the run
  named after its workdir; WANDB_MODE=offline writes it under WORKDIR/wandb for a later
  `wandb sync`. Process 0 only."""

  def __init__(self, project: str | None = None):
    self.project = project or os.environ.get("WANDB_PROJECT", "bigjax")
    self.run = None

  def start(self, run, state) -> None:
    if not run.is_writer:
      return
    try:
      import wandb
    except ImportError:
      raise ConfigError("config.hooks names bigjax.training.hooks:WandB, but wandb is not installed: "
                        "pip install -e '.[wandb]' (or pip install wandb).") from None
    self.run = wandb.init(project=self.project, name=os.path.basename(run.workdir),
                          dir=run.workdir, config=run.config.to_dict(), reinit=True)

  def on_metrics(self, run, split, step, values) -> None:
    if self.run is not None:
      self.run.log({f"{split}/{key}": value
                    for key, value in metrics_lib.scalars(values).items()}, step=step)

  def end(self, run, state, results) -> None:
    if self.run is None:
      return
    import wandb
    self.run.summary.update({key: value for key, value in results.items()
                             if isinstance(value, (int, float, str))})
    pictures = {name: wandb.Image(path) for name, path in artifacts.picture_files(run.workdir)}
    if pictures:
      self.run.log(pictures, step=run.loop.step)

  def close(self, run) -> None:
    if self.run is not None:
      self.run.finish()
      self.run = None


def _png_as_array(path: str):
  import numpy as np
  from PIL import Image
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def from_config(names: Sequence[str]) -> list[Hook]:
  """config.hooks: "package.module:Factory" paths, each called with no arguments."""
  hooks = []
  for name in names:
    if ":" not in name:
      raise ConfigError(f'config.hooks names "{name}": give a hook as "package.module:Name" '
                        "(a Hook subclass or a function returning one).")
    hook = import_object(name, "hook")()
    check(hook, f'config.hooks "{name}"')
    hooks.append(hook)
  return hooks


def check(hook: Any, where: str) -> None:
  missing = [m for m in ("start", "after_step", "on_metrics", "after_epoch", "end", "close")
             if not callable(getattr(hook, m, None))]
  if missing:
    raise ConfigError(f"{where} gave {type(hook).__name__}, which lacks {', '.join(missing)}: "
                      "subclass bigjax.training.hooks.Hook.")

