"""The jit boundary: the train state and the pure train and eval steps.

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> metrics` are
pure: no host calls, no Python side effects, so each compiles once and runs anywhere. The
model, loss and optimizer are closed over, never stored in the state.

A batch is a dict: "image" float32 [B, H, W, C], "label" int32 [B] (or [B, C] one-hot), and
for evaluation "mask" float32 [B] (1 for real examples, 0 for padding).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigjax.core import metrics as metrics_lib
from bigjax.core.losses import batch_labels
from bigjax.core.optimizers import current_learning_rate

LossFn = Callable[[jax.Array, dict], jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # the trainable parameters
  model_state: Any         # other variable collections (e.g. batch_stats); {} when none
  opt_state: Any
  rng: jax.Array           # uint32[2] key; per-step keys are fold_in(rng, step)


def create_train_state(variables: dict, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                    opt_state=tx.init(params), rng=rng)


def count_params(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def cast_floats(tree: Any, dtype) -> Any:
  """Every floating-point leaf as `dtype` (integer leaves untouched)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _apply(model: nn.Module, params, model_state, x, *, train: bool, rng=None,
           compute_dtype=None):
  """Logits and the updated non-param collections (unchanged when there are none).

  With `compute_dtype` (mixed precision), params and inputs are cast to it for the forward
  pass (gradients flow back to the stored params in their own dtype) and the outputs come
  back in float32, so losses and softmax stay in float32.
  """
  if compute_dtype is not None:
    params, x = cast_floats(params, compute_dtype), cast_floats(x, compute_dtype)
    logits, new_state = _apply(model, params, model_state, x, train=train, rng=rng)
    return logits.astype(jnp.float32), new_state
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else None
  if train and model_state:
    logits, new_state = model.apply(variables, x, train=True, rngs=rngs,
                                    mutable=list(model_state))
    return logits, dict(new_state)
  return model.apply(variables, x, train=train, rngs=rngs), model_state


def _check_loss_shape(per_example: jax.Array, batch_size: int, loss_fn: LossFn) -> None:
  if per_example.shape != (batch_size,):
    name = getattr(loss_fn, "__name__", repr(loss_fn))
    raise ValueError(
        f"Loss {name} returned shape {per_example.shape}; a loss must return one value per "
        f"example, shape ({batch_size},). Reduce over the other axes inside the loss.")


def example_weights(batch: dict) -> jax.Array:
  """Per-example weights: the padding mask times optional `batch["weight"]`."""
  weights = jnp.ones(batch["image"].shape[:1], jnp.float32)
  if "mask" in batch:
    weights = weights * batch["mask"]
  if "weight" in batch:
    weights = weights * batch["weight"]
  return weights


def is_regression_target(labels: jax.Array) -> bool:
  """Float labels [B] are regression targets (float [B, C] are soft class labels)."""
  return bool(jnp.issubdtype(labels.dtype, jnp.floating) and labels.ndim == 1)


def has_class_outputs(outputs, labels: jax.Array) -> bool:
  """Whether accuracy means something: [B, C] outputs (C > 1) and class labels (not
  regression targets; not an autoencoder's image outputs)."""
  return len(outputs.shape) == 2 and outputs.shape[-1] > 1 and not is_regression_target(labels)


