"""Which kernels the models use on this backend."""

import os

import jax

from bigjax.registry import ConfigError

# auto | 1 (bigjax's own kernels) | 0 (Flax's stock ones); read when a model is traced, so
# a benchmark can compare both in one process (bench/accelerator.py).
ENV_VAR = "BIGJAX_HAND_WRITTEN_KERNELS"


def hand_written_kernels() -> bool:
  """Whether to use bigjax's hand-written kernels (the reshape max-pool's gradient, flat
  dropout draws, closed-form normalisation gradients): each was measured faster on XLA:CPU
  (bench/README.md, "Compile and start-up"; bench.kernel_census), and none has been measured
  on a GPU or TPU, where Flax's stock computations (the same values) are used until one is
  (`python -m bench.accelerator` measures both). $BIGJAX_HAND_WRITTEN_KERNELS=0|1 forces
  the choice."""
  setting = os.environ.get(ENV_VAR, "auto").strip().lower()
  if setting == "auto":
    return jax.default_backend() == "cpu"
  if setting not in ("0", "1"):
    raise ConfigError(f"${ENV_VAR}={setting!r}: use auto, 1 (bigjax's kernels) or 0 "
                      "(Flax's stock ones).")
  return setting == "1"
