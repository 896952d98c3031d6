"""The driver: config -> data -> programs -> restore -> loop -> final evaluation and outputs.

`run` reads as its phases. What it calls is pure (bigjax.core.steps, bigjax.data.pipeline) or a
small focused module; periodic work during training is hooks (bigjax/training/hooks.py), and every
side effect lives here, in the hooks or in `Run`.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import platform
import time
from typing import Sequence

import jax
import ml_collections
import numpy as np

import bigjax
from bigjax.compression import pruning
from bigjax.core import metrics as metrics_lib
from bigjax.core.steps import TrainState
from bigjax.finetuning import finetune
from bigjax.inference import portable
from bigjax.outputs import artifacts
from bigjax.outputs.logs import MetricsLog
from bigjax.outputs.logs import Progress
from bigjax.outputs.logs import write_json
from bigjax.outputs.logs import write_text
from bigjax.registry import ConfigError
from bigjax.training import checkpoint
from bigjax.training import hooks as hooks_lib
from bigjax.training import loop as loop_lib
from bigjax.training import termination
from bigjax.training import validate
from bigjax.training.preemption import Interrupted  # noqa: F401 (Interrupted: for callers)
from bigjax.training.preemption import SaveOnSignal
from bigjax.training.programs import Programs
from bigjax.training.programs import with_kept_tokenizer

logging = py_logging.getLogger(__name__)

# Keys that may change between a run and its resumption without
# config.checkpoint.allow_config_change (they change how long or how verbosely it runs, or
# where it runs: a checkpoint saved on 8 devices resumes on 1).
RESUMABLE_CHANGES = ("train.num_epochs", "train.num_steps", "train.log_every_steps",
                     "train.log_every_seconds", "hooks",
                     "data.placement", "parallel.mode", "parallel.num_devices",
                     "parallel.mesh.data", "parallel.mesh.fsdp", "parallel.fsdp_min_size",
                     "parallel.fsdp_regex", "parallel.distributed",
                     "train.steps_per_call", "train.stop_when", "train.early_stopping.metric",
                     "train.early_stopping.mode", "train.early_stopping.patience",
                     "train.early_stopping.min_delta", "eval.batch_size", "eval.metrics",
                     "eval.every_epoch", "eval.at_end", "checkpoint.allow_config_change",
                     "checkpoint.max_to_keep", "checkpoint.min_interval_seconds",
                     "report.plots", "report.html",
                     "report.tensorboard")
DIVERGENCE = 100  # a training loss this many times its first value is warned about
TRAIN_VALUES = ("loss", "accuracy", "learning_rate")  # what "train/..." keys can name
                                                      # (accuracy: classification only)


def _is_writer() -> bool:
  return jax.process_index() == 0


class Run:
  """One training run's handles and records: the config, the workdir, the programs, the
  loop's state, the hooks, the metrics log and the signal handler."""

  def __init__(self, config, workdir: str, programs: Programs, loop: loop_lib.LoopState,
               hooks: list, log: MetricsLog, checkpoints: hooks_lib.Checkpoints,
               signals: SaveOnSignal | None = None):
    self.config, self.workdir, self.programs, self.loop = config, workdir, programs, loop
    self.hooks, self.log, self.checkpoints = hooks, log, checkpoints
    self.is_writer = _is_writer()
    self.signals = signals or SaveOnSignal()
    is_lm = config.model.name == "gpt"
    self.seq_len = int(programs.data.train.inputs.shape[1]) if is_lm else None
    self.progress = Progress(loop.total_steps, programs.batch_size,
                             tokens_per_example=self.seq_len)
    self.warned_divergence = False

  def record(self, split: str, values: dict, **extra) -> None:
    """A row of metrics: metrics.jsonl, then every hook's on_metrics."""
    scalars = metrics_lib.scalars(values)
    self.log.write({"split": split, "step": self.loop.step, **extra, **scalars})
    for hook in self.hooks:
      hook.on_metrics(self, split, self.loop.step, values)

  def flush_train_metrics(self) -> None:
    """The steps' metrics since the last flush, fetched now (not per step), as one row."""
    loop = self.loop
    if not loop.pending:
      return
    fetched = jax.device_get([m for _, m in loop.pending])  # scalars, or [k] per k-step call
    per_step = {key: np.concatenate([np.ravel(m[key]) for m in fetched])
                for key in fetched[0]}
    row = {key: float(values.mean()) for key, values in per_step.items()}
    row["learning_rate"] = float(per_step["learning_rate"][-1])  # the latest, not the mean
    last_step = loop.pending[-1][0]
    loop.pending.clear()
    if not np.isfinite(row["loss"]):
      raise FloatingPointError(
          f"Training loss became {row['loss']} by step {last_step}. Lower "
          "--config.optimizer.learning_rate, or check the data for NaNs/Infs.")
    if loop.first_loss is None:  # the first step's loss: before any update moved it
      loop.first_loss = float(per_step["loss"][0])
    if not self.warned_divergence and row["loss"] > DIVERGENCE * max(loop.first_loss, 1e-3):
      self.warned_divergence = True
      logging.warning("training loss %.4g at step %d is over %dx its first value %.4g: the run "
                      "is diverging. Lower --config.optimizer.learning_rate (now %.3g).",
                      row["loss"], last_step, DIVERGENCE, loop.first_loss,
                      row["learning_rate"])
    loop.latest["train"] = row
    self.record("train", row, epoch=loop.epoch + 1)
    logging.info("epoch %d/%d step %d/%d | loss %.4f%s lr %.3g | %s", loop.epoch + 1,
                 loop.num_epochs, last_step, loop.total_steps, row["loss"],
                 f" acc {row['accuracy']:.4f}" if "accuracy" in row else "",
                 row["learning_rate"], self.progress.line(last_step))

  def stop_for_signal(self, state, saved: bool = False) -> None:
    """After SIGTERM/SIGINT: save (unless the epoch's end just did), then raise Interrupted."""
    if not saved:
      self.flush_train_metrics()
      self.checkpoints.save_latest(self, state, self.loop.epoch)
    self.signals.stop(self.checkpoints.manager, self.loop.step)


