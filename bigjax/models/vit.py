"""A small Vision Transformer (Dosovitskiy et al., 2021): patch embedding, a class token or
mean pooling, learned position embeddings, pre-LayerNorm blocks, a dense head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models.initializers import get_initializer
from bigjax.models.layers import Activation
from bigjax.models.layers import Dropout
from bigjax.models.norm import LayerNorm


class MlpBlock(nn.Module):
  hidden: int
  dropout_rate: float = 0.0
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    width = x.shape[-1]
    gelu = Activation("gelu" if self.gelu_approximate else "gelu_exact")
    x = gelu(nn.Dense(self.hidden, name="dense_0")(x))
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(width, name="dense_1")(x)


class EncoderBlock(nn.Module):
  """x + attention(LN(x)); x + MLP(LN(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  norm_epsilon: float = 1e-6
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = LayerNorm(epsilon=self.norm_epsilon, name="norm_0")(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.dropout_rate,
                                        deterministic=not train, name="attention")(y, y)
    x = x + Dropout(self.dropout_rate, deterministic=not train)(y)
    y = LayerNorm(epsilon=self.norm_epsilon, name="norm_1")(x)
    y = MlpBlock(int(self.mlp_ratio * x.shape[-1]), self.dropout_rate, self.gelu_approximate,
                 name="mlp")(y, train)
    return x + Dropout(self.dropout_rate, deterministic=not train)(y)


class ViT(nn.Module):
  patch_size: int = 4
  hidden_size: int = 128
  depth: int = 6
  num_heads: int = 4
  mlp_ratio: float = 2.0
  pool: str = "cls"  # cls: a learned class token | mean: the mean of the patch tokens
  dropout_rate: float = 0.0
  num_classes: int = 10  # 0: no head; the features come out (a backbone)
  norm_epsilon: float = 1e-6     # timm's ViTs: 1e-6 with exact GELU (gelu_approximate=False)
  gelu_approximate: bool = True  # the tanh form

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.pool not in ("cls", "mean"):
      raise ValueError(f'ViT pool "{self.pool}": use "cls" or "mean".')
    if self.hidden_size % self.num_heads:
      raise ValueError(f"ViT hidden_size {self.hidden_size} does not split into "
                       f"{self.num_heads} heads.")
    h, w = x.shape[1:3]
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f"ViT: {h}x{w} images do not split into {self.patch_size}x"
                       f"{self.patch_size} patches; choose a patch_size dividing both.")
    p = self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), (p, p), padding="VALID", name="patch_embedding")(x)
    x = x.reshape(x.shape[0], -1, self.hidden_size)
    if self.pool == "cls":
      cls = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_size))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.hidden_size)), x], axis=1)
    x = x + self.param("position_embedding", get_initializer("normal:0.02"),
                       (1, x.shape[1], self.hidden_size))
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_ratio, self.dropout_rate, self.norm_epsilon,
                       self.gelu_approximate, name=f"block_{i}")(x, train)
    x = LayerNorm(epsilon=self.norm_epsilon, name="final_norm")(x)
    x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
    if not self.num_classes:  # a backbone (e.g. for contrastive pre-training): the features
      return x
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)
