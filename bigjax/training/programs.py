"""The compiled programs of a run: data on the devices, the model, and the train, eval and
output functions for the one strategy the config chose.

Three strategies, one interface: `programs.train(state, chunk) -> (state, metrics)`, where a
chunk (from `programs.chunks`) is what the strategy's compiled function takes:
- "indices": the splits live in device memory (replicated on the mesh) and a call takes k
  steps' batch indices [k, B]; batches are gathered on the device (jit over the mesh);
- "host": splits stay on the host and each call takes one batch, prefetched and split
  over the mesh (data larger than device memory, multi-host);
- "pmap": as "indices", with `jax.pmap` over the devices, one state copy per device.
Evaluation and outputs follow the same placement. Training, evaluation, prediction, the
tests and the bench scripts all build their programs here.
"""

from __future__ import annotations

import dataclasses
import functools
import logging as py_logging
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigjax import data as data_lib
from bigjax.compression import distillation
from bigjax.compression import pruning
from bigjax.core import metrics as metrics_lib
from bigjax.core.losses import build_loss
from bigjax.core.optimizers import build_optimizer
from bigjax.core.steps import cast_floats
from bigjax.core.steps import count_params
from bigjax.core.steps import create_train_state
from bigjax.core.steps import gather_batch
from bigjax.core.steps import has_class_outputs
from bigjax.core.steps import make_eval_step
from bigjax.core.steps import make_train_step
from bigjax.core.steps import predict_logits
from bigjax.core.steps import scan_steps
from bigjax.core.steps import TrainState
from bigjax.data import augment as augment_lib
from bigjax.data import feed
from bigjax.finetuning import finetune
from bigjax.finetuning import lora
from bigjax.models import build_model
from bigjax.models import init_variables
from bigjax.registry import ConfigError
from bigjax.registry import did_you_mean
from bigjax.sharding import parallel
from bigjax.sharding import precision
from bigjax.training import compilation
from bigjax.training import validate

logging = py_logging.getLogger("bigjax.train")

# Augmentation keys are fold_in(fold_in(rng, step), AUGMENT_STREAM): apart from dropout's
# (Flax folds module paths into fold_in(rng, step)), and the step's key is computed once for
# both (one threefry call fewer for XLA to compile).
AUGMENT_STREAM = 0x617567
PMAP_AXIS = "devices"


@dataclasses.dataclass(frozen=True)
class Chunk:
  """One call of the train program: `steps` optimizer steps on `inputs` (batch indices
  [B] or [steps, B] on the device, [devices, B / devices] for pmap, or a device batch)."""
  steps: int
  inputs: Any


def _initial_state(variables: dict, rng: jax.Array, tx, param_dtype) -> TrainState:
  variables = dict(variables, params=cast_floats(variables["params"], param_dtype))
  return create_train_state(variables, tx, rng)


def _augmented(augment, state: TrainState, batch: dict, axis_name=None) -> dict:
  if augment is None:
    return batch
  # Keyed by (seed, step): reproducible, and a resumed run sees the same batches.
  key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), AUGMENT_STREAM)
  if axis_name is not None:  # pmap: each device's share gets its own draws
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  return augment(batch, key)


def _train_on_batch(train_step, augment, batch_sharding, state_shardings, state, batch):
  batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  state, step_metrics = train_step(state, _augmented(augment, state, batch))
  return jax.lax.with_sharding_constraint(state, state_shardings), step_metrics


def _train_on_indices(train_on_batch, state, images, labels, indices):
  return train_on_batch(state, gather_batch(images, labels, indices))


def _pmap_on_indices(pmap_step, augment, state, images, labels, indices):
  batch = gather_batch(images, labels, indices)
  return pmap_step(state, _augmented(augment, state, batch, PMAP_AXIS))


def _eval_on_batch(eval_steps, batch_sharding, state, batch, with_outputs=False):
  return eval_steps[with_outputs](state, jax.lax.with_sharding_constraint(batch,
                                                                          batch_sharding))


def _eval_on_indices(eval_on_batch, state, images, labels, indices, mask, with_outputs=False):
  return eval_on_batch(state, gather_batch(images, labels, indices, mask), with_outputs)


def _outputs_of(model, compute_dtype, batch_sharding, state, images):
  images = jax.lax.with_sharding_constraint(images, batch_sharding)
  return predict_logits(model, state, images, compute_dtype).astype(jnp.float32)