def run(config: ml_collections.ConfigDict, workdir: str,
        hooks: Sequence[hooks_lib.Hook] = ()) -> dict:
  """Trains, evaluates and checkpoints as `config` says; returns (and writes) the results.
  `hooks` run after the built-in ones and config.hooks (bigjax/training/hooks.py)."""
  t_start = time.perf_counter()
  user_hooks = [*hooks_lib.from_config(config.hooks), *hooks]  # (a bad one fails first)
  for hook in hooks:
    hooks_lib.check(hook, "train.run(hooks=...)")
  config = finetune.with_checkpoint_architecture(config)  # (hf: checkpoints name their own)
  workdir, manager = _prepare_workdir(config, workdir)
  checkpoints = None
  signals = SaveOnSignal()  # from here a signal ends the run cleanly (exit 128+signal)
  signals.install()
  try:
    # (a resumed run tokenizes with the tokenizer its start trained and kept)
    programs = Programs(with_kept_tokenizer(config, workdir) if manager.latest_step()
                        is not None else config)
    epoch_splits = programs.split_names(config.eval.every_epoch, "config.eval.every_epoch")
    final_splits = programs.split_names(config.eval.at_end, "config.eval.at_end")
    if getattr(programs.loss_fn, "compares_embeddings", False) and (epoch_splits or
                                                                   final_splits):
      raise ConfigError(f"Loss {config.loss.name} scores pairs of augmented views, which "
                        "evaluation does not make: set config.eval.every_epoch='' and "
                        "config.eval.at_end='' (fine-tuning the run judges it).")
    best_key = _best_key(config, epoch_splits)
    check_metric_keys(config, programs, epoch_splits, best_key)
    state, meta, resumed_from = restore_or_init(config, workdir, manager, programs)
    # Every check has passed: only now does this config become the workdir's record.
    log = MetricsLog(os.path.join(workdir, "metrics.jsonl") if _is_writer() else None)
    if _is_writer():
      write_json(os.path.join(workdir, "data_stats.json"), programs.data.stats)
      portable.write_spec(workdir, programs, config)
      if programs.data.tokenizer is not None:  # the run's own, which sampling reads
        write_text(os.path.join(workdir, "tokenizer.json"), programs.data.tokenizer)
      _write_config(config, workdir)
      log.drop_after(resumed_from or 0)
    loop = loop_lib.LoopState.resumed(int(state.step), programs.total_steps,
                                      programs.steps_per_epoch, meta)
    state = programs.to_run_state(state)  # (placed on the mesh; pmap: one copy per device)
    checkpoints = hooks_lib.Checkpoints(
        manager, checkpoint.make_manager(workdir, 1, kind=checkpoint.BEST) if best_key
        else None, config.checkpoint.every_steps, config.checkpoint.min_interval_seconds,
        best_key, config.checkpoint.best_mode)
    watch = hooks_lib.WatchCompiles()
    all_hooks = [*default_hooks(config, workdir, epoch_splits, checkpoints), watch,
                 *user_hooks]
    run_ = Run(config, workdir, programs, loop, all_hooks, log, checkpoints, signals)
    signals.step = loop.step
    try:
      startup_seconds = _compile_first_step(run_, state, t_start)
      signals.phase = "training"
      state = loop_lib.train(run_, state)
      if signals.received is not None:  # at the last step's end: saved there, so stop
        run_.stop_for_signal(state, saved=True)
      signals.phase, signals.step = "final", loop.step
      results = finish(run_, state, final_splits, startup_seconds, resumed_from,
                       watch.per_epoch)
    finally:
      for hook in run_.hooks:
        hook.close(run_)
  finally:
    signals.uninstall()
    # On every way out, errors included: an asynchronous save in flight is finished (not
    # left to time out after 300 s, nor half written), and the managers let go.
    manager.close()
    if checkpoints is not None and checkpoints.best_manager is not None:
      checkpoints.best_manager.close()
  return results


