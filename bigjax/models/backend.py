"""Which kernels the models use on this backend."""

import jax


def hand_written_kernels() -> bool:
  """Whether to use bigjax's hand-written kernels (the reshape max-pool's gradient, flat
  dropout draws, closed-form normalisation gradients): each was measured faster on XLA:CPU
  (bench/README.md, "Compile and start-up"; bench.kernel_census), and none has been measured
  on a GPU or TPU, where Flax's stock computations (the same values) are used until one is."""
  return jax.default_backend() == "cpu"
