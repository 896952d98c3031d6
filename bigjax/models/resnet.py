"""Residual networks: CIFAR-style ResNet-20/32/56 (He et al., 2016, section 4.2), ResNet-18/34
(basic blocks) and ResNet-50/101/152 (bottleneck blocks, torchvision's layout: the stride on
the 3x3 convolution, "ResNet v1.5"), with BatchNorm whose running statistics live in the train state's
`model_state` ("batch_stats"): updated by the train step, fixed in evaluation.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models.conv import Conv
from bigjax.models.initializers import get_initializer
from bigjax.models.layers import Activation
from bigjax.models.layers import ACTIVATIONS
from bigjax.models.norm import BatchNorm


def _conv_and_norm(block: nn.Module, train: bool):
  """A block's layer makers: conv(features, k, strides, name), bias-free, 'SAME' for k > 1;
  norm(name), BatchNorm with the block's momentum."""
  conv = lambda f, k, s, name: Conv(f, (k, k), s, padding="SAME" if k > 1 else "VALID",
                                    use_bias=False, impl=block.conv_impl, name=name,
                                    kernel_init=get_initializer(block.kernel_init))
  norm = lambda name: BatchNorm(use_running_average=not train, momentum=block.norm_momentum,
                                epsilon=1e-5, name=name)
  return conv, norm


class BasicBlock(nn.Module):
  """conv3x3-BN-act-conv3x3-BN, plus the shortcut, then act."""
  features: int
  strides: int = 1
  shortcut: str = "projection"  # projection: 1x1 conv + BN | padding: subsample + zero channels
  activation: str = "relu"
  kernel_init: str = "he_normal"
  norm_momentum: float = 0.9
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv, norm = _conv_and_norm(self, train)
    y = conv(self.features, 3, self.strides, "conv_0")(x)
    y = Activation(self.activation)(norm("norm_0")(y))
    y = conv(self.features, 3, 1, "conv_1")(y)
    y = norm("norm_1")(y)
    if x.shape[-1] != self.features or self.strides != 1:
      if self.shortcut == "projection":
        x = norm("shortcut_norm")(conv(self.features, 1, self.strides, "shortcut")(x))
      elif self.shortcut == "padding":
        x = x[:, ::self.strides, ::self.strides, :]
        extra = self.features - x.shape[-1]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
      else:
        raise ValueError(f'ResNet shortcut "{self.shortcut}": use "projection" or "padding".')
    return Activation(self.activation)(y + x)


