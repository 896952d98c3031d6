"""2-D convolution with `flax.linen.Conv`'s parameters and a faster gradient on CPUs.

XLA:CPU computes a convolution's kernel gradient as another convolution, and slowly (about
0.4 of the lessons' CNN's train step when this was written; bench/README.md). Written as
im2col, the same sums become one matrix product each way: the forward pass gathers the
kh*kw shifted views of the input into columns (`patches`) and multiplies them by the
kernel; the backward pass reuses those columns for the kernel gradient (`cols^T @ g`) and
leaves the input gradient to XLA's transposed convolution, which is fast. Same maths, other
summation order: equal to `lax.conv_general_dilated` to float rounding (tested).

The columns are kept for the backward pass, kh*kw times the input's size, so `"auto"` uses
im2col only where it was measured to pay: on CPUs, for unpadded ('VALID') convolutions
(faster there for the lessons' CNN layers; slower for ResNet-20's padded 3x3 layers, which
XLA:CPU handles well; measured per layer, forward and backward, in git history of this
file). GPUs and TPUs keep XLA's convolution (cuDNN, MXU).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "xla", "im2col")
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, strides, "VALID", dimension_numbers=_DIMENSIONS)


def _view(x_BxHxWxC: jax.Array, i: int, j: int, kh: int, kw: int,
          strides: tuple[int, int]) -> jax.Array:
  """The input under kernel position (i, j) at every output position ('VALID')."""
  b, h, w, c = x_BxHxWxC.shape
  sh, sw = strides
  oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
  return lax.slice(x_BxHxWxC, (0, i, j, 0), (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                   (1, sh, sw, 1))


def patches(x_BxHxWxC: jax.Array, kh: int, kw: int, strides: tuple[int, int]) -> jax.Array:
  """[B, OH, OW, kh*kw*C]: the input under each kernel position, ordered like a flattened
  HWIO kernel's (kh, kw, C) axes. 'VALID' windows (pad first for other paddings)."""
  views = [_view(x_BxHxWxC, i, j, kh, kw, strides) for i in range(kh) for j in range(kw)]
  return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def im2col_conv(x_BxHxWxC: jax.Array, kernel_HWIO: jax.Array,
                strides: tuple[int, int]) -> jax.Array:
  """A 'VALID' convolution as columns @ kernel; see the module docstring."""
  return _im2col_forward(x_BxHxWxC, kernel_HWIO, strides)[0]


# Below this many products per output (e.g. a 3x3 kernel over one channel), the columns
# make a matrix product too thin to pay for them: the forward pass adds the kh*kw shifted
# views times their kernel rows instead, and the backward pass builds the columns.
_THIN_PATCH = 16


def _im2col_forward(x, kernel, strides):
  kh, kw, ci, co = kernel.shape
  if kh * kw * ci < _THIN_PATCH:
    cols = None
    y = sum(jnp.einsum("bhwc,cd->bhwd", _view(x, i, j, kh, kw, strides), kernel[i, j])
            for i in range(kh) for j in range(kw))
  else:
    cols = patches(x, kh, kw, strides)
    b, oh, ow, k = cols.shape
    y = (cols.reshape(b * oh * ow, k) @ kernel.reshape(k, co)).reshape(b, oh, ow, co)
  return y, (x, kernel, cols)


def _im2col_backward(strides, residuals, g_BxOHxOWxO):
  x, kernel, cols = residuals
  kh, kw, _, co = kernel.shape
  if cols is None:
    cols = patches(x, kh, kw, strides)
  k = cols.shape[-1]
  d_kernel = (cols.reshape(-1, k).T @ g_BxOHxOWxO.reshape(-1, co)).reshape(kernel.shape)
  # The input gradient is linear in g; XLA's transposed convolution computes it well (and
  # drops it entirely when the input is the data).
  d_x = jax.vjp(lambda x: _xla_conv(x, kernel, strides), x)[1](g_BxOHxOWxO)[0]
  return d_x, d_kernel.astype(kernel.dtype)


im2col_conv.defvjp(_im2col_forward, _im2col_backward)


def resolve_impl(impl: str, padded: bool = False) -> str:
  """'xla' or 'im2col' for this backend and padding; unknown names fail listing the known
  ones."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl "{impl}": use one of {", ".join(CONV_IMPLS)} ("auto": '
                     "im2col for unpadded convolutions on CPUs, XLA's convolution otherwise).")
  if impl == "auto":
    return "im2col" if jax.default_backend() == "cpu" and not padded else "xla"
  return impl


def conv2d(x_BxHxWxC: jax.Array, kernel_HWIO: jax.Array, strides: tuple[int, int] = (1, 1),
           padding: str | Sequence[tuple[int, int]] = "VALID", impl: str = "auto") -> jax.Array:
  """NHWC x HWIO convolution, as `lax.conv_general_dilated`, by `impl` ('auto', 'xla' or
  'im2col'; see `resolve_impl`). padding: 'SAME', 'VALID' or ((top, bottom), (left, right))."""
  strides = tuple(strides)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(x_BxHxWxC.shape[1:3], kernel_HWIO.shape[:2], strides, padding)
  else:
    pads = [tuple(p) for p in padding]
  padded = any(p != (0, 0) for p in pads)
  if resolve_impl(impl, padded) == "xla":
    return lax.conv_general_dilated(x_BxHxWxC, kernel_HWIO, strides, pads,
                                    dimension_numbers=_DIMENSIONS)
  if padded:
    x_BxHxWxC = jnp.pad(x_BxHxWxC, ((0, 0), *pads, (0, 0)))
  return im2col_conv(x_BxHxWxC, kernel_HWIO, strides)


def _pairs(value, name: str) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  value = tuple(value)
  if len(value) != 2:
    raise ValueError(f"Conv {name} {value}: give one int or two (height, width).")
  return value


class Conv(nn.Module):
  """A 2-D convolution over NHWC inputs with `nn.Conv`'s parameters ('kernel' [kh, kw, in,
  out], 'bias' [out]) and initialisers, so checkpoints move between the two; `impl` picks
  the computation (see `conv2d`)."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: int | Sequence[int] = 1
  padding: Any = "SAME"  # "SAME" | "VALID" | int | ((top, bottom), (left, right))
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    if x_BxHxWxC.ndim != 4:
      raise ValueError(f"Conv expects [batch, height, width, channels] inputs; got shape "
                       f"{x_BxHxWxC.shape}.")
    kh, kw = _pairs(self.kernel_size, "kernel_size")
    padding = self.padding
    if isinstance(padding, int):
      padding = ((padding, padding), (padding, padding))
    elif isinstance(padding, str):
      padding = padding.upper()
      if padding not in ("SAME", "VALID"):
        raise ValueError(f'Conv padding "{self.padding}": use "SAME", "VALID", an int or '
                         "((top, bottom), (left, right)).")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x_BxHxWxC.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
        if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x_BxHxWxC, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, _pairs(self.strides, "strides"), padding, self.impl)
    return y if bias is None else y + bias
