"""Multi-layer perceptrons: the lessons' 784-128-10, 784-128-64-10, 784-256-128-64-10 and any other."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from bigjax.models.initializers import get_initializer
from bigjax.models.layers import Activation
from bigjax.models.layers import ACTIVATIONS
from bigjax.models.layers import Dropout
from bigjax.models.layers import Flatten
from bigjax.models.layers import normalization


class MLP(nn.Module):
  """Flatten -> [Dense -> (norm) -> activation -> (dropout)] per hidden size -> Dense head."""
  hidden_sizes: Sequence[int] = (128,)
  num_classes: int = 10  # 0: no head; the features come out (a backbone)
  activation: str = "relu"
  dropout_rate: float = 0.0
  norm: str = "none"  # none | batch | layer, between each hidden Dense and its activation
  kernel_init: str = "lecun_normal"  # see bigjax.models.initializers: "he_normal", "normal:0.05"
  bias_init: str = "zeros"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    ACTIVATIONS.get(self.activation)  # an unknown name fails here, listing the known ones
    inits = dict(kernel_init=get_initializer(self.kernel_init),
                 bias_init=get_initializer(self.bias_init))
    x = Flatten()(x)
    for i, width in enumerate(self.hidden_sizes):
      x = nn.Dense(width, name=f"dense_{i}", **inits)(x)
      norm = normalization(self.norm, train, f"norm_{i}")
      if norm is not None:
        x = norm(x)
      x = Activation(self.activation)(x)
      if self.dropout_rate > 0:
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
    if not self.num_classes:  # a backbone (e.g. for contrastive pre-training): the features
      return x
    return nn.Dense(self.num_classes, name="head", **inits)(x)
