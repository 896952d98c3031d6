"""An image backbone with a projection head, for contrastive pre-training (SimCLR, Chen et
al. 2020) and VICReg (Bardes et al. 2022).

`config.model = dict(name="projected", backbone=dict(name="cnn", ...), projection_sizes=(256,
128))`: any image family that takes `num_classes` (mlp, cnn, resnet*, vit, or a plug-in
following the same rule) is built with num_classes=0, which returns its pooled features
instead of class scores; an MLP of `projection_sizes` (ReLU between layers, none after the
last) maps them to the embedding the loss compares (`nt_xent`, `vicreg`).

The backbone's parameters keep their own names at the top level (`conv_0`, `dense_0`,
`stage_0_block_0`, ...), beside `projection_0`, `projection_1`, ..., so the classifier that
fine-tunes it is the same family's config with `init_from.skip="^projection_"`: it loads
every backbone weight and trains a new `head`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax

from bigjax.registry import ConfigError


def backbone_of(backbone: Mapping[str, Any]) -> nn.Module:
  """The image family `backbone` names, built to return its features (num_classes=0)."""
  from bigjax.models import build_model
  config = dict(backbone)
  if "name" not in config:
    raise ConfigError('config.model.backbone needs a name, e.g. dict(name="cnn", ...).')
  if config["name"] in ("projected", "mae"):
    raise ConfigError(f'config.model.backbone.name="{config["name"]}" is itself a '
                      "pre-training wrapper; name an image family (mlp, cnn, resnet, vit).")
  config.pop("num_classes", None)
  module = build_model(config, where="config.model.backbone")
  if "num_classes" not in {f.name for f in dataclasses.fields(module)}:
    raise ConfigError(f'config.model.backbone.name="{config["name"]}" has no num_classes '
                      "field; a backbone must return its features when built with "
                      "num_classes=0 (as mlp, cnn, resnet and vit do).")
  return module.clone(num_classes=0)


class Projected(nn.Module):
  backbone: Any                             # the backbone's model config (a mapping)
  projection_sizes: Sequence[int] = (256, 128)

  def setup(self):
    self.encoder = backbone_of(self.backbone)
    nn.share_scope(self, self.encoder)      # its parameters keep their names at the top
    self.projection = [nn.Dense(width, name=f"projection_{i}")
                       for i, width in enumerate(self.projection_sizes)]

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    z = self.encoder(x, train=train)
    for i, layer in enumerate(self.projection):
      z = layer(z)
      if i < len(self.projection) - 1:
        z = nn.relu(z)
    return z
