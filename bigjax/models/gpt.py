"""A decoder-only Transformer language model (GPT-style).

Token embedding, learned or rotary positions, pre-norm (LayerNorm or RMSNorm) blocks of
causal multi-head (or grouped-query) attention through `jax.nn.dot_product_attention` (GPUs
get the fused kernel) and a GELU or SwiGLU MLP, a tied or untied output head: GPT-2's shape
by default, Llama's with positions="rope", norm="rms", mlp="swiglu", bias="none". Called on int tokens [B, T]; returns
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


BIASES = ("all", "none", "qkv")  # GPT-2: all; Llama, Mistral: none; Qwen2: on q, k, v only


class CausalSelfAttention(nn.Module):
  num_heads: int
  context_length: int
  rope: bool = False
  num_kv_heads: int = 0          # grouped-query attention: 0 = num_heads (multi-head)
  bias: str = "all"
  rope_base: float = 10_000.0

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, decode: bool = False) -> jax.Array:
    batch, length, width = x.shape
    heads, head_dim = self.num_heads, width // self.num_heads
    kv_heads = self.num_kv_heads or heads
    init = get_initializer("normal:0.02")
    # One projection for q, k and v: [q heads | k heads | v heads], each head_dim wide.
    qkv = nn.Dense((heads + 2 * kv_heads) * head_dim, kernel_init=init,
                   use_bias=self.bias != "none", name="qkv")(x)
    qkv = qkv.reshape(batch, length, heads + 2 * kv_heads, head_dim)
    q, k, v = jnp.split(qkv, [heads, heads + kv_heads], axis=2)
    if self.rope:
      q, k = rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base)
    if decode:
      shape = (batch, self.context_length, kv_heads, head_dim)
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
    return nn.Dense(width, kernel_init=init, use_bias=self.bias == "all", name="out")(
        out.reshape(batch, length, width))


class Block(nn.Module):
  """x + attention(norm(x)); x + MLP(norm(x)). The MLP is GELU (GPT-2) or SwiGLU (Llama:
  down(silu(gate(x)) * up(x)))."""
  num_heads: int
  context_length: int
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  rope: bool = False
  norm: str = "layer"
  norm_epsilon: float = 1e-6
  gelu_approximate: bool = True
  num_kv_heads: int = 0
  bias: str = "all"
  mlp: str = "gelu"
  mlp_hidden: int = 0            # the MLP's width: 0 = mlp_ratio x hidden size
  rope_base: float = 10_000.0

  @nn.compact
  def __call__(self, x, positions, train: bool = False, decode: bool = False):
    norm = lambda name: _norm(self.norm, name, self.norm_epsilon)
    drop = Dropout(self.dropout_rate, deterministic=not train)
    y = CausalSelfAttention(self.num_heads, self.context_length, self.rope, self.num_kv_heads,
                            self.bias, self.rope_base, name="attention")(
        norm("norm_0")(x), positions, decode)
    x = x + drop(y)
    init = get_initializer("normal:0.02")
    hidden = self.mlp_hidden or int(self.mlp_ratio * x.shape[-1])
    dense = lambda width, name: nn.Dense(width, kernel_init=init,
                                         use_bias=self.bias == "all", name=name)
    h = norm("norm_1")(x)
    if self.mlp == "swiglu":
      y = nn.silu(dense(hidden, "mlp_gate")(h)) * dense(hidden, "mlp_in")(h)
    else:
      y = nn.gelu(dense(hidden, "mlp_in")(h), approximate=self.gelu_approximate)
    return x + drop(dense(x.shape[-1], "mlp_out")(y))


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
  # Llama-family: grouped-query attention, SwiGLU, no biases, RoPE's base (rope_theta).
  num_kv_heads: int = 0          # 0: as many key/value heads as query heads
  mlp: str = "gelu"              # gelu | swiglu
  mlp_hidden: int = 0            # 0: mlp_ratio x hidden_size
  bias: str = "all"              # all | none | qkv
  rope_base: float = 10_000.0

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False, decode: bool = False):
    if self.positions not in ("learned", "rope") or self.norm not in ("layer", "rms"):
      raise ValueError(f'GPT positions="{self.positions}", norm="{self.norm}": use '
                       'positions learned|rope and norm layer|rms.')
    if self.mlp not in ("gelu", "swiglu") or self.bias not in BIASES:
      raise ValueError(f'GPT mlp="{self.mlp}", bias="{self.bias}": use mlp gelu|swiglu and '
                       f"bias {'|'.join(BIASES)}.")
    if self.hidden_size % self.num_heads or (self.num_kv_heads and
                                             self.num_heads % self.num_kv_heads):
      raise ValueError(f"GPT hidden_size {self.hidden_size} does not split into "
                       f"{self.num_heads} heads, or they into {self.num_kv_heads} key/value "
                       "heads.")
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
                self.gelu_approximate, self.num_kv_heads, self.bias, self.mlp,
                self.mlp_hidden, self.rope_base, name=f"block_{i}")(
                    x, positions, train, decode)
    x = _norm(self.norm, "final_norm", self.norm_epsilon)(x)
    if self.tie_embeddings:
      return embedding.attend(x)
    return nn.Dense(self.vocab_size, kernel_init=nn.initializers.zeros,
                    use_bias=self.bias == "all", name="head")(x)
