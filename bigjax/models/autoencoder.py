"""A denoising autoencoder: self-supervised pre-training on images without labels.

The encoder is the MLP family's trunk with the same parameter names (`dense_0`, `dense_1`,
...), so a classifier `config.init_from` this run loads the encoder and re-initialises its
own head (skip "^(decoder|head)"). Training corrupts the input (Gaussian noise, and
optionally masks pixels); the loss `reconstruction_mse` compares the output with the clean
image.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models.initializers import get_initializer
from bigjax.models.layers import Activation
from bigjax.models.layers import ACTIVATIONS
from bigjax.models.layers import Flatten


class DenoisingAutoencoder(nn.Module):
  hidden_sizes: Sequence[int] = (256, 128)   # the encoder; the decoder mirrors it
  activation: str = "relu"
  noise_std: float = 0.3    # Gaussian noise added to the input in training
  mask_rate: float = 0.0    # fraction of input pixels set to 0 in training
  kernel_init: str = "lecun_normal"
  bias_init: str = "zeros"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    ACTIVATIONS.get(self.activation)
    inits = dict(kernel_init=get_initializer(self.kernel_init),
                 bias_init=get_initializer(self.bias_init))
    shape = x.shape
    if train and (self.noise_std > 0 or self.mask_rate > 0):
      noise_rng, mask_rng = jax.random.split(self.make_rng("dropout"))
      x = x + self.noise_std * jax.random.normal(noise_rng, x.shape, x.dtype)
      if self.mask_rate > 0:
        x = x * jax.random.bernoulli(mask_rng, 1.0 - self.mask_rate, x.shape).astype(x.dtype)
    h = Flatten()(x)
    for i, width in enumerate(self.hidden_sizes):
      h = Activation(self.activation)(nn.Dense(width, name=f"dense_{i}", **inits)(h))
    widths = list(self.hidden_sizes[-2::-1]) + [math.prod(shape[1:])]
    for j, width in enumerate(widths):
      h = nn.Dense(width, name=f"decoder_{j}", **inits)(h)
      if j < len(widths) - 1:
        h = Activation(self.activation)(h)
    return h.reshape(shape)


def reconstruction_mse(outputs: jax.Array, batch: dict) -> jax.Array:
  """Per-example mean squared error between the output and the clean input image."""
  diff = outputs.astype(jnp.float32) - batch["image"].astype(jnp.float32)
  return jnp.square(diff).reshape(diff.shape[0], -1).mean(-1)