class BottleneckBlock(nn.Module):
  """conv1x1-BN-act-conv3x3(stride)-BN-act-conv1x1(4x)-BN, plus the shortcut (a 1x1
  projection + BN where the shape changes), then act: torchvision's Bottleneck."""
  features: int  # the block's width; it outputs 4x as many channels
  strides: int = 1
  shortcut: str = "projection"
  activation: str = "relu"
  kernel_init: str = "he_normal"
  norm_momentum: float = 0.9
  conv_impl: str = "auto"
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv, norm = _conv_and_norm(self, train)
    out_features = self.features * self.expansion
    y = Activation(self.activation)(norm("norm_0")(conv(self.features, 1, 1, "conv_0")(x)))
    y = Activation(self.activation)(norm("norm_1")(conv(self.features, 3, self.strides,
                                                        "conv_1")(y)))
    y = norm("norm_2")(conv(out_features, 1, 1, "conv_2")(y))
    if x.shape[-1] != out_features or self.strides != 1:
      if self.shortcut != "projection":
        raise ValueError(f'ResNet shortcut "{self.shortcut}": bottleneck blocks use '
                         '"projection".')
      x = norm("shortcut_norm")(conv(out_features, 1, self.strides, "shortcut")(x))
    return Activation(self.activation)(y + x)


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nn.Module):
  """Stem, stages of residual blocks (the first block of each stage after the first halves the
  resolution), global average pooling, dense head.

  stem "cifar": conv3x3 (stride 1) - BN - act, for 28x28 and 32x32 images;
  stem "imagenet": conv7x7 (stride 2) - BN - act - maxpool 3x3 (stride 2), for large images.
  """
  stage_sizes: Sequence[int] = (3, 3, 3)
  stage_features: Sequence[int] = (16, 32, 64)
  block: str = "basic"  # basic | bottleneck (stage_features are then the blocks' widths)
  stem: str = "cifar"
  shortcut: str = "projection"
  num_classes: int = 10  # 0: no head; the features come out (a backbone)
  activation: str = "relu"
  kernel_init: str = "he_normal"
  bias_init: str = "zeros"
  norm_momentum: float = 0.9
  conv_impl: str = "auto"  # auto (CPUs: im2col when unpadded) | xla | im2col

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    ACTIVATIONS.get(self.activation)  # unknown names fail here, listing the known ones
    if len(self.stage_sizes) != len(self.stage_features):
      raise ValueError(f"ResNet: stage_sizes {tuple(self.stage_sizes)} and stage_features "
                       f"{tuple(self.stage_features)} must have the same length.")
    if self.block not in BLOCKS:
      raise ValueError(f'ResNet block "{self.block}": use "basic" or "bottleneck".')
    kernel_init = get_initializer(self.kernel_init)
    if self.stem == "cifar":
      x = Conv(self.stage_features[0], (3, 3), padding="SAME", use_bias=False,
               kernel_init=kernel_init, impl=self.conv_impl, name="stem")(x)
    elif self.stem == "imagenet":
      x = Conv(self.stage_features[0], (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False,
               kernel_init=kernel_init, impl=self.conv_impl, name="stem")(x)
    else:
      raise ValueError(f'ResNet stem "{self.stem}": use "cifar" or "imagenet".')
    x = BatchNorm(use_running_average=not train, momentum=self.norm_momentum, epsilon=1e-5,
                  name="stem_norm")(x)
    x = Activation(self.activation)(x)
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, (blocks, features) in enumerate(zip(self.stage_sizes, self.stage_features)):
      for block in range(blocks):
        x = BLOCKS[self.block](
            features, strides=2 if stage > 0 and block == 0 else 1, shortcut=self.shortcut,
            activation=self.activation, kernel_init=self.kernel_init,
            norm_momentum=self.norm_momentum, conv_impl=self.conv_impl,
            name=f"stage_{stage}_block_{block}")(x, train=train)
    x = x.mean(axis=(1, 2))  # global average pooling
    if not self.num_classes:  # a backbone (e.g. for contrastive pre-training): the features
      return x
    return nn.Dense(self.num_classes, kernel_init=get_initializer("lecun_normal"),
                    bias_init=get_initializer(self.bias_init), name="head")(x)


class ResNet20(ResNet):
  shortcut: str = "padding"  # the paper's option A for its CIFAR networks
  stage_sizes: Sequence[int] = (3, 3, 3)


class ResNet32(ResNet):
  shortcut: str = "padding"  # the paper's option A for its CIFAR networks
  stage_sizes: Sequence[int] = (5, 5, 5)


class ResNet56(ResNet):
  shortcut: str = "padding"  # the paper's option A for its CIFAR networks
  stage_sizes: Sequence[int] = (9, 9, 9)


class ResNet18(ResNet):
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  stage_features: Sequence[int] = (64, 128, 256, 512)


class ResNet34(ResNet):
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  stage_features: Sequence[int] = (64, 128, 256, 512)


class ResNet50(ResNet):
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  stage_features: Sequence[int] = (64, 128, 256, 512)
  block: str = "bottleneck"
  stem: str = "imagenet"
  num_classes: int = 1000


class ResNet101(ResNet50):
  stage_sizes: Sequence[int] = (3, 4, 23, 3)


class ResNet152(ResNet50):
  stage_sizes: Sequence[int] = (3, 8, 36, 3)
