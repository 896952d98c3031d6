"""Losses, chosen by `config.loss.name`; other non-None `config.loss` keys are its arguments.

Contract: `loss_fn(outputs_BxC, batch, **hyperparams) -> per_example_loss_B`, pure and
jittable. The train step averages it with `batch["mask"]` (padding) times `batch["weight"]`
(optional per-example weights), so a loss never needs to know about either.
`batch["label"]` holds integer labels `[B]` or one-hot/soft/multi-hot labels `[B, C]`;
regression losses read `batch["target"]` when present. A loss whose outputs are
independent per-class probabilities sets `multi_label = True` on itself: accuracy is then
subset accuracy over thresholded outputs (bigjax.core.metrics.correct_predictions). One
whose outputs are embeddings compared across the batch (nt_xent, vicreg) sets
`compares_embeddings = True`: no accuracy is reported; with `gathers_across_devices = True`
it takes `axis_name` and, under pmap, gathers the other devices' rows.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from bigjax.registry import check_arguments
from bigjax.registry import ConfigError
from bigjax.registry import Registry

LOSSES = Registry("loss")
register_loss = LOSSES.register


def batch_labels(batch: dict) -> jax.Array:
  """The batch's labels: `batch["label"]`, or for regression `batch["target"]`."""
  if "label" in batch:
    return batch["label"]
  if "target" in batch:
    return batch["target"]
  raise KeyError(f'A batch needs "label" (classes) or "target" (regression values); this one '
                 f"has {sorted(batch)}.")


def _targets_like(outputs_BxC: jax.Array, labels: jax.Array) -> jax.Array:
  """One-hot targets from integer labels; one-hot or soft labels pass through."""
  if labels.ndim == outputs_BxC.ndim:
    return labels.astype(jnp.float32)
  return jax.nn.one_hot(labels, outputs_BxC.shape[-1], dtype=jnp.float32)


def _integer_label_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """optax.softmax_cross_entropy_with_integer_labels over the last axis: logsumexp minus the
  label's logit, NaN for a label out of range. The label's logit is picked by comparison,
  not gathered: its gradient is then elementwise, where a gather's is a scatter-add (four
  more kernels for XLA:CPU to compile, and slower to run)."""
  classes = jnp.arange(logits.shape[-1])
  label_logits = jnp.where(labels[..., None] == classes, logits, 0.0).sum(-1)
  in_range = (labels >= 0) & (labels < logits.shape[-1])
  return jnp.where(in_range, jax.nn.logsumexp(logits, axis=-1) - label_logits, jnp.nan)


@register_loss("softmax_cross_entropy")
def softmax_cross_entropy(logits_BxC: jax.Array, batch: dict,
                          label_smoothing: float = 0.0) -> jax.Array:
  """-sum(targets * log softmax(logits)), in float32 whatever the compute dtype.

  With label smoothing a, targets = (1 - a) * one_hot + a / C.
  """
  logits = logits_BxC.astype(jnp.float32)
  labels = batch["label"]
  if labels.ndim != logits.ndim and not label_smoothing:
    return _integer_label_cross_entropy(logits, labels)
  targets = _targets_like(logits, labels)
  if label_smoothing:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / logits.shape[-1]
  return optax.softmax_cross_entropy(logits, targets)


@register_loss("token_cross_entropy")
def token_cross_entropy(logits_BxTxV: jax.Array, batch: dict) -> jax.Array:
  """Language models: next-token cross-entropy averaged over each sequence's positions
  (labels [B, T] int), in float32. Sequences have one length, so the batch mean is the mean
  over tokens."""
  per_token = _integer_label_cross_entropy(logits_BxTxV.astype(jnp.float32), batch["label"])
  return per_token.mean(axis=tuple(range(1, per_token.ndim)))


@register_loss("masked_token_cross_entropy")
def masked_token_cross_entropy(logits_BxTxV: jax.Array, batch: dict) -> jax.Array:
  """Masked-LM: cross-entropy at the positions whose label is a token (>= 0), averaged per
  sequence over those; labels of -1 (every other position; data.augment.mlm_probability
  sets them) are skipped. A sequence with no masked position contributes 0."""
  labels = batch["label"]
  chosen = labels >= 0
  per_token = _integer_label_cross_entropy(logits_BxTxV.astype(jnp.float32),
                                           jnp.where(chosen, labels, 0))
  per_token = jnp.where(chosen, per_token, 0.0)
  axes = tuple(range(1, per_token.ndim))
  return per_token.sum(axes) / jnp.maximum(chosen.sum(axes), 1)


