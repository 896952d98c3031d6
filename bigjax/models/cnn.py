"""The lessons' convolutional network: conv3x3(32)-pool-conv3x3(64)-pool-dense(64)-dense(10)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from bigjax.models.initializers import get_initializer
from bigjax.models.layers import ACTIVATIONS, Activation, Flatten, MaxPool


class CNN(nn.Module):
  """[Conv -> activation -> max-pool] per entry of conv_features, then Dense layers and a head."""
  conv_features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  padding: str = "VALID"
  pool_size: int = 2
  dense_sizes: Sequence[int] = (64,)
  num_classes: int = 10
  activation: str = "relu"
  dropout_rate: float = 0.0
  kernel_init: str = "lecun_normal"  # see bigjax.models.initializers: "he_normal", "normal:0.05"
  bias_init: str = "zeros"

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    ACTIVATIONS.get(self.activation)  # an unknown name fails here, listing the known ones
    inits = dict(kernel_init=get_initializer(self.kernel_init),
                 bias_init=get_initializer(self.bias_init))
    x = x_BxHxWxC
    for i, features in enumerate(self.conv_features):
      h, w = x.shape[1:3]
      if self.padding == "VALID" and min(h, w) < self.kernel_size:
        raise ValueError(
            f"CNN conv_{i}: its {h}x{w} input is smaller than the {self.kernel_size}x"
            f"{self.kernel_size} kernel. Use fewer conv layers, padding='SAME' or larger images.")
      x = nn.Conv(features, (self.kernel_size, self.kernel_size), padding=self.padding,
                  name=f"conv_{i}", **inits)(x)
      x = Activation(self.activation)(x)
      if self.pool_size > 1:
        x = MaxPool(self.pool_size)(x)
    x = Flatten()(x)
    for i, width in enumerate(self.dense_sizes):
      x = Activation(self.activation)(nn.Dense(width, name=f"dense_{i}", **inits)(x))
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="head", **inits)(x)
