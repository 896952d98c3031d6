"""A masked autoencoder for the ViT (MAE, He et al. 2022): self-supervised pre-training that
hides most patches of each image and reconstructs their pixels from the rest.

`config.model = dict(name="mae", encoder=dict(patch_size=4, hidden_size=64, ...),
mask_ratio=0.75, decoder_size=64, decoder_depth=1, decoder_heads=2)`. The encoder is the
ViT of the same fields (bigjax/models/vit.py), with the ViT's parameter names, and sees only
the visible patches (a random subset per image, kept in order); a light decoder gets the
encoded patches back in place, a learned `mask_token` in every hidden one, its own position
embeddings, and predicts each patch's pixels. The loss `masked_patch_mse` scores the hidden
patches only.

Outputs [B, P, patch_pixels + 1]: the predicted pixels of every patch (row-major patches,
each [p, p, C] flattened) and, last, 1 for a hidden patch and 0 for a visible one. In
training the mask is drawn from the step's "dropout" key (so (seed, step) fixes it); in
evaluation from a fixed key, so every evaluation scores the same patches.

A ViT classifier loads the encoder with init_from.skip="^(decoder_|mask_token)" (its head
is new).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models.initializers import get_initializer
from bigjax.models.norm import LayerNorm
from bigjax.models.vit import EncoderBlock
from bigjax.models.vit import ViT
from bigjax.registry import check_keys
from bigjax.registry import ConfigError

EVAL_MASK_SEED = 0


def patchify(images: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C], patches row-major, each flattened [p, p, C]."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


class MAE(nn.Module):
  encoder: Any                 # the ViT's fields (patch_size, hidden_size, depth, ...)
  mask_ratio: float = 0.75
  decoder_size: int = 64
  decoder_depth: int = 1
  decoder_heads: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    fields = {k: v for k, v in dict(self.encoder).items() if k not in ("name", "num_classes")}
    check_keys("model", "vit", [f.name for f in dataclasses.fields(ViT)
                                if f.name not in ("parent", "name")], fields,
               "config.model.encoder")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    vit = ViT(parent=None, **fields)  # its fields only: the layers are built here
    if not 0.0 < self.mask_ratio < 1.0:
      raise ConfigError(f"config.model.mask_ratio must be in (0, 1) (MAE: 0.75); got "
                        f"{self.mask_ratio}.")
    p, d = vit.patch_size, vit.hidden_size
    b, h, w = x.shape[:3]
    if h % p or w % p:
      raise ValueError(f"MAE: {h}x{w} images do not split into {p}x{p} patches; choose a "
                       "patch_size dividing both.")
    n = (h // p) * (w // p)
    keep = max(1, int(round(n * (1.0 - self.mask_ratio))))
    tokens = nn.Conv(d, (p, p), (p, p), padding="VALID", name="patch_embedding")(x)
    tokens = tokens.reshape(b, n, d)
    cls = vit.pool == "cls"
    position = self.param("position_embedding", get_initializer("normal:0.02"),
                          (1, n + cls, d))
    tokens = tokens + position[:, cls:]

    # Which patches each image keeps: the `keep` lowest of a uniform draw, in patch order.
    key = self.make_rng("dropout") if train else jax.random.PRNGKey(EVAL_MASK_SEED)
    scores = jax.random.uniform(key, (b, n))
    kept = jnp.sort(jnp.argsort(scores, axis=1)[:, :keep], axis=1)           # [B, keep]
    visible = jnp.take_along_axis(tokens, kept[..., None], axis=1)
    if cls:
      token = self.param("class_token", nn.initializers.zeros, (1, 1, d)) + position[:, :1]
      visible = jnp.concatenate([jnp.broadcast_to(token, (b, 1, d)), visible], axis=1)
    for i in range(vit.depth):
      visible = EncoderBlock(vit.num_heads, vit.mlp_ratio, vit.dropout_rate,
                             vit.norm_epsilon, vit.gelu_approximate,
                             name=f"block_{i}")(visible, train)
    visible = LayerNorm(epsilon=vit.norm_epsilon, name="final_norm")(visible)[:, cls:]

    # The decoder: every patch back in place, hidden ones as the learned mask token.
    y = nn.Dense(self.decoder_size, name="decoder_embed")(visible)
    mask_token = self.param("mask_token", get_initializer("normal:0.02"),
                            (1, 1, self.decoder_size))
    hidden = jnp.ones((b, n), bool).at[jnp.arange(b)[:, None], kept].set(False)
    full = jnp.broadcast_to(mask_token, (b, n, self.decoder_size))
    full = full.at[jnp.arange(b)[:, None], kept].set(y)
    full = full + self.param("decoder_position", get_initializer("normal:0.02"),
                             (1, n, self.decoder_size))
    for i in range(self.decoder_depth):
      full = EncoderBlock(self.decoder_heads, vit.mlp_ratio, 0.0, vit.norm_epsilon,
                          vit.gelu_approximate, name=f"decoder_block_{i}")(full, train)
    full = LayerNorm(epsilon=vit.norm_epsilon, name="decoder_norm")(full)
    pixels = nn.Dense(p * p * x.shape[-1], name="decoder_pred")(full)
    return jnp.concatenate([pixels, hidden[..., None].astype(pixels.dtype)], axis=-1)


def masked_patch_mse(outputs: jax.Array, batch: dict,
                     normalize_patches: bool = True) -> jax.Array:
  """MAE's loss: per image, the mean squared error of the predicted pixels over its hidden
  patches. With `normalize_patches` (MAE's default) each target patch is standardised by
  its own mean and variance first."""
  images = batch["image"].astype(jnp.float32)
  pixels, hidden = outputs[..., :-1].astype(jnp.float32), outputs[..., -1]
  p = int(round((pixels.shape[-1] / images.shape[-1]) ** 0.5))
  target = patchify(images, p)
  if normalize_patches:
    mean = target.mean(-1, keepdims=True)
    target = (target - mean) / jnp.sqrt(target.var(-1, keepdims=True) + 1e-6)
  per_patch = jnp.square(pixels - target).mean(-1)
  return (per_patch * hidden).sum(-1) / jnp.maximum(hidden.sum(-1), 1.0)
