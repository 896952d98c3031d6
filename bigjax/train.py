"""The driver: config -> data -> model -> optimizer -> restore -> jitted steps -> loop -> outputs.

This module holds the training loop and every side effect (files, logs, checkpoints). All
it calls is pure (bigjax.steps, bigjax.data.pipeline) or a small focused module.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import bigjax
from bigjax import checkpoint, data as data_lib, metrics as metrics_lib, validate
from bigjax.losses import build_loss
from bigjax.models import build_model, init_variables
from bigjax.optimizers import build_optimizer
from bigjax.reporting import MetricsLog, Progress, write_json
from bigjax.steps import (TrainState, count_params, create_train_state, gather_batch,
                          make_eval_step, make_train_step, scan_steps)

logging = py_logging.getLogger(__name__)

# Keys that may change between a run and its resumption without
# config.checkpoint.allow_config_change (they change how long or how verbosely it runs).
RESUMABLE_CHANGES = ("train.num_epochs", "train.log_every_steps", "train.steps_per_call",
                     "eval.batch_size",
                     "checkpoint.allow_config_change", "checkpoint.max_to_keep")


def _is_writer() -> bool:
  return jax.process_index() == 0


class _Setup:
  """Everything built before the loop, shared by training and evaluation."""

  def __init__(self, config: ml_collections.ConfigDict):
    # (Schedules need the run's length, so the step count is known before the optimizer.)
    # ---------------------------------------------------------------- data
    t0 = time.perf_counter()
    self.data = data_lib.load(config.data)
    validate.check_data(config, self.data)
    self.splits = {name: (jax.device_put(s.images), jax.device_put(s.labels))
                   for name, s in self.data.splits().items()}
    logging.info("data: %s", ", ".join(f"{n} {len(s):,}" for n, s in self.data.splits().items())
                 + f" examples of shape {self.data.train.images.shape[1:]}, "
                 f"{self.data.num_classes} classes ({time.perf_counter() - t0:.1f} s)")
    # --------------------------------------------------------------- model
    self.model = build_model(config.model)
    init_rng, self.train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = init_variables(self.model, init_rng, jnp.asarray(self.data.train.images[:1]))
    # ------------------------------------------------------ loss, optimizer
    self.steps_per_epoch = len(self.data.train) // config.train.batch_size
    self.total_steps = self.steps_per_epoch * config.train.num_epochs
    self.loss_fn = build_loss(config.loss)
    self.tx = build_optimizer(config.optimizer, config.loss, self.total_steps)
    self.initial_state = create_train_state(variables, self.tx, self.train_rng)
    self.num_params = count_params(self.initial_state.params)
    logging.info("model: %s with %s parameters", config.model.name, f"{self.num_params:,}")
    # ------------------------------------------------------ jitted steps
    train_step = make_train_step(self.model, self.loss_fn, self.tx,
                                 config.train.grad_accum_steps)
    eval_step = make_eval_step(self.model, self.loss_fn)

    # The loop's step gathers its batch from the device-resident split, so the host only
    # sends B indices per step. State is donated: its buffers are reused in place.
    def train_on_indices(state, images, labels, indices):
      return train_step(state, gather_batch(images, labels, indices))

    def eval_on_indices(state, images, labels, indices, mask):
      return eval_step(state, gather_batch(images, labels, indices, mask))

    self.train_on_indices = jax.jit(train_on_indices, donate_argnums=0)
    self.steps_per_call = config.train.get("steps_per_call", 1)
    self.train_many_on_indices = jax.jit(scan_steps(train_on_indices), donate_argnums=0)
    self.eval_on_indices = jax.jit(eval_on_indices)
    largest = max(len(s) for s in self.data.splits().values() if s is not self.data.train)
    self.eval_batch_size = min(config.eval.batch_size, largest)

  def evaluate(self, state: TrainState, split: str) -> dict:
    """Loss and accuracy over every example of a split, exactly once (padding masked)."""
    images, labels = self.splits[split]
    indices, mask = data_lib.padded_batches(len(labels), self.eval_batch_size)
    sums = None
    for batch_indices, batch_mask in zip(indices, mask):
      sums = metrics_lib.add(sums, self.eval_on_indices(state, images, labels,
                                                        batch_indices, batch_mask))
    return metrics_lib.finalize(jax.device_get(sums))


def _environment() -> dict:
  import flax
  import optax
  return {"device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
          "num_devices": jax.device_count(), "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "bigjax": bigjax.__version__, "host": platform.node()}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and checkpoints as `config` says; returns (and writes) the results."""
  # --------------------------------------------------------------- workdir
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  manager = checkpoint.make_manager(workdir, config.checkpoint.max_to_keep)
  if manager.latest_step() is not None:
    validate.check_resumable(config, workdir, RESUMABLE_CHANGES)
  if _is_writer():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  log = MetricsLog(os.path.join(workdir, "metrics.jsonl") if _is_writer() else None)
  logging.info("workdir: %s", workdir)

  setup = _Setup(config)
  if _is_writer():
    write_json(os.path.join(workdir, "data_stats.json"), setup.data.stats)

  # ---------------------------------------------------------- restore
  n_train = len(setup.data.train)
  batch_size = config.train.batch_size
  steps_per_epoch = setup.steps_per_epoch  # the ragged tail of each epoch's order is unused
  total_steps = setup.total_steps
  state = setup.initial_state
  resumed_from = manager.latest_step()
  if resumed_from is not None:
    state, _ = checkpoint.restore(manager, resumed_from, state,
                                  input_channels=setup.data.train.images.shape[-1])
    logging.info("resumed from step %d (%s)", resumed_from, checkpoint.checkpoint_dir(workdir))
  step = int(state.step)

  # ------------------------------------------------------------ compile
  train_images, train_labels = setup.splits["train"]
  k = setup.steps_per_call
  compiled: dict = {}
  compile_seconds = 0.0
  # Shapes only: the live state's buffers are donated to each call, so lower from these.
  state_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=x.sharding), state)

  def compiled_step(steps: int):
    """The train function for `steps` steps per call, compiled on first use: with k > 1,
    the one-step function is only needed when an epoch or log interval is not a multiple
    of k, and compiling it anyway would cost as much as a second of a short run."""
    nonlocal compile_seconds
    if steps not in compiled:
      t_compile = time.perf_counter()
      fn, shape = ((setup.train_on_indices, (batch_size,)) if steps == 1 else
                   (setup.train_many_on_indices, (steps, batch_size)))
      compiled[steps] = fn.lower(state_spec, train_images, train_labels,
                                 np.zeros(shape, np.int32)).compile()
      compile_seconds += time.perf_counter() - t_compile
    return compiled[steps]

  compiled_step(k)
  logging.info("train step compiled in %.2f s; %d steps per epoch of %d, batch %d%s",
               compile_seconds, steps_per_epoch, n_train, batch_size,
               f", {k} steps per call" if k > 1 else "")

  # --------------------------------------------------------------- loop
  progress = Progress(total_steps, batch_size)
  pending: list[tuple[int, dict]] = []  # device metrics, fetched at log time, not per step
  log_every = config.train.log_every_steps
  train_seconds = compile_seconds
  eval_seconds = 0.0
  validation: dict = {}
  t_segment = time.perf_counter()

  def flush_train_metrics(epoch: int) -> None:
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])  # scalars, or [k] from a k-step call
    per_step = {key: np.concatenate([np.ravel(m[key]) for m in fetched])
                for key in fetched[0]}
    row = {key: float(values.mean()) for key, values in per_step.items()}
    row["learning_rate"] = float(per_step["learning_rate"][-1])  # the latest, not the mean
    last_step = pending[-1][0]
    pending.clear()
    if not np.isfinite(row["loss"]):
      raise FloatingPointError(
          f"Training loss became {row['loss']} by step {last_step}. Lower "
          "--config.optimizer.learning_rate, or check the data for NaNs/Infs.")
    log.write({"split": "train", "step": last_step, "epoch": epoch + 1, **row})
    logging.info("epoch %d/%d step %d/%d | loss %.4f acc %.4f lr %.3g | %s", epoch + 1,
                 config.train.num_epochs, last_step, total_steps, row["loss"],
                 row["accuracy"], row["learning_rate"], progress.line(last_step))

  epoch = step // steps_per_epoch
  while step < total_steps:
    order = data_lib.epoch_permutation(config.seed, epoch, n_train)
    i = step % steps_per_epoch
    while i < steps_per_epoch:
      # k steps per call, but never across an epoch end or a logging step, so outputs
      # and checkpoints are the same whatever steps_per_call is.
      n = min(k, steps_per_epoch - i, log_every - step % log_every)
      indices = order[i * batch_size:(i + n) * batch_size]
      if n == k > 1:
        state, step_metrics = compiled_step(k)(state, train_images, train_labels,
                                               indices.reshape(k, batch_size))
      else:
        n = 1
        state, step_metrics = compiled_step(1)(state, train_images, train_labels,
                                               indices[:batch_size])
      step += n
      i += n
      pending.append((step, step_metrics))
      if not progress.started:
        jax.block_until_ready(state.step)  # the first call's time is not steady-state
        progress.start(step)
      if step % log_every == 0:
        flush_train_metrics(epoch)
    # ---------------------------------------------------- end of epoch
    flush_train_metrics(epoch)
    jax.block_until_ready(state.step)
    train_seconds += time.perf_counter() - t_segment
    progress.pause()
    t_eval = time.perf_counter()
    if "validation" in setup.splits:
      validation = setup.evaluate(state, "validation")
      log.write({"split": "validation", "step": step, "epoch": epoch + 1, **validation})
      logging.info("epoch %d/%d validation | loss %.4f acc %.4f", epoch + 1,
                   config.train.num_epochs, validation["loss"], validation["accuracy"])
    checkpoint.save(manager, step, state, {"epoch": epoch + 1, "validation": validation})
    eval_seconds += time.perf_counter() - t_eval
    progress.resume()
    t_segment = time.perf_counter()
    epoch += 1

  # -------------------------------------------------------------- final
  manager.wait_until_finished()
  progress.pause()
  if not validation and "validation" in setup.splits:  # resumed a finished run
    validation = setup.evaluate(state, "validation")
  t_eval = time.perf_counter()
  test = setup.evaluate(state, "test")
  eval_seconds += time.perf_counter() - t_eval
  log.write({"split": "test", "step": step, **test})
  logging.info("test | loss %.4f acc %.4f (%d examples)", test["loss"], test["accuracy"],
               test["count"])
  steady = progress.steps_per_second(step) * batch_size
  results = {
      "test_accuracy": test["accuracy"], "test_loss": test["loss"],
      "validation_accuracy": validation.get("accuracy"),
      "validation_loss": validation.get("loss"),
      "num_params": setup.num_params, "steps": step, "epochs": config.train.num_epochs,
      "train_seconds": train_seconds, "compile_seconds": compile_seconds,
      "eval_seconds": eval_seconds,
      "steady_examples_per_second": steady if np.isfinite(steady) else None,
      "resumed_from_step": resumed_from, "environment": _environment(),
  }
  if _is_writer():
    write_json(os.path.join(workdir, "results.json"), results)
  manager.close()
  logging.info("done: test accuracy %.4f, %s params, trained in %.1f s (compile %.2f s); "
               "outputs in %s", test["accuracy"], f"{setup.num_params:,}", train_seconds,
               compile_seconds, workdir)
  return results


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The fully resolved config a run wrote to its workdir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} holds no bigjax run. "
                            "Train first, or pass --config.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.lock()
  return config


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             splits: tuple[str, ...] = ("validation", "test")) -> dict:
  """Evaluates the latest checkpoint of a workdir's run on `splits`; writes eval_results.json."""
  workdir = os.path.abspath(workdir)
  manager = checkpoint.make_manager(workdir, create=False) if os.path.isdir(
      checkpoint.checkpoint_dir(workdir)) else None
  step = manager.latest_step() if manager is not None else None
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint in {checkpoint.checkpoint_dir(workdir)}: train this workdir first "
        f"(python run.py --config=... --workdir={workdir}).")
  setup = _Setup(config)
  state, _ = checkpoint.restore(manager, step, setup.initial_state,
                                input_channels=setup.data.train.images.shape[-1])
  results: dict[str, Any] = {"step": step}
  for split in splits:
    if split not in setup.splits:
      continue
    results[split] = setup.evaluate(state, split)
    logging.info("eval %s at step %d | loss %.4f acc %.4f (%d examples)", split, step,
                 results[split]["loss"], results[split]["accuracy"], results[split]["count"])
  if _is_writer():
    write_json(os.path.join(workdir, "eval_results.json"), results)
  manager.close()
  return results