def _outputs_on_indices(outputs_of, state, images, indices):
  return outputs_of(state, jnp.take(images, indices, axis=0))


class Programs:
  """Everything built before the loop, shared by training, evaluation and prediction."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._place_data(config)
    variables = self._build_model(config)
    self._build_programs(config, variables)
    self._init_state(config, variables)

  # ------------------------------------------------------------------ construction
  def _place_data(self, config) -> None:
    t0 = time.perf_counter()
    data_lib.pipeline.check_placement(config.data.placement)  # (before anything is read)
    parallel_config = config.parallel
    self.mode = parallel.check_mode(parallel_config.mode)
    self.mesh = parallel.build_mesh(parallel_config)
    parallel.check_batch_size(config.train.batch_size, self.mesh)
    if self.mode == "pmap" and config.data.placement == "host":
      raise ConfigError('config.parallel.mode="pmap" reads batches from device-resident '
                        'splits; use config.data.placement="device" or mode="jit".')
    self.batch_sharding = parallel.batch_sharding(self.mesh)
    # XLA:CPU with several devices can deadlock in a collective when many steps are in
    # flight at once (seen with 8 devices on 2 cores), so there each step is waited for.
    self.sync_each_step = self.mesh.size > 1 and jax.default_backend() == "cpu"
    self.compute_dtype, self.param_dtype = precision.resolve(config.precision)
    logging.info("devices:\n%s\n  dtypes  %s", parallel.topology(
        self.mesh, self.mode, config.train.batch_size),
        precision.describe(self.compute_dtype, self.param_dtype))
    self.data = data_lib.load(config.data)
    self.placement = self.data.placement
    if self.mode == "pmap" and self.placement == "host":
      raise ConfigError('config.parallel.mode="pmap" reads batches from device-resident '
                        "splits, and these splits are too large for config.data."
                        "device_limit_gb: use mode=\"jit\", or raise the limit.")
    self.strategy = "pmap" if self.mode == "pmap" else (
        "host" if self.placement == "host" else "indices")
    validate.check_data(config, self.data)
    if self.data.is_tokens and config.data.augment.get("mlm_probability"):
      _fix_evaluation_masks(self.data, config.data, int(config.model.vocab_size))
    # Device placement: each split lives in device memory (a copy on each device) and
    # batches are gathered there. Host placement: splits stay on the host (lazily read) and
    # each batch is copied over, split across the devices.
    everywhere = parallel.replicated(self.mesh)
    self.splits = {name: ((jax.device_put(s.inputs, everywhere),
                           jax.device_put(s.targets, everywhere))
                          if self.placement == "device" else (s.inputs, s.targets))
                   for name, s in self.data.splits().items()}
    self.input_wait_seconds = 0.0  # host placement: training's waits for a batch
    self.workers = feed.worker_count(int(config.data.get("worker_count", 0)))
    self.skip_bad = bool(config.data.get("skip_bad_records", False)
                         or (config.data.get("source") == "folder"
                             and config.data.get("skip_bad_images", False)))
    if self.placement == "host" and self.workers and not feed.is_streamed(
        self.data.train.inputs):
      logging.info("config.data.worker_count=%d unused: the train split is in memory (its "
                   "source is not read lazily), so the prefetch thread reads its batches",
                   self.workers)
    logging.info("data: %s", ", ".join(f"{n} {len(s):,}" for n, s in self.data.splits().items())
                 + f" examples of shape {self.data.train.inputs.shape[1:]}, "
                 + ("regression targets" if self.data.is_regression
                    else "tokens" if self.data.is_tokens
                    else f"{self.data.num_classes} classes")
                 + f" ({time.perf_counter() - t0:.1f} s)")
    self.batch_size = config.train.batch_size
    self.steps_per_epoch = len(self.data.train) // self.batch_size  # the tail is unused
    self.total_steps = (config.train.num_steps if config.train.num_steps > 0
                        else self.steps_per_epoch * config.train.num_epochs)
    largest = max(len(s) for s in self.data.splits().values() if s is not self.data.train)
    n = self.mesh.size  # eval batches split over the devices too (padding is masked)
    self.eval_batch_size = -(-min(config.eval.batch_size, largest) // n) * n

  def _build_model(self, config) -> dict:
    """The model and the classes of outputs it has; returns its variables (values:
    compiled and run once), LoRA adapters added."""
    self.base_model = self.model = build_model(config.model)
    aware = (config.get("quantize") or {}).get("aware")
    if aware:  # quantization-aware training: int8 rounding simulated in the forward pass
      from bigjax.compression import quantization
      self.model = quantization.aware(self.model, aware)
    init_rng, self.train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    self.example_input = jnp.asarray(self.data.train.inputs[:1])
    t_init = time.perf_counter()
    with compilation.gc_paused():
      try:
        variables = init_variables(self.model, init_rng, self.example_input)
      except (TypeError, jax.errors.UnexpectedTracerError) as e:
        if aware != "static":
          raise
        raise ConfigError(
            "config.quantize.aware=static: qwix cannot train static activation scales "
            "through this model (its convolutions' statistics leak out of jit in qwix "
            f"{_version('qwix')}). Use aware=dynamic, or train in float and run "
            "--mode=quantize --quantize=static, which calibrates after training.") from e
    self.init_seconds = time.perf_counter() - t_init  # mostly compile
    outputs = jax.eval_shape(self.model.apply, variables, self.example_input)
    self.classifies = has_class_outputs(outputs, self.data.train.targets)
    self.num_outputs = outputs.shape[-1]
    self.freeze = config.finetune.freeze
    if config.lora.rank > 0:  # train adapters on a frozen base (bigjax/finetuning/lora.py)
      variables = dict(variables, params=lora.add_adapters(
          variables["params"], config.lora.rank, config.lora.targets,
          jax.random.fold_in(init_rng, 1)))
      self.model = lora.LoRAModel(self.base_model, config.lora.alpha / config.lora.rank)
      keep = config.lora.train_base  # base params that still train, e.g. a new head
      self.freeze = (f"^{lora.BASE}/" + (f"(?!{keep})" if keep else "")
                     + (f"|{self.freeze}" if self.freeze else ""))
    return variables

  def _build_programs(self, config, variables: dict) -> None:
    """The loss, the optimizer and the jitted functions (compiled on first use)."""
    self.loss_fn = build_loss(config.loss)
    params_shapes = jax.eval_shape(lambda: variables["params"])
    self.tx = pruning.wrap(finetune.wrap_optimizer(
        build_optimizer(config.optimizer, config.loss, self.total_steps), params_shapes,
        dict(config.finetune, freeze=self.freeze)), config.get("prune"), self.total_steps,
        params_shapes)
    state_shapes = jax.eval_shape(
        functools.partial(_initial_state, tx=self.tx, param_dtype=self.param_dtype),
        variables, self.train_rng)
    self.state_shardings = parallel.state_shardings(state_shapes, self.mesh, config.parallel)
    self.augment = augment_lib.make_augmenter(
        config.data.augment, self.num_outputs if self.classifies else None,
        vocab_size=config.model.get("vocab_size"), tokens=self.data.is_tokens)
    self.metric_names = metrics_lib.parse_names(config.eval.metrics)
    step_options = dict(grad_accum_steps=config.train.grad_accum_steps,
                        update_model_state=not config.finetune.freeze_batch_stats,
                        compute_dtype=self.compute_dtype)
    self.train_loss_fn = (distillation.wrap_loss(self.loss_fn, config.distill, self.data)
                          if distillation.is_on(config.get("distill")) else self.loss_fn)
    if getattr(self.train_loss_fn, "compares_embeddings", False):
      if int(config.data.augment.get("views", 1)) != 2:
        raise ConfigError(f"Loss {config.loss.name} compares two augmented views of each "
                          "image: set config.data.augment.views=2 (and augmentations such as "
                          "resized_crop, flip_lr, brightness; configs/fashion_mnist_simclr.py).")
      if config.train.grad_accum_steps > 1:
        raise ConfigError(f"Loss {config.loss.name} compares every row of the batch with "
                          "every other; micro-batches would split them. Set "
                          "config.train.grad_accum_steps=1.")
    train_step = make_train_step(self.model, self.train_loss_fn, self.tx, **step_options)
    eval_steps = {with_outputs: make_eval_step(self.model, self.loss_fn, self.metric_names,
                                               compute_dtype=self.compute_dtype,
                                               with_outputs=with_outputs)
                  for with_outputs in (False, True)}
    on_batch = functools.partial(_train_on_batch, train_step, self.augment,
                                 self.batch_sharding, self.state_shardings)
    on_indices = functools.partial(_train_on_indices, on_batch)
    eval_on_batch = functools.partial(_eval_on_batch, eval_steps, self.batch_sharding)
    outputs_of = functools.partial(_outputs_of, self.model, self.compute_dtype,
                                   self.batch_sharding)
    # The jitted train functions by strategy (what `train` compiles and calls; the bench
    # scripts call them directly). State is donated: its buffers are reused in place.
    self.train_on_indices = jax.jit(on_indices, donate_argnums=0)
    self.train_many_on_indices = jax.jit(scan_steps(on_indices), donate_argnums=0)
    self.train_on_batch = jax.jit(on_batch, donate_argnums=0)
    self._train_fns = {"indices": self.train_on_indices, "scan": self.train_many_on_indices,
                       "host": self.train_on_batch}
    self.eval_on_batch = jax.jit(eval_on_batch, static_argnames="with_outputs")
    self.eval_on_indices = jax.jit(functools.partial(_eval_on_indices, eval_on_batch),
                                   static_argnames="with_outputs")
    self.outputs_on_batch = jax.jit(outputs_of)
    self.outputs_on_indices = jax.jit(functools.partial(_outputs_on_indices, outputs_of))
    self.steps_per_call = config.train.steps_per_call
    if self.strategy == "host" and self.steps_per_call > 1:
      logging.info("config.train.steps_per_call=%d ignored with host placement: one step "
                   "per prefetched batch", self.steps_per_call)
    if self.strategy != "indices":
      self.steps_per_call = 1
    if self.strategy == "pmap":
      # The same pure step per device on its share of the batch, sums added over devices.
      pmap_loss = self.train_loss_fn
      if getattr(pmap_loss, "gathers_across_devices", False):  # negatives from every device
        pmap_loss = functools.update_wrapper(
            functools.partial(pmap_loss, axis_name=PMAP_AXIS), pmap_loss)
      pmap_step = make_train_step(self.model, pmap_loss, self.tx, axis_name=PMAP_AXIS,
                                  **step_options)
      self.devices = list(self.mesh.devices.flat)
      self._train_fns["pmap"] = jax.pmap(
          functools.partial(_pmap_on_indices, pmap_step, self.augment),
          axis_name=PMAP_AXIS, devices=self.devices, donate_argnums=0)
    self._compiled: dict[int, Any] = {}  # steps per call -> executable
    self.compile_seconds = 0.0
    self.cache_loads = 0  # executables the persistent compilation cache supplied

  def _init_state(self, config, variables: dict) -> None:
    # Compiled as one program: op by op, the optimizer's init dispatches (and on first use
    # compiles) a small program per leaf.
    with compilation.gc_paused():
      state = jax.jit(functools.partial(_initial_state, tx=self.tx,
                                        param_dtype=self.param_dtype))(variables,
                                                                       self.train_rng)
    self.initial_state = jax.device_put(state, self.state_shardings)
    if self.mesh.shape["fsdp"] > 1:
      logging.info("fsdp: %s", parallel.describe_shardings(self.state_shardings))
    self.num_params = count_params(self.initial_state.params)
    trainable, frozen = finetune.count_trainable(variables["params"], self.freeze)
    self.num_trainable = trainable
    logging.info("model: %s with %s parameters%s", config.model.name, f"{self.num_params:,}",
                 f" ({trainable:,} trainable, {frozen:,} frozen"
                 + (f"; LoRA rank {config.lora.rank}" if config.lora.rank > 0 else "")
                 + ")" if frozen else "")
    if self.augment is not None:
      logging.info("augmentation (train split, on the device): %s",
                   augment_lib.describe(config.data.augment))

  # ------------------------------------------------------------------ training
  def train_inputs(self) -> tuple:
    """The train split's (images, labels) as the train program reads them."""
    if self.strategy == "pmap":  # one copy per device
      if not hasattr(self, "_pmap_inputs"):
        self._pmap_inputs = parallel.replicate_per_device(
            (self.data.train.inputs, self.data.train.targets), self.devices)
      return self._pmap_inputs
    return self.splits["train"]

  def lower_train(self, steps: int, state_spec) -> jax.stages.Lowered:
    """The train function for `steps` steps per call, lowered for a state of `state_spec`
    (shapes, dtypes, shardings)."""
    images, labels = self.train_inputs()
    if self.strategy == "pmap":  # indices [devices, batch / devices]
      shape = (len(self.devices), self.batch_size // len(self.devices))
      return self._train_fns["pmap"].lower(state_spec, images, labels,
                                           np.zeros(shape, np.int32))
    if self.strategy == "host":  # a batch already on the device
      batch_spec = {"image": jax.ShapeDtypeStruct((self.batch_size, *images.shape[1:]),
                                                  images.dtype),  # (float32; tokens int32)
                    "label": jax.ShapeDtypeStruct((self.batch_size, *labels.shape[1:]),
                                                  labels.dtype)}
      return self._train_fns["host"].lower(state_spec, batch_spec)
    fn, shape = ((self._train_fns["indices"], (self.batch_size,)) if steps == 1 else
                 (self._train_fns["scan"], (steps, self.batch_size)))
    return fn.lower(state_spec, images, labels, np.zeros(shape, np.int32))

  def compile_train(self, state, steps: int | None = None):
    """The train function for `steps` (default: steps_per_call) steps per call, compiled
    for `state`'s layout on first use; its time adds to `compile_seconds`. With k > 1 the
    one-step function is compiled only if an epoch or log interval needs it."""
    steps = steps or self.steps_per_call
    if steps not in self._compiled:
      # Shapes only: the live state's buffers are donated to each call.
      spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                         sharding=x.sharding), state)
      t_compile = time.perf_counter()
      with compilation.CompileCounter() as counter, compilation.gc_paused():
        self._compiled[steps] = self.lower_train(steps, spec).compile()
      self.compile_seconds += time.perf_counter() - t_compile
      self.cache_loads += counter.cache_loads
    return self._compiled[steps]

  def chunks(self, order: np.ndarray, start: int, end: int, step: int, log_every: int,
             save_every: int) -> Iterator[Chunk]:
    """The calls that take an epoch's batches start..end-1 (of permutation `order`), from
    global step `step`. k steps per call (steps_per_call), but never across an epoch's
    end, a logging step or a checkpoint step, so outputs and checkpoints are the same
    whatever k is. Close the iterator if it is not exhausted (host placement prefetches)."""
    b, k = self.batch_size, self.steps_per_call
    if self.strategy == "host":
      rows = feed.epoch_rows(order, b, start, end, jax.process_index(), jax.process_count())
      prefetch = self.host_feed(self.read_batches("train", rows))
      try:
        for batch in prefetch:
          yield Chunk(1, batch)
      finally:
        prefetch.close()
        self.input_wait_seconds += prefetch.waited
      return
    i = start
    while i < end:
      n = min(k, end - i, log_every - step % log_every,
              save_every - step % save_every if save_every else k)
      if n != k:
        n = 1
      indices = order[i * b:(i + n) * b]
      if self.strategy == "pmap":
        indices = indices.reshape(len(self.devices), -1)
      elif n > 1:
        indices = indices.reshape(n, b)
      yield Chunk(n, indices)
      i += n
      step += n

  def train(self, state: TrainState, chunk: Chunk) -> tuple[TrainState, dict]:
    """`chunk.steps` train steps: the new state and the steps' metrics (on the device;
    [k] each for k steps per call)."""
    compiled = self.compile_train(state, chunk.steps)
    if self.strategy == "host":
      result = compiled(state, chunk.inputs)
    else:
      images, labels = self.train_inputs()
      result = compiled(state, images, labels, chunk.inputs)
    return self._synced(result)

  def to_run_state(self, state: TrainState) -> TrainState:
    """The state as the loop steps it: laid out on the mesh, or one copy per device (pmap)."""
    state = jax.device_put(state, self.state_shardings)
    return (parallel.replicate_per_device(state, self.devices) if self.strategy == "pmap"
            else state)

  def to_logical(self, state: TrainState) -> TrainState:
    """The loop's state as one train state on the mesh (what is saved and evaluated)."""
    if self.strategy != "pmap":
      return state
    return jax.device_put(jax.tree.map(lambda x: x[0], state), self.state_shardings)

  # ------------------------------------------------------------------ evaluation
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

  def read_batches(self, split: str, rows: np.ndarray, mask: np.ndarray | None = None,
                   labels: bool = True) -> Iterator[dict]:
    """Host batches of a split's examples `rows` [num_batches, B] (this process's shares),
    read in grain's worker processes (config.data.worker_count) where the split streams
    from disk, else in the prefetch thread."""
    images, targets = self.splits[split]
    targets = targets if labels else None
    if self.workers and feed.is_streamed(images) and len(rows):
      return feed.worker_batches(images, targets, rows, mask, self.workers, self.skip_bad)
    masks = [None] * len(rows) if mask is None else mask
    return (feed.read_batch(images, targets, r, m, self.skip_bad) for r, m in zip(rows, masks))

  def check_split(self, split: str, config_key: str) -> None:
    if split not in self.splits:
      raise ConfigError(f'{config_key} names split "{split}", which this data does not have.'
                        f"{did_you_mean(split, self.splits)} Splits: {', '.join(self.splits)}.")

  def split_names(self, spec: str | tuple, config_key: str) -> list[str]:
    """'validation,test' -> the splits, each checked; "validation" is left out (with a log
    line) when the data config holds none out (validation_fraction=0)."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if "validation" in names and "validation" not in self.splits:
      logging.info("%s: no validation split (config.data.validation_fraction is 0); "
                   "skipping it", config_key)
      names.remove("validation")
    for name in names:
      self.check_split(name, config_key)
    return names

  def evaluate(self, state: TrainState, split: str, with_outputs: bool = False):
    """The configured metrics over every example of a split, exactly once (padding masked).

    with_outputs: `-> (metrics, outputs [N, ...] float32)`, the model's outputs for each
    example from the same pass, as `outputs()` gives them, on every process (a collective:
    every process must ask)."""
    images, labels = self.splits[split]
    indices, mask = data_lib.padded_batches(len(labels), self.eval_batch_size)
    if self.placement == "host":
      batches = self.host_feed(self.read_batches(split, np.asarray(self.local_share(indices)),
                                                 np.asarray(self.local_share(mask))))
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


def with_kept_tokenizer(config: ml_collections.ConfigDict, workdir: str
                        ) -> ml_collections.ConfigDict:
  """The config of a saved run's data, tokenized with the tokenizer.json that run trained
  (config.data.tokenizer="wordpiece:N" or "bpe:N"), never a newly trained one: `tokenizers`
  does not train the same WordPiece vocabulary twice from the same texts
  (huggingface/tokenizers#1794), and other ids would index other embedding rows."""
  spec = str(config.data.get("tokenizer", "") or "")
  kept = os.path.join(workdir, "tokenizer.json")
  if not spec.startswith(("wordpiece:", "bpe:")) or not os.path.isfile(kept):
    return config
  logging.info("tokenizing with the run's own %s (trained as %s when it started)", kept,
               spec)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.tokenizer = kept
  return config


def _fix_evaluation_masks(data, data_config, vocab_size: int) -> None:
  """Masked-LM: the validation and test splits masked once, with keys from split_seed, so
  every evaluation scores the same masked positions (training draws new masks each step)."""
  from bigjax.data.augment import mask_tokens
  opts = data_config.augment
  for index, split in enumerate((data.validation, data.test)):
    if split is None or not len(split):
      continue
    tokens = np.asarray(split.inputs)
    inputs, labels = mask_tokens(
        jnp.asarray(tokens), jax.random.fold_in(jax.random.PRNGKey(data_config.split_seed),
                                                index),
        float(opts.mlm_probability), int(opts.mlm_mask_id), int(opts.mlm_first_regular_id),
        vocab_size)
    split.inputs, split.targets = np.asarray(inputs), np.asarray(labels)


def _version(package: str) -> str:
  from importlib import metadata
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "(version unknown)"


def _all_rows(batch_outputs: list, n: int) -> np.ndarray:
  """Per-batch device outputs as one host array of the first n rows (the rest: padding).
  Across processes each holds its rows of every batch: all gather them (a collective, so
  every process must call)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    batch_outputs = multihost_utils.process_allgather(batch_outputs, tiled=True)
  return np.concatenate(jax.device_get(batch_outputs))[:n]