def make_train_step(model: nn.Module, loss_fn: LossFn, tx: optax.GradientTransformation,
                    grad_accum_steps: int = 1, update_model_state: bool = True,
                    compute_dtype=None, axis_name: str | None = None) -> Callable:
  """A pure `train_step(state, batch) -> (state, metrics)`; jit it at the call site.

  With `grad_accum_steps` = k > 1 the batch is split into k micro-batches whose gradients
  are summed in a scan and divided once by the total weight: the same update as one
  k-times-larger batch, at the activation memory of one micro-batch. With
  `update_model_state=False`, collections such as BatchNorm statistics stay as they are.
  Under `jax.pmap(..., axis_name)` pass the axis name: gradient and metric sums are added
  over devices before the one division, so the update equals the global batch's; model
  state (BatchNorm statistics of each device's share) is averaged over devices.
  """
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be >= 1; got {grad_accum_steps}.")
  tx = optax.with_extra_args_support(tx)  # reduce-on-plateau reads the loss as `value`
  multi_label = getattr(loss_fn, "multi_label", False)
  # Python facts about the traced model, recorded by micro_step while train_step traces it
  # (one trace of the forward pass, not a second one for the output shape).
  traced: dict = {}

  def micro_step(params, model_state, batch, rng):
    """Gradients of the *summed* weighted loss, and sums for the metrics."""
    def loss_sum_of(params):
      logits, new_model_state = _apply(model, params, model_state, batch["image"],
                                       train=True, rng=rng, compute_dtype=compute_dtype)
      per_example = loss_fn(logits, batch)
      _check_loss_shape(per_example, batch["image"].shape[0], loss_fn)
      weights = example_weights(batch)
      return (per_example * weights).sum(), (logits, new_model_state, weights)

    (loss_sum, (logits, new_model_state, weights)), grads = jax.value_and_grad(
        loss_sum_of, has_aux=True)(params)
    # Known while tracing; train_step reads it to decide whether to report accuracy.
    traced["classifies"] = (has_class_outputs(logits, batch_labels(batch))
                            and not getattr(loss_fn, "compares_embeddings", False))
    if not traced["classifies"]:
      correct = jnp.zeros(())
    else:
      correct = (metrics_lib.correct_predictions(logits, batch_labels(batch), multi_label)
                 * weights).sum()
    return grads, (loss_sum, weights.sum(), correct), new_model_state

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    step_rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # each device's share gets its own dropout masks
      step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    if grad_accum_steps == 1:
      grads, sums, new_model_state = micro_step(state.params, state.model_state, batch,
                                                step_rng)
    else:
      size = batch["image"].shape[0]
      if size % grad_accum_steps:
        raise ValueError(f"The batch of {size} does not split into grad_accum_steps="
                         f"{grad_accum_steps} equal micro-batches.")
      micro = jax.tree.map(
          lambda x: x.reshape(grad_accum_steps, size // grad_accum_steps, *x.shape[1:]), batch)

      def body(carry, inputs):
        grads_acc, sums_acc, model_state = carry
        index, micro_batch = inputs
        grads, sums, model_state = micro_step(state.params, model_state, micro_batch,
                                              jax.random.fold_in(step_rng, index))
        return (jax.tree.map(jnp.add, grads_acc, grads),
                jax.tree.map(jnp.add, sums_acc, sums), model_state), None

      zeros = (jax.tree.map(jnp.zeros_like, state.params), (jnp.zeros(()),) * 3,
               state.model_state)
      (grads, sums, new_model_state), _ = jax.lax.scan(
          body, zeros, (jnp.arange(grad_accum_steps), micro))
    classifies = traced["classifies"]
    if axis_name is not None:
      grads, sums = jax.lax.psum((grads, sums), axis_name)
      new_model_state = jax.lax.pmean(new_model_state, axis_name)
    loss_sum, weight_sum, correct = sums
    denominator = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denominator.astype(g.dtype), grads)
    loss = loss_sum / denominator
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=(new_model_state if update_model_state
                                           else state.model_state))
    step_metrics = {"loss": loss, "learning_rate": current_learning_rate(opt_state)}
    if classifies:
      step_metrics["accuracy"] = correct / denominator
    return new_state, step_metrics

  return train_step


def make_eval_step(model: nn.Module, loss_fn: LossFn,
                   metric_names: Sequence[str] = ("loss", "accuracy"),
                   compute_dtype=None, with_outputs: bool = False) -> Callable:
  """A pure `eval_step(state, batch) -> {sum name: weighted batch sum}` for the named
  metrics (bigjax.core.metrics); `metrics.finalize` or `metrics.compute` turns sums into values.
  with_outputs: `-> (sums, outputs [B, ...] as float32)`, the model's outputs of the same
  forward pass (what pictures of predictions need, without a second pass over the split)."""
  sum_fns = metrics_lib.sum_functions(metric_names, getattr(loss_fn, "multi_label", False))

  def eval_step(state: TrainState, batch: dict):
    logits = predict_logits(model, state, batch["image"], compute_dtype)
    per_example = loss_fn(logits, batch)
    _check_loss_shape(per_example, batch["image"].shape[0], loss_fn)
    sums = metrics_lib.compute_sums(sum_fns, logits, batch_labels(batch), example_weights(batch),
                                    per_example)
    return (sums, logits.astype(jnp.float32)) if with_outputs else sums

  return eval_step


def predict_logits(model: nn.Module, state: TrainState, images: jax.Array,
                   compute_dtype=None) -> jax.Array:
  """The model's outputs in eval mode (no dropout, BatchNorm statistics fixed)."""
  logits, _ = _apply(model, state.params, state.model_state, images, train=False,
                     compute_dtype=compute_dtype)
  return logits


def scan_steps(step_on_indices: Callable) -> Callable:
  """`(state, images, labels, indices [k, B]) -> (state, metrics stacked [k])`: k train
  steps in one compiled call. The same maths as k calls, with one dispatch instead of k:
  on a CPU the per-call overhead is a large part of a small network's step.
  """
  def many(state, images, labels, indices_KxB):
    return jax.lax.scan(lambda s, idx: step_on_indices(s, images, labels, idx), state,
                        indices_KxB)
  return many


def gather_batch(images: jax.Array, labels: jax.Array, indices: jax.Array,
                 mask: jax.Array | None = None) -> dict:
  """A batch gathered on the device from a device-resident split."""
  batch = {"image": jnp.take(images, indices, axis=0), "label": jnp.take(labels, indices, axis=0)}
  if mask is not None:
    batch["mask"] = mask
  return batch
