"""L1/L2 penalties and decoupled weight decay, applied to parameters chosen by a regex.

Masks select parameters by their path, joined with '/' (e.g. 'dense_0/kernel'): by default
kernels only, never biases or normalisation scales.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def path_mask(params: Any, regex: str) -> Any:
  """A tree of bools like `params`: True where the '/'-joined path matches `regex`."""
  pattern = re.compile(regex)

  def matches(path, _):
    return bool(pattern.search("/".join(str(getattr(k, "key", getattr(k, "idx", k)))
                                        for k in path)))

  return jax.tree_util.tree_map_with_path(matches, params)


def penalty(params: Any, l1: float, l2: float, regex: str) -> jax.Array:
  """l1 * sum|w| + l2 * sum w^2 over the masked parameters (Keras's convention)."""
  mask = path_mask(params, regex)
  terms = [l1 * jnp.abs(p).sum() + l2 * jnp.square(p).sum()
           for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
  return sum(terms, jnp.zeros(()))


class _Empty(NamedTuple):
  pass


def _is_literal_zero(x) -> bool:
  return isinstance(x, (int, float)) and x == 0


def add_penalty_gradient(l1, l2, regex: str) -> optax.GradientTransformation:
  """Adds the gradient of `penalty` (l1 * sign(w) + 2 * l2 * w) to the masked gradients.

  Coupled regularisation: it passes through the optimizer's preconditioning, exactly as if
  the penalty were part of the loss. A coefficient given as the Python number 0 drops its
  term from the computation (a traced one, even if 0 at run time, is always computed).
  """
  def term(p):
    out = []
    if not _is_literal_zero(l1):
      out.append(l1 * jnp.sign(p))
    if not _is_literal_zero(l2):
      out.append(2.0 * l2 * p)
    return out

  def update(grads, state, params):
    mask = path_mask(params, regex)

    def add(g, p, m):
      terms = term(p) if m else []
      return g + sum(terms[1:], terms[0]).astype(g.dtype) if terms else g
    return jax.tree.map(add, grads, params, mask), state

  return optax.GradientTransformation(lambda params: _Empty(), update)


def decoupled_weight_decay(rate, regex: str) -> optax.GradientTransformation:
  """updates -= rate * w on the masked params (rate = learning rate x weight decay: AdamW's).
  A rate given as the Python number 0 leaves the updates as they are, computing nothing."""
  def update(updates, state, params):
    if _is_literal_zero(rate):
      return updates, state
    mask = path_mask(params, regex)
    updates = jax.tree.map(lambda u, p, m: u - (rate * p).astype(u.dtype) if m else u,
                           updates, params, mask)
    return updates, state

  return optax.GradientTransformation(lambda params: _Empty(), update)
