"""A BERT-style Transformer encoder (Devlin et al. 2019) with the heads of its tasks.

Token, position and segment embeddings; bidirectional self-attention that ignores padding
(`pad_token_id` tokens); post-LayerNorm blocks as in BERT (`pre_norm=True`: pre-LN); a
pooler (Dense + tanh on the first token). Parameters are named and shaped as Hugging Face's
`BertModel` (q/k/v kept apart, kernels [in, out]), so a checkpoint maps one to one, and the
parameter count equals transformers' for the same config (BERT-base with its pooler:
109,482,240).

Called on int tokens [B, T] (segment 0 for every token unless `segment_ids` are given);
returns, by `head`:
  classification        logits [B, num_classes] from the pooled first token
  token_classification  logits [B, T, num_classes]
  mlm                   logits [B, T, vocab_size]: transform, then the token embedding
                        transposed, with its own bias (BertForMaskedLM's layout)
  none                  the last hidden states [B, T, hidden_size]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models.initializers import get_initializer
from bigjax.models.layers import Dropout

# Google's BERT miniatures (Turc et al. 2019) and base: (depth, hidden size); heads are
# hidden/64, the MLP 4x hidden.
SIZES = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512),
         "base": (12, 768)}


def sized(size: str, **fields) -> dict:
  """config.model fields for a named size: dict(name="bert", **sized("mini"))."""
  if size not in SIZES:
    raise ValueError(f'BERT size "{size}": use one of {", ".join(SIZES)}.')
  depth, width = SIZES[size]
  return dict(depth=depth, hidden_size=width, num_heads=width // 64,
              intermediate_size=4 * width, **fields)


def _layer_norm(epsilon: float, name: str) -> nn.Module:
  return nn.LayerNorm(epsilon=epsilon, name=name)


class SelfAttention(nn.Module):
  """Multi-head attention over all positions, keys at padding masked out."""
  num_heads: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, mask_BxT: jax.Array, train: bool) -> jax.Array:
    batch, length, width = x.shape
    heads, head_dim = self.num_heads, width // self.num_heads
    init = get_initializer("normal:0.02")
    split = lambda name: nn.Dense(width, kernel_init=init, name=name)(x).reshape(
        batch, length, heads, head_dim)
    q, k, v = split("query"), split("key"), split("value")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(head_dim)
    scores = jnp.where(mask_BxT[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    weights = Dropout(self.dropout_rate, deterministic=not train)(weights)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
    return nn.Dense(width, kernel_init=init, name="output")(out)


class Layer(nn.Module):
  """Post-LN: x = LN(x + attention(x)); x = LN(x + MLP(x)). Pre-LN: x + f(LN(x))."""
  num_heads: int
  intermediate_size: int
  dropout_rate: float = 0.1
  norm_epsilon: float = 1e-12
  gelu_approximate: bool = False
  pre_norm: bool = False

  @nn.compact
  def __call__(self, x, mask_BxT, train: bool = False):
    drop = Dropout(self.dropout_rate, deterministic=not train)
    init = get_initializer("normal:0.02")
    attend = SelfAttention(self.num_heads, self.dropout_rate, name="attention")
    mlp_in = nn.Dense(self.intermediate_size, kernel_init=init, name="intermediate")
    mlp_out = nn.Dense(x.shape[-1], kernel_init=init, name="output")
    mlp = lambda y: mlp_out(nn.gelu(mlp_in(y), approximate=self.gelu_approximate))
    norm_0 = _layer_norm(self.norm_epsilon, "attention_norm")
    norm_1 = _layer_norm(self.norm_epsilon, "output_norm")
    if self.pre_norm:
      x = x + drop(attend(norm_0(x), mask_BxT, train))
      return x + drop(mlp(norm_1(x)))
    x = norm_0(x + drop(attend(x, mask_BxT, train)))
    return norm_1(x + drop(mlp(x)))


class BERT(nn.Module):
  vocab_size: int = 30522
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_positions: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  norm_epsilon: float = 1e-12
  gelu_approximate: bool = False   # BERT's GELU is the exact (erf) form
  pre_norm: bool = False
  pad_token_id: int = 0
  head: str = "classification"     # classification | token_classification | mlm | none
  num_classes: int = 2
  pooler: bool = True              # (classification needs it; mlm has none, as HF's)
  # What the pooler reads: "cls", the first token (BERT's; its pre-training's next-sentence
  # task trains it), or "mean", the mean of the non-padding tokens (more robust after a
  # masked-LM pre-training alone, which never asks the first token for anything).
  pool: str = "cls"

  HEADS = ("classification", "token_classification", "mlm", "none")

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False,
               segment_ids: jax.Array | None = None) -> jax.Array:
    if self.head not in self.HEADS:
      raise ValueError(f'BERT head "{self.head}": use one of {", ".join(self.HEADS)}.')
    if self.hidden_size % self.num_heads:
      raise ValueError(f"BERT hidden_size {self.hidden_size} does not split into "
                       f"{self.num_heads} heads.")
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"BERT takes integer tokens [batch, length]; got {tokens.dtype} "
                       f"{tokens.shape}. Use a text data source.")
    length = tokens.shape[1]
    if length > self.max_positions:
      raise ValueError(f"BERT: a sequence of {length} tokens is longer than max_positions="
                       f"{self.max_positions}. Shorten config.data.seq_len.")
    init = get_initializer("normal:0.02")
    embed = nn.Embed(self.vocab_size, self.hidden_size, embedding_init=init,
                     name="word_embeddings")
    positions = self.param("position_embeddings", init, (self.max_positions, self.hidden_size))
    segments = self.param("token_type_embeddings", init,
                          (self.type_vocab_size, self.hidden_size))
    segment_ids = jnp.zeros_like(tokens) if segment_ids is None else segment_ids
    x = (embed(tokens) + positions[None, :length]
         + jnp.take(segments, segment_ids, axis=0))
    x = _layer_norm(self.norm_epsilon, "embeddings_norm")(x)
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    mask = tokens != self.pad_token_id
    for i in range(self.depth):
      x = Layer(self.num_heads, self.intermediate_size, self.dropout_rate, self.norm_epsilon,
                self.gelu_approximate, self.pre_norm, name=f"layer_{i}")(x, mask, train)
    if self.pre_norm:
      x = _layer_norm(self.norm_epsilon, "final_norm")(x)
    if self.head == "mlm":
      y = nn.Dense(self.hidden_size, kernel_init=init, name="mlm_transform")(x)
      y = _layer_norm(self.norm_epsilon, "mlm_norm")(
          nn.gelu(y, approximate=self.gelu_approximate))
      bias = self.param("mlm_bias", nn.initializers.zeros, (self.vocab_size,))
      return embed.attend(y) + bias
    pooled = None
    if self.pooler:
      if self.pool not in ("cls", "mean"):
        raise ValueError(f'BERT pool "{self.pool}": use "cls" or "mean".')
      if self.pool == "cls":
        summary = x[:, 0]
      else:
        weights = mask[..., None].astype(x.dtype)
        summary = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1)
      pooled = jnp.tanh(nn.Dense(self.hidden_size, kernel_init=init, name="pooler")(summary))
    if self.head == "none":
      return x
    drop = Dropout(self.dropout_rate, deterministic=not train)
    if self.head == "token_classification":
      return nn.Dense(self.num_classes, kernel_init=init, name="classifier")(drop(x))
    if pooled is None:
      raise ValueError("BERT head=classification needs pooler=True.")
    return nn.Dense(self.num_classes, kernel_init=init, name="classifier")(drop(pooled))