def _write_config(config, workdir: str) -> None:
  """config.json, atomically: a reader (or a kill) never sees half of it."""
  write_text(os.path.join(workdir, "config.json"),
             config.to_json_best_effort(indent=2, sort_keys=True))


def _prepare_workdir(config, workdir: str):
  """The workdir made and a resumed run's config checked against the saved one; returns
  (absolute workdir, checkpoint manager). (config.json is written once every check passed.)"""
  if not str(workdir).strip():
    raise ConfigError("--workdir is empty: name a folder for the run's checkpoints and "
                      "outputs (e.g. --workdir=runs/mnist).")
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"Cannot create the workdir {workdir} ({e.strerror}): choose a "
                      "--workdir you can write to.") from None
  if not os.access(workdir, os.W_OK):
    raise ConfigError(f"The workdir {workdir} is not writable: choose a --workdir you can "
                      "write to, or fix its permissions.")
  manager = checkpoint.make_manager(workdir, config.checkpoint.max_to_keep)
  if manager.latest_step() is not None:
    try:
      validate.check_resumable(config, workdir, RESUMABLE_CHANGES)
    except BaseException:
      manager.close()
      raise
  logging.info("workdir: %s", workdir)
  return workdir, manager


def _best_key(config, epoch_splits: list[str]) -> str:
  best_key = config.checkpoint.best_metric
  if best_key.startswith("validation/") and "validation" not in epoch_splits:
    # The default keys on validation; a run that holds none out simply keeps no best.
    logging.info("no validation split evaluated each epoch: no best checkpoint "
                 "(config.checkpoint.best_metric=%s)", best_key)
    return ""
  return best_key


def default_hooks(config, workdir: str, epoch_splits: list[str],
                  checkpoints: hooks_lib.Checkpoints) -> list[hooks_lib.Hook]:
  """The built-in periodic work, in the order it runs: logging, evaluation and stopping,
  checkpoints, metrics.csv and learning curves, TensorBoard."""
  built_in = [hooks_lib.LogTrainMetrics(config.train.log_every_steps,
                                        config.train.log_every_seconds),
              hooks_lib.EvaluateEachEpoch(epoch_splits, config.train.stop_when,
                                          config.train.early_stopping),
              checkpoints,
              hooks_lib.LearningCurves(config.report.plots)]
  if config.report.tensorboard and _is_writer():
    built_in.append(hooks_lib.TensorBoard(os.path.join(workdir, "tensorboard")))
  return built_in


def _compile_first_step(run_: Run, state, t_start: float) -> float | None:
  """Compiles the train step (before the loop, so its time is logged apart); returns the
  seconds from run() to a train step ready, what a user waits for."""
  loop, programs = run_.loop, run_.programs
  if loop.step >= loop.total_steps:
    return None
  programs.compile_train(state)
  loop.train_seconds = programs.compile_seconds  # training's time counts its compile
  startup_seconds = time.perf_counter() - t_start
  k = programs.steps_per_call
  logging.info("train step %s in %.2f s (ready %.1f s after start); %d steps per epoch of "
               "%d, batch %d%s; %d steps in all",
               "loaded from the compilation cache" if programs.cache_loads else "compiled",
               programs.compile_seconds, startup_seconds, loop.steps_per_epoch,
               len(programs.data.train), programs.batch_size,
               f", {k} steps per call" if k > 1 else "", loop.total_steps)
  return startup_seconds


