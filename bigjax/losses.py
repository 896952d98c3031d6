"""Losses, chosen by `config.loss.name`.

Contract: `loss_fn(outputs_BxC, batch) -> per_example_loss_B`, pure and jittable. The train
step averages it with `batch["mask"]` (padding) as weights, so a loss never needs to know
about padding. `batch["label"]` holds integer labels `[B]` or one-hot/soft labels `[B, C]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bigjax.registry import Registry

LOSSES = Registry("loss")
register_loss = LOSSES.register


def _targets_like(outputs_BxC: jax.Array, labels: jax.Array) -> jax.Array:
  """One-hot targets from integer labels; one-hot or soft labels pass through."""
  if labels.ndim == outputs_BxC.ndim:
    return labels.astype(jnp.float32)
  return jax.nn.one_hot(labels, outputs_BxC.shape[-1], dtype=jnp.float32)


@register_loss("softmax_cross_entropy")
def softmax_cross_entropy(logits_BxC: jax.Array, batch: dict) -> jax.Array:
  """-log softmax(logits)[label], computed in float32 whatever the compute dtype."""
  logits = logits_BxC.astype(jnp.float32)
  labels = batch["label"]
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels.astype(jnp.float32))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example mean of (targets - predictions)^2 over all but the leading axis."""
  sq = jnp.square(targets.astype(jnp.float32) - predictions.astype(jnp.float32))
  return sq.reshape(sq.shape[0], -1).mean(axis=1)


@register_loss("mean_squared_error")
def mean_squared_error_loss(outputs_BxC: jax.Array, batch: dict) -> jax.Array:
  """MSE between the raw outputs and `batch["target"]`, or the one-hot labels if absent."""
  targets = batch["target"] if "target" in batch else _targets_like(outputs_BxC, batch["label"])
  return mean_squared_error(outputs_BxC, targets)


def weighted_mean(values_B: jax.Array, weights_B: jax.Array | None) -> jax.Array:
  """Mean of values over examples with nonzero weight (padding has weight 0)."""
  if weights_B is None:
    return values_B.mean()
  weights_B = weights_B.astype(values_B.dtype)
  return (values_B * weights_B).sum() / jnp.maximum(weights_B.sum(), 1.0)
