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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import bigjax
from bigjax import (artifacts, checkpoint, compilation, data as data_lib, finetune, lora,
                    metrics as metrics_lib, parallel, precision, tensorboard, termination,
                    validate)
from bigjax.data import augment as augment_lib, feed
from bigjax.losses import build_loss
from bigjax.models import build_model, run_traced_init, trace_init
from bigjax.optimizers import build_optimizer
from bigjax.preemption import Interrupted, SaveOnSignal  # noqa: F401 (Interrupted: for callers)
from bigjax.registry import ConfigError, did_you_mean
from bigjax.reporting import MetricsLog, Progress, write_json
from bigjax.steps import (TrainState, cast_floats, count_params, create_train_state,
                          gather_batch,
                          has_class_outputs, make_eval_step, make_train_step, predict_logits,
                          scan_steps)

logging = py_logging.getLogger(__name__)

# Keys that may change between a run and its resumption without
# config.checkpoint.allow_config_change (they change how long or how verbosely it runs, or
# where it runs: a checkpoint saved on 8 devices resumes on 1).
RESUMABLE_CHANGES = ("train.num_epochs", "train.num_steps", "train.log_every_steps",
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
PLOT_INTERVAL_SECONDS = 60.0
# Augmentation keys are fold_in(fold_in(rng, step), AUGMENT_STREAM): apart from dropout's
# (Flax folds module paths into fold_in(rng, step)), and the step's key is computed once for
# both (one threefry call fewer for XLA to compile).
AUGMENT_STREAM = 0x617567
PMAP_AXIS = "devices"
# The metrics a log line shows, when computed.
_HEADLINE = ("loss", "accuracy", "f1_macro", "mse", "r2", "perplexity", "bits_per_byte")


def _is_writer() -> bool:
  return jax.process_index() == 0


class Setup:
  """Everything built before the loop, shared by training, evaluation and prediction."""

  def __init__(self, config: ml_collections.ConfigDict, precompile: bool = False):
    """precompile=True starts compiling the loop's train step (`precompiled_train`) in a
    thread as soon as the state's shapes are known, alongside the model's init: what
    train.run does. Evaluation, prediction and tests leave it off."""
    # (Schedules need the run's length, so the step count is known before the optimizer.)
    # ---------------------------------------------------------------- data
    t0 = time.perf_counter()
    self.placement = config.data.get("placement", "device")
    if self.placement not in ("device", "host"):
      raise ConfigError(f'config.data.placement="{self.placement}": use "device" (whole '
                        'splits in device memory, the fastest) or "host" (batches read on '
                        "the host and prefetched, for data larger than device memory).")
    # ------------------------------------------------------------- devices
    parallel_config = config.get("parallel") or {}
    self.mode = parallel.check_mode(parallel_config.get("mode", "jit"))
    self.mesh = parallel.build_mesh(parallel_config)
    parallel.check_batch_size(config.train.batch_size, self.mesh)
    if self.mode == "pmap" and self.placement == "host":
      raise ConfigError('config.parallel.mode="pmap" reads batches from device-resident '
                        'splits; use config.data.placement="device" or mode="jit".')
    self.batch_sharding = parallel.batch_sharding(self.mesh)
    # XLA:CPU with several devices can deadlock in a collective when many steps are in
    # flight at once (seen with 8 devices on 2 cores), so there each step is waited for.
    self.sync_each_step = self.mesh.size > 1 and jax.default_backend() == "cpu"
    self.compute_dtype, self.param_dtype = precision.resolve(config.get("precision"))
    logging.info("devices:\n%s\n  dtypes  %s", parallel.topology(
        self.mesh, self.mode, config.train.batch_size),
        precision.describe(self.compute_dtype, self.param_dtype))
    self.data = data_lib.load(config.data)
    validate.check_data(config, self.data)
    # Device placement: each split lives in device memory (a copy on each device) and
    # batches are gathered there. Host placement: splits stay on the host (lazily read) and
    # each batch is copied over, split across the devices.
    everywhere = parallel.replicated(self.mesh)
    self.splits = {name: ((jax.device_put(s.images, everywhere),
                           jax.device_put(s.labels, everywhere))
                          if self.placement == "device" else (s.images, s.labels))
                   for name, s in self.data.splits().items()}
    logging.info("data: %s", ", ".join(f"{n} {len(s):,}" for n, s in self.data.splits().items())
                 + f" examples of shape {self.data.train.images.shape[1:]}, "
                 + ("regression targets" if self.data.is_regression
                    else "tokens" if not self.data.stats["pixel_max"]
                    else f"{self.data.num_classes} classes")
                 + f" ({time.perf_counter() - t0:.1f} s)")
    # --------------------------------------------------------------- model
    # Shapes first, values last: everything up to the compiled steps needs only the
    # variables' shapes (a trace of the init), so the train step can compile in a thread
    # while the init compiles and runs here.
    self.model = build_model(config.model)
    init_rng, self.train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    self.example_input = jnp.asarray(self.data.train.images[:1])
    t_init = time.perf_counter()
    with compilation.gc_paused():
      traced_init = trace_init(self.model, init_rng, self.example_input)
    init_trace_seconds = time.perf_counter() - t_init
    variable_shapes = dict(traced_init.out_info)
    outputs = jax.eval_shape(self.model.apply, variable_shapes, self.example_input)
    self.classifies = has_class_outputs(outputs, self.data.train.labels)
    self.base_model = self.model
    freeze = config.finetune.freeze

    def with_adapters(variables):  # LoRA: train adapters on a frozen base (bigjax/lora.py)
      if config.lora.rank <= 0:
        return variables
      return dict(variables, params=lora.add_adapters(
          variables["params"], config.lora.rank, config.lora.targets,
          jax.random.fold_in(init_rng, 1)))
    if config.lora.rank > 0:
      variable_shapes = jax.eval_shape(with_adapters, variable_shapes)
      self.model = lora.LoRAModel(self.base_model, config.lora.alpha / config.lora.rank)
      keep = config.lora.train_base  # base params that still train, e.g. a new head
      freeze = (f"^{lora.BASE}/" + (f"(?!{keep})" if keep else "")
                + (f"|{freeze}" if freeze else ""))
    finetune_config = dict(config.finetune, freeze=freeze)
    # ------------------------------------------------------ loss, optimizer
    self.steps_per_epoch = len(self.data.train) // config.train.batch_size
    self.total_steps = (config.train.num_steps if config.train.num_steps > 0
                        else self.steps_per_epoch * config.train.num_epochs)
    self.loss_fn = build_loss(config.loss)
    self.tx = finetune.wrap_optimizer(
        build_optimizer(config.optimizer, config.loss, self.total_steps),
        variable_shapes["params"], finetune_config)
    param_dtype, tx = self.param_dtype, self.tx

    def initial_state(variables, rng):
      variables = dict(variables, params=cast_floats(variables["params"], param_dtype))
      return create_train_state(variables, tx, rng)
    state_shapes = jax.eval_shape(initial_state, variable_shapes, self.train_rng)
    self.state_shardings = parallel.state_shardings(state_shapes, self.mesh, parallel_config)
    # ------------------------------------------------------ augmentation
    self.augment = augment_lib.make_augmenter(
        config.data.get("augment"), outputs.shape[-1] if self.classifies else None)
    # ------------------------------------------------------ jitted steps
    self.metric_names = metrics_lib.parse_names(config.eval.metrics)
    step_options = dict(grad_accum_steps=config.train.grad_accum_steps,
                        update_model_state=not config.finetune.freeze_batch_stats,
                        compute_dtype=self.compute_dtype)
    train_step = make_train_step(self.model, self.loss_fn, self.tx, **step_options)
    eval_steps = {with_outputs: make_eval_step(self.model, self.loss_fn, self.metric_names,
                                               compute_dtype=self.compute_dtype,
                                               with_outputs=with_outputs)
                  for with_outputs in (False, True)}
    on_mesh = lambda batch: jax.lax.with_sharding_constraint(batch, self.batch_sharding)

    def augmented(state, batch, axis_name=None):
      if self.augment is None:
        return batch
      # Keyed by (seed, step): reproducible, and a resumed run sees the same batches.
      key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), AUGMENT_STREAM)
      if axis_name is not None:  # pmap: each device's share gets its own draws
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
      return self.augment(batch, key)

    def train_on_batch(state, batch):
      state, step_metrics = train_step(state, augmented(state, on_mesh(batch)))
      return jax.lax.with_sharding_constraint(state, self.state_shardings), step_metrics

    # The loop's step gathers its batch from the device-resident split, so the host only
    # sends B indices per step. State is donated: its buffers are reused in place.
    def train_on_indices(state, images, labels, indices):
      return train_on_batch(state, gather_batch(images, labels, indices))

    def eval_on_indices(state, images, labels, indices, mask, with_outputs=False):
      return eval_steps[with_outputs](state, on_mesh(gather_batch(images, labels, indices,
                                                                  mask)))

    def eval_on_batch(state, batch, with_outputs=False):
      return eval_steps[with_outputs](state, on_mesh(batch))

    def outputs_of(state, images):
      return predict_logits(self.model, state, on_mesh(images),
                            self.compute_dtype).astype(jnp.float32)

    def outputs_on_indices(state, images, indices):
      return outputs_of(state, jnp.take(images, indices, axis=0))

    self.train_on_indices = jax.jit(train_on_indices, donate_argnums=0)
    self.steps_per_call = config.train.get("steps_per_call", 1)
    if self.placement == "host" and self.steps_per_call > 1:
      logging.info("config.train.steps_per_call=%d ignored with host placement: one step "
                   "per prefetched batch", self.steps_per_call)
      self.steps_per_call = 1
    self.train_many_on_indices = jax.jit(scan_steps(train_on_indices), donate_argnums=0)
    self.eval_on_indices = jax.jit(eval_on_indices, static_argnames="with_outputs")
    self.outputs_on_indices = jax.jit(outputs_on_indices)
    # The host path's steps take batches that are already on the device.
    self.train_on_batch = jax.jit(train_on_batch, donate_argnums=0)
    self.eval_on_batch = jax.jit(eval_on_batch, static_argnames="with_outputs")
    self.outputs_on_batch = jax.jit(outputs_of)
    if self.mode == "pmap":
      # The same pure step per device on its share of the batch, sums added over devices.
      pmap_step = make_train_step(self.model, self.loss_fn, self.tx, axis_name=PMAP_AXIS,
                                  **step_options)

      def pmap_on_indices(state, images, labels, indices):
        batch = gather_batch(images, labels, indices)
        return pmap_step(state, augmented(state, batch, PMAP_AXIS))

      self.devices = list(self.mesh.devices.flat)
      self.train_pmapped = jax.pmap(pmap_on_indices, axis_name=PMAP_AXIS,
                                    devices=self.devices, donate_argnums=0)
      self.steps_per_call = 1
    largest = max(len(s) for s in self.data.splits().values() if s is not self.data.train)
    n = self.mesh.size  # eval batches split over the devices too (padding is masked)
    self.eval_batch_size = -(-min(config.eval.batch_size, largest) // n) * n
    self.batch_size = config.train.batch_size
    self._precompiled = None  # (steps per call, state spec, BackgroundCompile)
    if precompile and self.mode != "pmap":  # (pmap's state is one copy per device)
      spec = jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                   sharding=sharding),
                          state_shapes, self.state_shardings)
      images, labels = self.splits["train"]
      self._precompiled = (self.steps_per_call, spec, compilation.BackgroundCompile(
          lambda: self.lower_train(self.steps_per_call, spec, images, labels)))
    # ------------------------------------------------------ the model's values
    t_values = time.perf_counter()
    with compilation.gc_paused():
      variables = run_traced_init(traced_init, init_rng, self.example_input)
    self.init_seconds = init_trace_seconds + time.perf_counter() - t_values  # mostly compile
    variables = with_adapters(variables)
    # Compiled as one program: op by op, the optimizer's init dispatches (and on first use
    # compiles) a small program per leaf, about a second for a ResNet's or a ViT's.
    with compilation.gc_paused():
      state = jax.jit(initial_state)(variables, self.train_rng)
    self.initial_state = jax.device_put(state, self.state_shardings)
    if self.mesh.shape["fsdp"] > 1:
      logging.info("fsdp: %s", parallel.describe_shardings(self.state_shardings))
    self.num_params = count_params(self.initial_state.params)
    trainable, frozen = finetune.count_trainable(variables["params"], freeze)
    self.num_trainable = trainable
    logging.info("model: %s with %s parameters%s", config.model.name, f"{self.num_params:,}",
                 f" ({trainable:,} trainable, {frozen:,} frozen"
                 + (f"; LoRA rank {config.lora.rank}" if config.lora.rank > 0 else "")
                 + ")" if frozen else "")
    if self.augment is not None:
      logging.info("augmentation (train split, on the device): %s",
                   augment_lib.describe(config.data.augment))

  def lower_train(self, steps: int, state_spec, images, labels) -> jax.stages.Lowered:
    """The function the loop calls for `steps` train steps per call, lowered for a state
    of `state_spec` (shapes, dtypes, shardings) and the train split `images`, `labels` (for
    host placement, their shapes only: batches come from the host)."""
    if self.mode == "pmap":  # indices [devices, batch / devices]
      shape = (len(self.devices), self.batch_size // len(self.devices))
      return self.train_pmapped.lower(state_spec, images, labels, np.zeros(shape, np.int32))
    if self.placement == "host":  # a batch already on the device
      batch_spec = {"image": jax.ShapeDtypeStruct((self.batch_size, *images.shape[1:]),
                                                  np.float32),
                    "label": jax.ShapeDtypeStruct((self.batch_size, *labels.shape[1:]),
                                                  labels.dtype)}
      return self.train_on_batch.lower(state_spec, batch_spec)
    fn, shape = ((self.train_on_indices, (self.batch_size,)) if steps == 1 else
                 (self.train_many_on_indices, (steps, self.batch_size)))
    return fn.lower(state_spec, images, labels, np.zeros(shape, np.int32))

  def precompiled_train(self, steps: int, state_spec) -> compilation.BackgroundCompile | None:
    """The train function compiling in the background since __init__ (precompile=True),
    if it was started for `steps` per call and a state of exactly `state_spec`; else None."""
    if self._precompiled is None:
      return None
    started_steps, started_spec, pending = self._precompiled
    same = (started_steps == steps
            and jax.tree.structure(started_spec) == jax.tree.structure(state_spec)
            and jax.tree.leaves(started_spec) == jax.tree.leaves(state_spec))
    return pending if same else None

  def _synced(self, result):
    return jax.block_until_ready(result) if self.sync_each_step else result

  def local_share(self, index_batches):
    """Each row of [num_batches, B] cut to this host process's share (host placement)."""
    return [feed.host_shard(row, jax.process_index(), jax.process_count())
            for row in index_batches]

  def host_feed(self, host_batches) -> feed.Prefetch:
    """Host batches (this process's shares), prefetched as global batches on the mesh."""
    return feed.Prefetch(host_batches,
                         put=lambda b: parallel.put_global_batch(b, self.batch_sharding))

  def to_run_state(self, state: TrainState) -> TrainState:
    """The state as the loop steps it: laid out on the mesh, or one copy per device (pmap)."""
    state = jax.device_put(state, self.state_shardings)
    return (parallel.replicate_per_device(state, self.devices) if self.mode == "pmap"
            else state)

  def to_logical(self, state: TrainState) -> TrainState:
    """The loop's state as one train state on the mesh (what is saved and evaluated)."""
    if self.mode != "pmap":
      return state
    return jax.device_put(jax.tree.map(lambda x: x[0], state), self.state_shardings)

  def pmap_train_inputs(self):
    """The train split's (images, labels) with one copy per device, for the pmap step."""
    if not hasattr(self, "_pmap_inputs"):
      images, labels = self.data.train.images, self.data.train.labels
      self._pmap_inputs = parallel.replicate_per_device((images, labels), self.devices)
    return self._pmap_inputs

  def check_split(self, split: str, config_key: str) -> None:
    if split not in self.splits:
      raise ConfigError(f'{config_key} names split "{split}", which this data does not have.'
                        f"{did_you_mean(split, self.splits)} Splits: {', '.join(self.splits)}.")

  def evaluate(self, state: TrainState, split: str, with_outputs: bool = False):
    """The configured metrics over every example of a split, exactly once (padding masked).

    with_outputs: `-> (metrics, outputs [N, ...] float32)`, the model's outputs for each
    example from the same pass, as `outputs()` gives them, on every process (a collective:
    every process must ask)."""
    images, labels = self.splits[split]
    indices, mask = data_lib.padded_batches(len(labels), self.eval_batch_size)
    if self.placement == "host":
      batches = self.host_feed(dict(image=images[i], label=labels[i], mask=m)
                               for i, m in zip(self.local_share(indices), self.local_share(mask)))
      results = [self._synced(self.eval_on_batch(state, batch, with_outputs=with_outputs))
                 for batch in batches]
    else:
      results = [self._synced(self.eval_on_indices(state, images, labels, batch_indices,
                                                   batch_mask, with_outputs=with_outputs))
                 for batch_indices, batch_mask in zip(indices, mask)]
    batch_sums = [r[0] for r in results] if with_outputs else results
    # Per-batch sums stay on the device until here: one transfer, then float64 totals.
    values = metrics_lib.compute(self.metric_names,
                                 metrics_lib.total(jax.device_get(batch_sums)))
    if not with_outputs:
      return values
    return values, _all_rows([r[1] for r in results], len(labels))

  def metric_value_names(self) -> set[str]:
    """The single-number values evaluation gives (e.g. "f1_macro"), from the shapes of one
    eval batch's sums: traced, not compiled (a compile here cost as much as a second)."""
    split = "validation" if "validation" in self.splits else "test"
    images, labels = self.splits[split]
    with compilation.gc_paused():
      if self.placement == "host":
        indices, mask = data_lib.padded_batches(min(len(labels), 8), 8)
        shapes = jax.eval_shape(self.eval_on_batch, self.initial_state,
                                dict(image=images[indices[0]], label=labels[indices[0]],
                                     mask=mask[0]), with_outputs=False)
      else:  # evaluate()'s own call, so its first evaluation reuses this trace
        indices, mask = data_lib.padded_batches(len(labels), self.eval_batch_size)
        shapes = jax.eval_shape(self.eval_on_indices, self.initial_state, images, labels,
                                indices[0], mask[0], with_outputs=False)
    # Ones, not zeros: no metric divides by zero on the way to its names.
    sums = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
    values = metrics_lib.compute(self.metric_names, metrics_lib.total([sums]))
    return set(metrics_lib.scalars(values))

  def outputs(self, state: TrainState, images: jax.Array) -> np.ndarray:
    """The model's outputs [N, C] (eval mode) for model-ready images [N, H, W, C] (on the
    device, or host arrays/lazy images read batch by batch); across processes, a collective
    that gives every process all the rows."""
    indices, _ = data_lib.padded_batches(len(images), self.eval_batch_size)
    if isinstance(images, jax.Array):
      out = [self._synced(self.outputs_on_indices(state, images, batch)) for batch in indices]
    else:
      out = [self._synced(self.outputs_on_batch(state, batch))
             for batch in self.host_feed(images[i] for i in self.local_share(indices))]
    return _all_rows(out, len(images))

  def probabilities(self, state: TrainState, images: jax.Array) -> np.ndarray:
    """Softmax class probabilities [N, C] for model-ready images [N, H, W, C]."""
    return metrics_lib.softmax_probabilities(self.outputs(state, images))


def _all_rows(batch_outputs: list, n: int) -> np.ndarray:
  """Per-batch device outputs as one host array of the first n rows (the rest: padding).
  Across processes each holds its rows of every batch: all gather them (a collective, so
  every process must call)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    batch_outputs = multihost_utils.process_allgather(batch_outputs, tiled=True)
  return np.concatenate(jax.device_get(batch_outputs))[:n]


def _environment() -> dict:
  import flax
  import optax
  return {"device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
          "num_devices": jax.device_count(), "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "bigjax": bigjax.__version__, "host": platform.node()}


def split_names(spec: str | tuple, config_key: str, setup: Setup) -> list[str]:
  """'validation,test' -> the splits, each checked; "validation" is left out (with a log
  line) when the data config holds none out (validation_fraction=0)."""
  names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
  names = [n for n in names if n]
  if "validation" in names and "validation" not in setup.splits:
    logging.info("%s: no validation split (config.data.validation_fraction is 0); "
                 "skipping it", config_key)
    names.remove("validation")
  for name in names:
    setup.check_split(name, config_key)
  return names


TRAIN_VALUES = ("loss", "accuracy", "learning_rate")  # what "train/..." keys can name
                                                      # (accuracy: classification only)


def check_metric_keys(config: ml_collections.ConfigDict, setup: Setup,
                      epoch_splits: list[str], best_key: str) -> None:
  """Every "split/metric" the config stops or keeps the best by exists after each epoch."""
  keys = {"config.train.stop_when": (termination.Target.parse(config.train.stop_when).key
                                     if config.train.stop_when else ""),
          "config.train.early_stopping.metric": config.train.early_stopping.metric,
          "config.checkpoint.best_metric": best_key}
  keys = {where: key for where, key in keys.items() if key}
  if not keys:
    return
  names = setup.metric_value_names()
  values = {split: dict.fromkeys(names, 0.0) for split in epoch_splits}
  values["train"] = {name: 0.0 for name in TRAIN_VALUES
                     if name != "accuracy" or setup.classifies}
  for where, key in keys.items():
    if termination.lookup(values, key, where) is None:
      raise ConfigError(
          f'{where}="{key}": split "{key.partition("/")[0]}" is not evaluated after each '
          f"epoch. Use one of {', '.join(values)} (config.eval.every_epoch="
          f'"{config.eval.every_epoch}").')


def _initial_state(config: ml_collections.ConfigDict, workdir: str, manager,
                   setup: Setup) -> tuple[TrainState, dict, int | None]:
  """(state, checkpoint meta, step resumed from), by precedence: a checkpoint in this workdir
  > config.checkpoint.resume_from (the full state) > config.init_from (params only) >
  the fresh init."""
  channels = setup.data.train.images.shape[-1]
  found = checkpoint.restore_newest_intact(manager, setup.initial_state, channels)
  if found is not None:
    state, meta, step = found
    logging.info("resumed from step %d (%s)", step, manager.directory)
    return state, meta, step
  if config.checkpoint.resume_from:
    other, kind, step = finetune.locate(config.checkpoint.resume_from)
    other_manager = checkpoint.make_manager(other, create=False, kind=kind)
    state, meta = checkpoint.restore(other_manager, step, setup.initial_state, channels)
    other_manager.close()
    logging.info("resumed from step %d of %s (config.checkpoint.resume_from)", step,
                 other_manager.directory)
    return state, meta, step
  if config.init_from.path:
    source = finetune.read(config.init_from.path, config.init_from.step)
    state, text = finetune.load(setup.initial_state, source, config.init_from,
                                config.model.name)
    logging.info("initialised from %s/%d (config.init_from):\n%s", source.directory,
                 source.step, text)
    if _is_writer():
      with open(os.path.join(workdir, "init_from.txt"), "w") as f:
        f.write(f"{source.directory}/{source.step}\n{text}\n")
    return state, {}, None
  return setup.initial_state, {}, None


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and checkpoints as `config` says; returns (and writes) the results."""
  t_start = time.perf_counter()
  # --------------------------------------------------------------- workdir
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  writer = _is_writer()
  manager = checkpoint.make_manager(workdir, config.checkpoint.max_to_keep)
  if manager.latest_step() is not None:
    validate.check_resumable(config, workdir, RESUMABLE_CHANGES)
  if writer:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  log = MetricsLog(os.path.join(workdir, "metrics.jsonl") if writer else None)
  logging.info("workdir: %s", workdir)
  target = termination.Target.parse(config.train.stop_when)
  early = config.train.early_stopping

  setup = Setup(config, precompile=True)
  epoch_splits = split_names(config.eval.every_epoch, "config.eval.every_epoch", setup)
  final_splits = split_names(config.eval.at_end, "config.eval.at_end", setup)
  best_key = config.checkpoint.best_metric
  if best_key.startswith("validation/") and "validation" not in epoch_splits:
    # The default keys on validation; a run that holds none out simply keeps no best.
    logging.info("no validation split evaluated each epoch: no best checkpoint "
                 "(config.checkpoint.best_metric=%s)", best_key)
    best_key = ""
  check_metric_keys(config, setup, epoch_splits, best_key)
  best_manager = (checkpoint.make_manager(workdir, 1, kind=checkpoint.BEST)
                  if best_key else None)
  if writer:
    write_json(os.path.join(workdir, "data_stats.json"), setup.data.stats)
  board = (tensorboard.ScalarWriter(os.path.join(workdir, "tensorboard"))
           if writer and config.report.tensorboard else None)

  # ---------------------------------------------------------- restore
  n_train = len(setup.data.train)
  batch_size = config.train.batch_size
  steps_per_epoch = setup.steps_per_epoch  # the ragged tail of each epoch's order is unused
  total_steps = setup.total_steps
  state = setup.initial_state
  state, meta, resumed_from = _initial_state(config, workdir, manager, setup)
  step = int(state.step)
  pmap = setup.mode == "pmap"
  state = setup.to_run_state(state)  # (placed on the mesh; pmap: one copy per device)
  early_state = meta.get("early_stopping")
  best = meta.get("best")  # {"metric", "value", "step"} of the best checkpoint so far
  stopped = meta.get("stopped")
  if stopped:
    logging.info("this run stopped at step %d (%s); not training further", step, stopped)
    total_steps = step

  # ------------------------------------------------------------ compile
  train_images, train_labels = (setup.pmap_train_inputs() if pmap
                                 else setup.splits["train"])
  host = setup.placement == "host"
  k = setup.steps_per_call
  compiled: dict = {}
  compile_seconds = 0.0
  cache_loads = 0  # executables the persistent compilation cache supplied
  alongside_init = False  # whether the train step compiled while the model initialised
  # Shapes only: the live state's buffers are donated to each call, so lower from these.
  state_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=x.sharding), state)

  def compiled_step(steps: int):
    """The train function for `steps` steps per call, compiled on first use: with k > 1,
    the one-step function is only needed when an epoch or log interval is not a multiple
    of k, and compiling it anyway would cost as much as a second of a short run. The
    first one usually started compiling in Setup, alongside the model's init."""
    nonlocal compile_seconds, cache_loads, alongside_init
    if steps not in compiled:
      pending = setup.precompiled_train(steps, state_spec)
      if pending is not None:
        alongside_init = True
        compiled[steps] = pending.result()
        compile_seconds += pending.seconds  # its own time, though partly hidden by init's
        cache_loads += pending.cache_loads
        return compiled[steps]
      t_compile = time.perf_counter()
      with (compilation.CompileCounter(this_thread_only=True) as counter,
            compilation.gc_paused()):
        compiled[steps] = setup.lower_train(steps, state_spec, train_images,
                                            train_labels).compile()
      compile_seconds += time.perf_counter() - t_compile
      cache_loads += counter.cache_loads
    return compiled[steps]

  startup_seconds = None  # from run() to the train step ready: what a user waits for
  if step < total_steps:
    compiled_step(k)
    startup_seconds = time.perf_counter() - t_start
    logging.info("train step %s in %.2f s%s (ready %.1f s after start); %d steps per "
                 "epoch of %d, batch %d%s; %d steps in all",
                 "loaded from the compilation cache" if cache_loads else "compiled",
                 compile_seconds, ", alongside the model's init" if alongside_init else "",
                 startup_seconds, steps_per_epoch, n_train, batch_size,
                 f", {k} steps per call" if k > 1 else "", total_steps)

  # --------------------------------------------------------------- loop
  is_lm = config.model.name == "gpt"
  seq_len = int(setup.data.train.images.shape[1]) if is_lm else None
  progress = Progress(total_steps, batch_size, tokens_per_example=seq_len)
  pending: list[tuple[int, dict]] = []  # device metrics, fetched at log time, not per step
  log_every = config.train.log_every_steps
  train_seconds = compile_seconds
  eval_seconds = 0.0
  latest: dict[str, dict] = {}  # split -> its latest metrics (and "train": the latest row)
  evaluated_at: dict[str, int] = {}  # split -> the step its latest metrics are of
  t_segment = time.perf_counter()
  last_plot = [time.monotonic()]

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
    latest["train"] = row
    log.write({"split": "train", "step": last_step, "epoch": epoch + 1, **row})
    if board:
      board.scalars(last_step, {f"train/{key}": v for key, v in row.items()})
    logging.info("epoch %d/%d step %d/%d | loss %.4f%s lr %.3g | %s", epoch + 1,
                 num_epochs, last_step, total_steps, row["loss"],
                 f" acc {row['accuracy']:.4f}" if "accuracy" in row else "",
                 row["learning_rate"], progress.line(last_step))

  min_interval = config.checkpoint.get("min_interval_seconds", 0.0)
  # When the last epoch-end save was (from the start: a crash loses at most the interval).
  last_epoch_save = [time.monotonic()]
  pending_best: list = []  # [(step, epoch, state copy, best)] not yet written (throttled)

  def write_pending_best() -> None:
    for best_step, best_epoch, best_state, best_info in pending_best:
      if best_step not in best_manager.all_steps():
        checkpoint.save(best_manager, best_step, best_state,
                        {"epoch": best_epoch, "best": best_info})
    pending_best.clear()

  def save_latest(epoch: int, stopped: str | None = None) -> None:
    write_pending_best()  # the best first: a latest that names it is only written after it
    checkpoint.save(manager, step, setup.to_logical(state), {
        "epoch": epoch, "metrics": {s: metrics_lib.scalars(latest[s]) for s in latest},
        "early_stopping": early_state, "best": best, "stopped": stopped})

  def end_of_epoch(epoch: int) -> str | None:
    """Evaluates, decides whether to stop, checkpoints; returns why to stop, or None."""
    nonlocal early_state, best
    logical = setup.to_logical(state)
    for split in epoch_splits:
      values = setup.evaluate(logical, split)
      latest[split], evaluated_at[split] = values, step
      scalars = metrics_lib.scalars(values)
      log.write({"split": split, "step": step, "epoch": epoch + 1, **scalars})
      if board:
        board.scalars(step, {f"{split}/{key}": v for key, v in scalars.items()})
    train_row = latest.get("train", {})
    logging.info("epoch %d/%d done at step %d | train %s%s", epoch + 1, num_epochs, step,
                 " ".join(f"{name} {train_row[name]:.4f}" for name in ("loss", "accuracy")
                          if name in train_row),
                 "".join(f" | {split} " + " ".join(
                     f"{name} {latest[split][name]:.4f}" for name in _HEADLINE
                     if name in latest[split]) for split in epoch_splits))
    reason = None
    if target is not None and target.reached(latest):
      reason = f"{target.key} reached {target.op} {target.value:g}"
    if early.metric:
      value = termination.lookup(latest, early.metric, "config.train.early_stopping.metric")
      if value is not None:
        early_state, stop = termination.early_stopping_update(
            early_state, value, mode=termination.mode_of(early.metric, early.mode),
            patience=early.patience, min_delta=early.min_delta)
        if stop and reason is None:
          reason = (f"early stopping: {early.metric} did not improve on "
                    f"{early_state['best']:.4g} for {early.patience} evaluations")
    # Epoch-end saves at most every min_interval seconds (each costs ~10-20 ms, a few
    # percent of a sub-second epoch); the last epoch, a stop and a signal always save.
    due = (time.monotonic() - last_epoch_save[0] >= min_interval or step >= total_steps
           or reason is not None or signals.received is not None)
    if best_manager is not None:
      value = termination.lookup(latest, best_key, "config.checkpoint.best_metric")
      mode = termination.mode_of(best_key)
      if value is not None and (best is None or (value < best["value"] if mode == "min"
                                                 else value > best["value"])):
        best = {"metric": best_key, "value": value, "step": step}
        # Kept until the next save writes it (best first: a kill between the two saves
        # re-runs this epoch, not loses it). Re-run after a resume, the step may already
        # be there: the same state, bit for bit.
        pending_best[:] = [(step, epoch + 1, logical if due else jax.tree.map(jnp.copy, logical),
                            dict(best))]
    if due:
      save_latest(epoch + 1, stopped=reason)
      last_epoch_save[0] = time.monotonic()
    if writer:
      artifacts.write_metrics_csv(workdir)
      # Redrawn at most once a minute (a plot costs ~0.5 s, an epoch of a small run less).
      if config.report.plots and time.monotonic() - last_plot[0] > PLOT_INTERVAL_SECONDS:
        artifacts.plot_learning_curves(workdir, steps_per_epoch)
        last_plot[0] = time.monotonic()
    return reason

  num_epochs = -(-total_steps // steps_per_epoch)
  save_every = config.checkpoint.every_steps
  epoch = step // steps_per_epoch
  signals = SaveOnSignal()
  signals.install()
  batches = None  # the host path's prefetcher for the current epoch
  # Every function the loop needs compiles in its first epoch (train step, evaluation,
  # checkpoint copies); a compilation in a later epoch means something retraces each time.
  compiles = compilation.CompileCounter().__enter__()
  compiles_per_epoch: list[int] = []
  try:
    while step < total_steps:
      order = data_lib.epoch_permutation(config.seed, epoch, n_train)
      i = step % steps_per_epoch
      epoch_end = min(steps_per_epoch, i + total_steps - step)  # num_steps may end mid-epoch
      batches = (setup.host_feed(feed.host_batches(
          train_images, train_labels, order, batch_size, i, epoch_end, jax.process_index(),
          jax.process_count())) if host else None)
      while i < epoch_end:
        # k steps per call, but never across an epoch end or a logging step, so outputs
        # and checkpoints are the same whatever steps_per_call is.
        n = min(k, epoch_end - i, log_every - step % log_every,
                save_every - step % save_every if save_every else k)
        indices = order[i * batch_size:(i + n) * batch_size]
        if host:
          n = 1
          state, step_metrics = compiled_step(1)(state, next(batches))
        elif pmap:
          n = 1
          state, step_metrics = compiled_step(1)(
              state, train_images, train_labels,
              indices[:batch_size].reshape(len(setup.devices), -1))
        elif n == k > 1:
          state, step_metrics = compiled_step(k)(state, train_images, train_labels,
                                                 indices.reshape(k, batch_size))
        else:
          n = 1
          state, step_metrics = compiled_step(1)(state, train_images, train_labels,
                                                 indices[:batch_size])
        step += n
        i += n
        pending.append((step, step_metrics))
        if setup.sync_each_step:
          jax.block_until_ready(step_metrics)
        if not progress.started:
          jax.block_until_ready(state.step)  # the first call's time is not steady-state
          progress.start(step)
        if step % log_every == 0:
          flush_train_metrics(epoch)
        if signals.received is not None and i < epoch_end:  # preempted: save, then stop
          if batches is not None:
            batches.close()
          flush_train_metrics(epoch)
          save_latest(epoch)
          signals.stop(manager, step)
        if save_every and step % save_every == 0 and i < steps_per_epoch:
          save_latest(epoch)  # the epoch's end saves anyway
      # ---------------------------------------------------- end of epoch
      if batches is not None:
        batches.close()
      flush_train_metrics(epoch)
      jax.block_until_ready(state.step)
      train_seconds += time.perf_counter() - t_segment
      progress.pause()
      t_eval = time.perf_counter()
      stopped = end_of_epoch(epoch)
      eval_seconds += time.perf_counter() - t_eval
      compiles_per_epoch.append(compiles.count - sum(compiles_per_epoch))
      if len(compiles_per_epoch) > 1 and compiles_per_epoch[-1]:
        logging.warning(
            "%d XLA compilation(s) in epoch %d, after the first epoch: something is traced "
            "again each epoch (new shapes, dtypes or Python values), which costs time. "
            "JAX_LOG_COMPILES=1 names what compiles.", compiles_per_epoch[-1], epoch + 1)
      progress.resume()
      t_segment = time.perf_counter()
      epoch += 1
      if stopped:
        logging.info("stopping at step %d of %d: %s", step, total_steps, stopped)
        break
      if signals.received is not None and step < total_steps:
        signals.stop(manager, step)  # the epoch's end saved
  finally:
    compiles.__exit__()
    signals.uninstall()
    if batches is not None:
      batches.close()

  # -------------------------------------------------------------- final
  state = setup.to_logical(state)
  manager.wait_until_finished()
  if best_manager is not None:
    best_manager.wait_until_finished()
  progress.pause()
  t_eval = time.perf_counter()
  final: dict[str, dict] = {}
  # The pictures show one split's predictions: its final evaluation keeps the model's
  # outputs, so the pictures need no second pass over it (ViT: ~25 s for 10,000 images).
  # Every process runs the same evaluation (the same programs), though only one draws.
  picture_split = (artifacts.picture_split(final_splits)
                   if config.report.plots and final_splits
                   and (setup.classifies or setup.data.is_regression) else None)
  picture_outputs = None
  for split in final_splits:
    if evaluated_at.get(split) == step:  # already evaluated at this step
      final[split] = latest[split]
      if split == picture_split:  # its outputs, from every process (collective)
        _, picture_outputs = setup.evaluate(state, split, with_outputs=True)
      continue
    if split == picture_split:
      final[split], picture_outputs = setup.evaluate(state, split, with_outputs=True)
    else:
      final[split] = setup.evaluate(state, split)
    log.write({"split": split, "step": step, **metrics_lib.scalars(final[split])})
    if board:
      board.scalars(step, {f"{split}/{key}": v
                           for key, v in metrics_lib.scalars(final[split]).items()})
  eval_seconds += time.perf_counter() - t_eval
  for split in final_splits:
    logging.info("%s | %s (%d examples)", split, " ".join(
        f"{name} {final[split][name]:.4f}" for name in _HEADLINE if name in final[split]),
        final[split]["count"])
  steady = progress.steps_per_second(step) * batch_size
  results = {
      "num_params": setup.num_params, "trainable_params": setup.num_trainable,
      "steps": step, "epochs": num_epochs,
      "train_seconds": train_seconds, "compile_seconds": compile_seconds,
      "init_seconds": setup.init_seconds, "startup_seconds": startup_seconds,
      "eval_seconds": eval_seconds,
      "steady_examples_per_second": steady if np.isfinite(steady) else None,
      "resumed_from_step": resumed_from, "stopped_early": stopped, "best_checkpoint": best,
      # XLA compilations in each epoch this run trained (the first includes evaluation's)
      "compilations_per_epoch": compiles_per_epoch,
      "metrics": final, "environment": _environment(),
  }
  if is_lm and steady and np.isfinite(steady):
    from bigjax import mfu
    results["tokens_per_second"] = steady * seq_len
    results["model_flops_per_token"] = mfu.gpt_flops_per_token(config.model, seq_len)
    results["mfu"] = mfu.utilisation(results["tokens_per_second"],
                                     results["model_flops_per_token"],
                                     str(jax.devices()[0].device_kind), setup.mesh.size)
    logging.info("%s tokens/s; %.3g training FLOPs per token; MFU %s",
                 f"{results['tokens_per_second']:,.0f}", results["model_flops_per_token"],
                 f"{results['mfu']:.1%} of bf16 peak" if results["mfu"] is not None
                 else "n/a (no peak figure for this device)")
  for split, values in final.items():  # the headline numbers, flat
    for name in ("accuracy", "loss"):
      if name in values:
        results[f"{split}_{name}"] = values[name]
  if writer:
    write_json(os.path.join(workdir, "results.json"), results)
    artifacts.write_metrics_csv(workdir)
    if config.report.plots or config.report.html:
      artifacts.final_outputs(workdir, config, setup, state, results, picture_outputs)
    if config.lora.rank > 0:
      artifacts.write_lora(workdir, config, state.params, setup.model.scale)
  manager.close()
  if best_manager is not None:
    best_manager.close()
  headline = final.get("test") or next(iter(final.values()), {})
  logging.info("done: %s, %s params, trained in %.1f s (compile %.2f s); outputs in %s",
               next((f"{n} {headline[n]:.4f}" for n in ("accuracy", "r2", "loss")
                     if n in headline), "no final evaluation"), f"{setup.num_params:,}",
               train_seconds,
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
