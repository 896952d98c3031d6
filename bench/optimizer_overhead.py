"""What bigjax's optimizer wrapping costs per train step, against plain optax.

  python -m bench.optimizer_overhead [--steps=3000]

bigjax's optimizer injects every float hyperparameter into its state, so that overrides
never recompile (see the README), and compiles the penalty, clipping and decay stages only
when their values are not 0 (the lessons' configs: all 0).
This times the same jitted train step (random Fashion-MNIST-shaped data on the device, Adam
1e-3) with that optimizer and with bare `optax.adam`, for the lessons' MLPs at their batch
sizes. Prints one JSON line per setting: microseconds per step, median of 3 repeats.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
import optax
from absl import app, flags

from bigjax.core import losses
from bigjax.models import build_model, init_variables
from bigjax.core.optimizers import build_optimizer
from bigjax.core.steps import create_train_state, gather_batch, make_train_step
from configs import mnist

flags.DEFINE_integer("steps", 3000, "Timed steps per repeat.")


def time_per_step(model, tx, batch_size: int, steps: int) -> float:
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.random((48_000, 28, 28, 1), np.float32))
  labels = jax.device_put(rng.integers(0, 10, 48_000).astype(np.int32))
  variables = init_variables(model, jax.random.PRNGKey(0), images[:1])
  state = create_train_state(variables, tx, jax.random.PRNGKey(1))
  train_step = make_train_step(model, losses.softmax_cross_entropy, tx)
  step = jax.jit(lambda s, x, y, i: train_step(s, gather_batch(x, y, i)), donate_argnums=0)
  indices = rng.integers(0, 48_000, (steps, batch_size)).astype(np.int32)
  state, _ = step(state, images, labels, indices[0])
  repeats = []
  for _ in range(3):
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(steps):
      state, _ = step(state, images, labels, indices[i])
    jax.block_until_ready(state)
    repeats.append((time.perf_counter() - start) / steps)
  return float(np.median(repeats))


def main(argv):
  del argv
  for variant in ("mlp", "mlp3"):
    config = mnist.get_config(variant)
    model = build_model(config.model)
    batch_size = config.train.batch_size
    bigjax_tx = build_optimizer(config.optimizer, config.loss, total_steps=10_000)
    ours = time_per_step(model, bigjax_tx, batch_size, flags.FLAGS.steps)
    plain = time_per_step(model, optax.adam(1e-3), batch_size, flags.FLAGS.steps)
    print(json.dumps({"model": variant, "batch_size": batch_size,
                      "bigjax_us_per_step": round(ours * 1e6, 1),
                      "plain_optax_adam_us_per_step": round(plain * 1e6, 1),
                      "overhead": f"{ours / plain - 1:+.0%}", "device": jax.devices()[0].platform,
                      "jax": jax.__version__, "optax": optax.__version__}), flush=True)


if __name__ == "__main__":
  app.run(main)