def finish(run_: Run, state, final_splits: list[str], startup_seconds, resumed_from,
           compiles_per_epoch: list[int]) -> dict:
  """The final evaluation, results.json, metrics.csv, pictures and report."""
  config, programs, loop, workdir = run_.config, run_.programs, run_.loop, run_.workdir
  state = programs.to_logical(state)
  run_.checkpoints.wait()
  run_.progress.pause()
  t_eval = time.perf_counter()
  final, picture_outputs = _final_evaluation(run_, state, final_splits)
  loop.eval_seconds += time.perf_counter() - t_eval
  for split in final_splits:
    logging.info("%s | %s (%d examples)", split, hooks_lib.headline(final[split]),
                 final[split]["count"])
  steady = run_.progress.steps_per_second(loop.step) * programs.batch_size
  train_seconds = loop.train_seconds
  results = {
      "num_params": programs.num_params, "trainable_params": programs.num_trainable,
      "steps": loop.step, "epochs": loop.num_epochs,
      "train_seconds": train_seconds, "compile_seconds": programs.compile_seconds,
      "init_seconds": programs.init_seconds, "startup_seconds": startup_seconds,
      "eval_seconds": loop.eval_seconds,
      "steady_examples_per_second": steady if np.isfinite(steady) else None,
      "resumed_from_step": resumed_from, "stopped_early": loop.stop_reason,
      "best_checkpoint": loop.best,
      # XLA compilations in each epoch this run trained (the first includes evaluation's)
      "compilations_per_epoch": compiles_per_epoch,
      "metrics": final, "environment": _environment(),
  }
  if programs.placement == "host":  # did the steps wait for the input pipeline?
    results["input_wait_seconds"] = programs.input_wait_seconds
    logging.info("input: training waited %.1f s for host batches (%.0f%% of its %.1f s)",
                 programs.input_wait_seconds,
                 100 * programs.input_wait_seconds / max(train_seconds, 1e-9), train_seconds)
  if pruning.is_on(config.get("prune")):
    results["pruning"] = pruning.nonzero_report(state.params, config.prune.include)
    logging.info("pruned: %.1f%% of the pruned kernels are zero; %s of %s params non-zero",
                 100 * results["pruning"]["pruned_sparsity"],
                 f"{results['pruning']['nonzero_params']:,}",
                 f"{results['pruning']['params']:,}")
  if run_.seq_len and steady and np.isfinite(steady):
    results.update(_language_model_speed(config, programs, steady * run_.seq_len,
                                         run_.seq_len))
  for split, values in final.items():  # the headline numbers, flat
    for name in ("accuracy", "loss"):
      if name in values:
        results[f"{split}_{name}"] = values[name]
  if run_.is_writer:
    write_json(os.path.join(workdir, "results.json"), results)
    artifacts.write_metrics_csv(workdir)
    if config.report.plots or config.report.html:
      artifacts.final_outputs(workdir, config, programs, state, results, picture_outputs)
    if config.lora.rank > 0:
      artifacts.write_lora(workdir, config, state.params, programs.model.scale)
  for hook in run_.hooks:
    hook.end(run_, state, results)
  headline = final.get("test") or next(iter(final.values()), {})
  logging.info("done: %s, %s params, trained in %.1f s (compile %.2f s); outputs in %s",
               next((f"{n} {headline[n]:.4f}" for n in ("accuracy", "r2", "loss")
                     if n in headline), "no final evaluation"), f"{programs.num_params:,}",
               train_seconds, programs.compile_seconds, workdir)
  return results


def _final_evaluation(run_: Run, state, final_splits: list[str]) -> tuple[dict, object]:
  """Each final split's metrics (reused when evaluated at this very step), and the outputs
  of the split the pictures show: its evaluation keeps the model's outputs, so the pictures
  need no second pass over it. Every process runs the same evaluations (collectives),
  though only one draws."""
  config, programs, loop = run_.config, run_.programs, run_.loop
  picture_split = (artifacts.picture_split(final_splits)
                   if config.report.plots and final_splits
                   and (programs.classifies or programs.data.is_regression) else None)
  final, picture_outputs = {}, None
  for split in final_splits:
    recorded = loop.evaluated_at.get(split) == loop.step  # its row is in metrics.jsonl
    if recorded and split in loop.latest:  # evaluated at this step by this process
      final[split] = loop.latest[split]
      if split == picture_split:  # its outputs, from every process (collective)
        _, picture_outputs = programs.evaluate(state, split, with_outputs=True)
      continue
    if split == picture_split:
      final[split], picture_outputs = programs.evaluate(state, split, with_outputs=True)
    else:
      final[split] = programs.evaluate(state, split)
    if not recorded:  # (a run resumed at its last step evaluates again, but logs once)
      run_.record(split, final[split])
  return final, picture_outputs


