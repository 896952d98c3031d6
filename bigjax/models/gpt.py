"""A decoder-only Transformer language model (GPT-style).

Token embedding, learned or rotary positions, pre-norm (LayerNorm or RMSNorm) blocks of
causal multi-head attention through `jax.nn.dot_product_attention` (GPUs get the fused
kernel) and an MLP, a tied or untied output head. Called on int tokens [B, T]; returns
logits [B, T, vocab_size].

With `decode=True` attention keeps a key/value cache in the "cache" collection (sized
context_length), so generation costs one position's work per new token: call it on the
prompt, then on one token at a time, with `mutable=["cache"]`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models.initializers import get_initializer
from bigjax.models.layers import Dropout
from bigjax.models.norm import LayerNorm


def rotary(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Rotary position embedding of [B, T, H, D] at positions [T] (RoFormer, Su et al.)."""
  half = x.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [T, D/2]
  cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def _norm(kind: str, name: str, epsilon: float) -> nn.Module:
  """The blocks' and the final norm: "rms" or "layer"."""
  if kind == "rms":
    return nn.RMSNorm(epsilon=epsilon, name=name)
  return LayerNorm(epsilon=epsilon, name=name)


class CausalSelfAttention(nn.Module):
  num_heads: int
  context_length: int
  rope: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, decode: bool = False) -> jax.Array:
    batch, length, width = x.shape
    heads, head_dim = self.num_heads, width // self.num_heads
    init = get_initializer("normal:0.02")
    qkv = nn.Dense(3 * width, kernel_init=init, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3 * heads, head_dim), 3, axis=2)
    if self.rope:
      q, k = rotary(q, positions), rotary(k, positions)
    if decode:
      shape = (batch, self.context_length, heads, head_dim)
      cached_k = self.variable("cache", "key", jnp.zeros, shape, k.dtype)
      cached_v = self.variable("cache", "value", jnp.zeros, shape, v.dtype)
      start = positions[0]
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, start, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, start, 0, 0))
      # Each new query sees the cached keys up to and including its own position.
      mask = jnp.arange(self.context_length)[None, :] <= positions[:, None]  # [T, S]
      out = jax.nn.dot_product_attention(q, cached_k.value, cached_v.value,
                                         mask=mask[None, None])
    else:
      out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return nn.Dense(width, kernel_init=init, name="out")(out.reshape(batch, length, width))


class Block(nn.Module):
  """x + attention(norm(x)); x + MLP(norm(x))."""
  num_heads: int
  context_length: int
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  rope: bool = False
  norm: str = "layer"
  norm_epsilon: float = 1e-6
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x, positions, train: bool = False, decode: bool = False):
    norm = lambda name: _norm(self.norm, name, self.norm_epsilon)
    drop = Dropout(self.dropout_rate, deterministic=not train)
    y = CausalSelfAttention(self.num_heads, self.context_length, self.rope, name="attention")(
        norm("norm_0")(x), positions, decode)
    x = x + drop(y)
    init = get_initializer("normal:0.02")
    y = nn.Dense(int(self.mlp_ratio * x.shape[-1]), kernel_init=init, name="mlp_in")(
        norm("norm_1")(x))
    y = nn.Dense(x.shape[-1], kernel_init=init, name="mlp_out")(
        nn.gelu(y, approximate=self.gelu_approximate))
    return x + drop(y)


class GPT(nn.Module):
  vocab_size: int = 256          # bytes
  context_length: int = 256
  hidden_size: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  positions: str = "learned"     # learned | rope
  norm: str = "layer"            # layer | rms
  tie_embeddings: bool = True    # the output head is the token embedding, transposed
  remat: bool = False            # recompute each block's activations in the backward pass
  # Imported checkpoints need their own: GPT-2 uses 1e-5 and the tanh GELU, Llama RMSNorm
  # 1e-5 or 1e-6; exact GELU is the erf form.
  norm_epsilon: float = 1e-6
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False, decode: bool = False):
    if self.positions not in ("learned", "rope") or self.norm not in ("layer", "rms"):
      raise ValueError(f'GPT positions="{self.positions}", norm="{self.norm}": use '
                       'positions learned|rope and norm layer|rms.')
    if self.hidden_size % self.num_heads:
      raise ValueError(f"GPT hidden_size {self.hidden_size} does not split into "
                       f"{self.num_heads} heads.")
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"GPT takes integer tokens [batch, length]; got {tokens.dtype} "
                       f"{tokens.shape}. Use a text data source (config.data.source='text').")
    length = tokens.shape[1]
    if decode:  # the next free position of the cache
      offset = self.variable("cache", "offset", lambda: jnp.zeros((), jnp.int32))
      start = offset.value
      offset.value = start + length
    else:
      start = 0
      if length > self.context_length:
        raise ValueError(f"GPT: a sequence of {length} tokens is longer than "
                         f"context_length={self.context_length}. Shorten "
                         "config.data.seq_len or raise config.model.context_length.")
    positions = start + jnp.arange(length)
    embedding = nn.Embed(self.vocab_size, self.hidden_size,
                         embedding_init=get_initializer("normal:0.02"), name="token_embedding")
    x = embedding(tokens)
    if self.positions == "learned":
      table = self.param("position_embedding", get_initializer("normal:0.02"),
                         (self.context_length, self.hidden_size))
      x = x + jnp.take(table, positions, axis=0)[None].astype(x.dtype)
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    block = nn.remat(Block, static_argnums=(3, 4)) if self.remat else Block
    for i in range(self.depth):
      x = block(self.num_heads, self.context_length, self.mlp_ratio, self.dropout_rate,
                self.positions == "rope", self.norm, self.norm_epsilon,
                self.gelu_approximate, name=f"block_{i}")(x, positions, train, decode)
    x = _norm(self.norm, "final_norm", self.norm_epsilon)(x)
    if self.tie_embeddings:
      return embedding.attend(x)
    return nn.Dense(self.vocab_size, kernel_init=nn.initializers.zeros, name="head")(x)
