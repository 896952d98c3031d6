"""Classification metrics as sums, so they accumulate exactly over batches with padding.

`eval_step` returns sums; `finalize` divides once at the end, so every real example counts
exactly once whatever the batch size and however the last batch was padded.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def correct_predictions(logits_BxC: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where argmax(logits) equals the (integer or one-hot) label, else 0.0."""
  if labels.ndim == logits_BxC.ndim:
    labels = labels.argmax(-1)
  return (logits_BxC.argmax(-1) == labels).astype(jnp.float32)


def summed_metrics(per_example_loss_B, logits_BxC, labels, mask_B) -> dict:
  mask_B = mask_B.astype(jnp.float32)
  return {
      "loss_sum": (per_example_loss_B * mask_B).sum(),
      "correct_sum": (correct_predictions(logits_BxC, labels) * mask_B).sum(),
      "count": mask_B.sum(),
  }


def add(a: Mapping | None, b: Mapping) -> dict:
  return dict(b) if a is None else {k: a[k] + b[k] for k in a}


def finalize(sums: Mapping) -> dict:
  """{'loss', 'accuracy', 'count'} from summed metrics (host numbers)."""
  sums = {k: float(np.asarray(v)) for k, v in sums.items()}
  count = sums["count"]
  return {"loss": sums["loss_sum"] / count, "accuracy": sums["correct_sum"] / count,
          "count": int(count)}
