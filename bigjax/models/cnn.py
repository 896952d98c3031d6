"""The lessons' convolutional network: conv3x3(32)-pool-conv3x3(64)-pool-dense(64)-dense(10)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from bigjax.models.conv import Conv
from bigjax.models.initializers import get_initializer
from bigjax.models.layers import Activation
from bigjax.models.layers import ACTIVATIONS
from bigjax.models.layers import Dropout
from bigjax.models.layers import Flatten
from bigjax.models.layers import MaxPool
from bigjax.models.layers import normalization
from bigjax.models.layers import per_layer


class CNN(nn.Module):
  """[Conv -> (norm) -> activation -> (max-pool)] per entry of conv_features, then Dense
  layers and a head. kernel_size, strides, padding and pool_size take one value for every
  conv layer or a sequence with one per layer (pool_size 1 = no pooling)."""
  conv_features: Sequence[int] = (32, 64)
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: str | Sequence[str] = "VALID"
  pool_size: int | Sequence[int] = 2
  norm: str = "none"  # none | batch | layer, after each conv
  dense_sizes: Sequence[int] = (64,)
  num_classes: int = 10  # 0: no head; the features come out (a backbone)
  activation: str = "relu"
  dropout_rate: float = 0.0
  kernel_init: str = "lecun_normal"  # see bigjax.models.initializers: "he_normal", "normal:0.05"
  bias_init: str = "zeros"
  conv_impl: str = "auto"  # auto (CPUs: im2col when unpadded) | xla | im2col

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    ACTIVATIONS.get(self.activation)  # an unknown name fails here, listing the known ones
    inits = dict(kernel_init=get_initializer(self.kernel_init),
                 bias_init=get_initializer(self.bias_init))
    n = len(self.conv_features)
    layers = zip(self.conv_features, per_layer(self.kernel_size, n, "kernel_size"),
                 per_layer(self.strides, n, "strides"), per_layer(self.padding, n, "padding"),
                 per_layer(self.pool_size, n, "pool_size"))
    x = x_BxHxWxC
    for i, (features, kernel, stride, padding, pool) in enumerate(layers):
      h, w = x.shape[1:3]
      if padding == "VALID" and min(h, w) < kernel:
        raise ValueError(
            f"CNN conv_{i}: its {h}x{w} input is smaller than the {kernel}x{kernel} kernel. "
            "Use fewer conv layers, padding='SAME' or larger images.")
      x = Conv(features, (kernel, kernel), stride, padding=padding, impl=self.conv_impl,
               name=f"conv_{i}", **inits)(x)
      norm = normalization(self.norm, train, f"norm_{i}")
      if norm is not None:
        x = norm(x)
      x = Activation(self.activation)(x)
      if pool > 1:
        if min(x.shape[1:3]) < pool:
          raise ValueError(f"CNN pool after conv_{i}: its {x.shape[1]}x{x.shape[2]} input is "
                           f"smaller than the {pool}x{pool} window. Use fewer or smaller "
                           "pools, or larger images.")
        x = MaxPool(pool)(x)
    x = Flatten()(x)
    for i, width in enumerate(self.dense_sizes):
      x = Activation(self.activation)(nn.Dense(width, name=f"dense_{i}", **inits)(x))
      if self.dropout_rate > 0:
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
    if not self.num_classes:  # a backbone (e.g. for contrastive pre-training): the features
      return x
    return nn.Dense(self.num_classes, name="head", **inits)(x)