def _language_model_speed(config, programs: Programs, tokens_per_second: float,
                          seq_len: int) -> dict:
  from bigjax.outputs import mfu
  flops = mfu.gpt_flops_per_token(config.model, seq_len)
  utilisation = mfu.utilisation(tokens_per_second, flops, str(jax.devices()[0].device_kind),
                                programs.mesh.size)
  logging.info("%s tokens/s; %.3g training FLOPs per token; MFU %s",
               f"{tokens_per_second:,.0f}", flops,
               f"{utilisation:.1%} of bf16 peak" if utilisation is not None
               else "n/a (no peak figure for this device)")
  return {"tokens_per_second": tokens_per_second, "model_flops_per_token": flops,
          "mfu": utilisation}


def _environment() -> dict:
  import flax
  import optax
  return {"device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
          "num_devices": jax.device_count(), "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "bigjax": bigjax.__version__, "host": platform.node()}


def check_metric_keys(config: ml_collections.ConfigDict, programs: Programs,
                      epoch_splits: list[str], best_key: str) -> None:
  """Every "split/metric" the config stops or keeps the best by exists after each epoch."""
  keys = {"config.train.stop_when": (termination.Target.parse(config.train.stop_when).key
                                     if config.train.stop_when else ""),
          "config.train.early_stopping.metric": config.train.early_stopping.metric,
          "config.checkpoint.best_metric": best_key}
  keys = {where: key for where, key in keys.items() if key}
  if not keys:
    return
  names = programs.metric_value_names()
  values = {split: dict.fromkeys(names, 0.0) for split in epoch_splits}
  values["train"] = {name: 0.0 for name in TRAIN_VALUES
                     if name != "accuracy" or programs.classifies}
  for where, key in keys.items():
    if termination.lookup(values, key, where) is None:
      raise ConfigError(
          f'{where}="{key}": split "{key.partition("/")[0]}" is not evaluated after each '
          f"epoch. Use one of {', '.join(values)} (config.eval.every_epoch="
          f'"{config.eval.every_epoch}").')


def restore_or_init(config: ml_collections.ConfigDict, workdir: str, manager,
                    programs: Programs) -> tuple[TrainState, dict, int | None]:
  """(state, checkpoint meta, step resumed from), by precedence: a checkpoint in this workdir
  > config.checkpoint.resume_from (the full state) > config.init_from (params only) >
  the fresh init."""
  channels = programs.data.train.inputs.shape[-1]
  found = checkpoint.restore_newest_intact(manager, programs.initial_state, channels)
  if found is not None:
    state, meta, step = found
    logging.info("resumed from step %d (%s)", step, manager.directory)
    return state, meta, step
  if config.checkpoint.resume_from:
    other, kind, step = finetune.locate(config.checkpoint.resume_from)
    state, meta, step = checkpoint.read(other, step, programs.initial_state, channels, kind)
    logging.info("resumed from step %d of %s (config.checkpoint.resume_from)", step,
                 checkpoint.checkpoint_dir(other, kind))
    return state, meta, step
  if config.init_from.path:
    source = finetune.read(config.init_from.path, config.init_from.step)
    state, text = finetune.load(programs.initial_state, source, config.init_from,
                                config.model.name)
    logging.info("initialised from %s/%d (config.init_from):\n%s", source.directory,
                 source.step, text)
    if _is_writer():
      with open(os.path.join(workdir, "init_from.txt"), "w") as f:
        f.write(f"{source.directory}/{source.step}\n{text}\n")
    return state, {}, None
  return programs.initial_state, {}, None


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The fully resolved config a run wrote to its workdir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} holds no bigjax run. "
                            "Train first, or pass --config.")
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except ValueError:
    raise ConfigError(f"{path} is not valid JSON (damaged): pass the run's --config "
                      "instead.") from None
  config.lock()
  return config
