"""The jit boundary: the train state and the pure train and eval steps.

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> metrics` are
pure: no host calls, no Python side effects, so each compiles once and runs anywhere. The
model, loss and optimizer are closed over, never stored in the state.

A batch is a dict: "image" float32 [B, H, W, C], "label" int32 [B] (or [B, C] one-hot), and
for evaluation "mask" float32 [B] (1 for real examples, 0 for padding).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigjax import metrics as metrics_lib
from bigjax.losses import weighted_mean

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


def _apply(model: nn.Module, params, model_state, x, *, train: bool, rng=None):
  """Logits and the updated non-param collections (unchanged when there are none)."""
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


def make_train_step(model: nn.Module, loss_fn: LossFn,
                    tx: optax.GradientTransformation) -> Callable:
  """A pure `train_step(state, batch) -> (state, metrics)`; jit it at the call site."""

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    step_rng = jax.random.fold_in(state.rng, state.step)
    mask = batch.get("mask")

    def loss_of(params):
      logits, new_model_state = _apply(model, params, state.model_state, batch["image"],
                                       train=True, rng=step_rng)
      per_example = loss_fn(logits, batch)
      _check_loss_shape(per_example, batch["image"].shape[0], loss_fn)
      return weighted_mean(per_example, mask), (logits, new_model_state)

    (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=new_model_state)
    accuracy = weighted_mean(metrics_lib.correct_predictions(logits, batch["label"]), mask)
    return new_state, {"loss": loss, "accuracy": accuracy}

  return train_step


def make_eval_step(model: nn.Module, loss_fn: LossFn) -> Callable:
  """A pure `eval_step(state, batch) -> summed metrics` (see bigjax.metrics)."""

  def eval_step(state: TrainState, batch: dict) -> dict:
    logits, _ = _apply(model, state.params, state.model_state, batch["image"], train=False)
    per_example = loss_fn(logits, batch)
    _check_loss_shape(per_example, batch["image"].shape[0], loss_fn)
    mask = batch.get("mask", jnp.ones(per_example.shape, jnp.float32))
    return metrics_lib.summed_metrics(per_example, logits, batch["label"], mask)

  return eval_step


def gather_batch(images: jax.Array, labels: jax.Array, indices: jax.Array,
                 mask: jax.Array | None = None) -> dict:
  """A batch gathered on the device from a device-resident split."""
  batch = {"image": jnp.take(images, indices, axis=0), "label": jnp.take(labels, indices, axis=0)}
  if mask is not None:
    batch["mask"] = mask
  return batch