@register_loss("sigmoid_binary_cross_entropy")
def sigmoid_binary_cross_entropy(logits_BxC: jax.Array, batch: dict) -> jax.Array:
  """Multi-label: independent sigmoid cross-entropy per class, averaged over classes."""
  targets = _targets_like(logits_BxC, batch["label"])
  return optax.sigmoid_binary_cross_entropy(logits_BxC.astype(jnp.float32), targets).mean(-1)


sigmoid_binary_cross_entropy.multi_label = True


@register_loss("multiclass_hinge")
def multiclass_hinge(logits_BxC: jax.Array, batch: dict, margin: float = 1.0) -> jax.Array:
  """Crammer-Singer: max(0, margin + max_{j != y} s_j - s_y)."""
  logits = logits_BxC.astype(jnp.float32)
  one_hot = _targets_like(logits, batch["label"])
  correct = (logits * one_hot).sum(-1)
  best_wrong = jnp.where(one_hot > 0, -jnp.inf, logits).max(-1)
  return jax.nn.relu(margin + best_wrong - correct)


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example mean of (targets - predictions)^2 over all but the leading axis."""
  sq = jnp.square(targets.astype(jnp.float32) - predictions.astype(jnp.float32))
  return sq.reshape(sq.shape[0], -1).mean(axis=1)


def regression_targets(outputs_BxC: jax.Array, batch: dict) -> jax.Array:
  """`batch["target"]`; else float labels (regression targets, [B] for [B, 1] outputs);
  else one-hot integer labels."""
  labels = batch_labels(batch)
  if jnp.issubdtype(labels.dtype, jnp.floating) and labels.ndim == outputs_BxC.ndim - 1:
    return labels.reshape(outputs_BxC.shape[0], *([1] * (outputs_BxC.ndim - 1)))
  return _targets_like(outputs_BxC, labels)


@register_loss("mean_squared_error")
def mean_squared_error_loss(outputs_BxC: jax.Array, batch: dict) -> jax.Array:
  """MSE between the raw outputs and the regression targets (see regression_targets)."""
  return mean_squared_error(outputs_BxC, regression_targets(outputs_BxC, batch))


@register_loss("mean_absolute_error")
def mean_absolute_error_loss(outputs_BxC: jax.Array, batch: dict) -> jax.Array:
  """MAE between the raw outputs and the regression targets (see regression_targets)."""
  targets = regression_targets(outputs_BxC, batch)
  diff = jnp.abs(targets.astype(jnp.float32) - outputs_BxC.astype(jnp.float32))
  return diff.reshape(diff.shape[0], -1).mean(axis=1)


@register_loss("reconstruction_mse")
def reconstruction_mse(outputs: jax.Array, batch: dict) -> jax.Array:
  """Autoencoders: mean squared error between the outputs and the (clean) input images."""
  from bigjax.models.autoencoder import reconstruction_mse as mse
  return mse(outputs, batch)


@register_loss("masked_patch_mse")
def masked_patch_mse(outputs: jax.Array, batch: dict, normalize_patches: bool = True
                     ) -> jax.Array:
  """Masked autoencoders (model "mae"): pixel error over the hidden patches of each image."""
  from bigjax.models.mae import masked_patch_mse as mse
  return mse(outputs, batch, normalize_patches)


def _views(batch: dict, loss: str) -> jax.Array:
  if "partner" not in batch:
    raise ConfigError(f"Loss {loss} compares two views of each image, which training makes "
                      "with config.data.augment.views=2; it cannot score evaluation batches "
                      "(set config.eval.every_epoch='' and config.eval.at_end='', and "
                      "judge the pre-training by fine-tuning it).")
  return batch["partner"]


def _across_devices(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
  """(every device's rows, the offset of this device's first row): under pmap the rows of
  all devices (their gradients flow back to each), else `x` itself and 0."""
  if axis_name is None:
    return x, jnp.zeros((), jnp.int32)
  return (jax.lax.all_gather(x, axis_name, tiled=True),
          jax.lax.axis_index(axis_name) * x.shape[0])


@register_loss("nt_xent")
def nt_xent(embeddings_NxD: jax.Array, batch: dict, temperature: float = 0.5,
            axis_name: str | None = None) -> jax.Array:
  """SimCLR's NT-Xent (Chen et al. 2020): each row's cosine similarities to every other row
  of the global batch, over `temperature`, scored by softmax cross-entropy against its other
  view (`batch["partner"]`, from augment views=2); every other row is a negative. Under
  jit the batch is global already; under pmap (`axis_name`) rows are gathered from every
  device."""
  partner = _views(batch, "nt_xent")
  z = embeddings_NxD.astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  keys, offset = _across_devices(z, axis_name)
  logits = z @ keys.T / temperature
  own = offset + jnp.arange(z.shape[0])
  logits = jnp.where(jnp.arange(keys.shape[0])[None, :] == own[:, None], -jnp.inf, logits)
  positive = jnp.take_along_axis(logits, (partner + offset)[:, None], axis=1)[:, 0]
  return jax.nn.logsumexp(logits, axis=-1) - positive


@register_loss("vicreg")
def vicreg(embeddings_NxD: jax.Array, batch: dict, invariance: float = 25.0,
           variance: float = 25.0, covariance: float = 1.0,
           axis_name: str | None = None) -> jax.Array:
  """VICReg (Bardes et al. 2022), no negatives: invariance (mean squared distance of each
  row to its other view, per dimension) plus, for each view's half of the global batch, a
  hinge keeping every dimension's standard deviation at 1 or more and the squared
  off-diagonal covariances over the dimension count. The batch terms are the same for every
  row, so the per-row values average to the paper's loss."""
  partner = _views(batch, "vicreg")
  z = embeddings_NxD.astype(jnp.float32)
  per_row = invariance * jnp.square(z - z[partner]).mean(-1)
  everyone, _ = _across_devices(z, axis_name)
  # two_views stacks [view 0; view 1] per device: split each device's rows in halves.
  devices = everyone.shape[0] // z.shape[0]
  halves = everyone.reshape(devices, 2, z.shape[0] // 2, -1).swapaxes(0, 1)
  batch_terms = 0.0
  for view in halves.reshape(2, -1, z.shape[-1]):
    centred = view - view.mean(0)
    std = jnp.sqrt(centred.var(0) * view.shape[0] / max(view.shape[0] - 1, 1) + 1e-4)
    cov = centred.T @ centred / max(view.shape[0] - 1, 1)
    off_diagonal = jnp.square(cov).sum() - jnp.square(jnp.diagonal(cov)).sum()
    batch_terms += (variance * jnp.maximum(1.0 - std, 0.0).mean()
                    + covariance * off_diagonal / z.shape[-1]) / 2
  return per_row + batch_terms


for _loss in (nt_xent, vicreg):
  _loss.compares_embeddings = True       # outputs are embeddings: no accuracy
  _loss.gathers_across_devices = True    # takes axis_name under pmap


# config.loss keys that configure regularisation (bigjax.core.optimizers), not the loss function.
REGULARIZATION_KEYS = ("l1", "l2", "penalty_mask")


def build_loss(loss_config: Mapping[str, Any]) -> Callable[[jax.Array, dict], jax.Array]:
  """The configured loss as `(outputs, batch) -> per-example loss`, arguments checked."""
  name = loss_config["name"]
  fn = LOSSES.get(name)
  kwargs = {k: v for k, v in loss_config.items()
            if k != "name" and k not in REGULARIZATION_KEYS and v is not None}
  check_arguments("loss", name, fn, kwargs, "config.loss")
  try:
    inspect.signature(fn).bind(None, None, **kwargs)
  except TypeError as e:
    raise ConfigError(f'Loss "{name}" cannot be called as loss(outputs, batch'
                      f'{"".join(", " + k + "=..." for k in kwargs)}): {e}. A loss takes '
                      "(outputs, batch, **hyperparameters) and returns one value per "
                      "example.") from e
  except ValueError:
    pass  # no introspectable signature
  if not kwargs:
    return fn
  bound = functools.partial(fn, **kwargs)
  functools.update_wrapper(bound, fn)
  return bound
