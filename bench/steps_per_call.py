"""Time per train step against steps per compiled call (config.train.steps_per_call).

  python -m bench.steps_per_call [--variants=mlp,mlp3,cnn] [--ks=1,10,50] [--steps=2000]

The same jitted step as the driver's (Adam 1e-3, batch gathered on the device from random
Fashion-MNIST-shaped data), dispatched one step per call or k steps per `lax.scan` call.
Prints one JSON line per (variant, k): microseconds per step (median of 3 repeats) and the
first call's time (compilation included).
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags

from bigjax.core import losses
from bigjax.models import build_model, init_variables
from bigjax.core.optimizers import build_optimizer
from bigjax.core.steps import (create_train_state, gather_batch, make_train_step,
                          scan_steps)
from configs import mnist

flags.DEFINE_list("variants", ["mlp", "mlp3", "cnn"], "configs/mnist.py variants.")
flags.DEFINE_list("ks", ["1", "10", "50"], "Steps per call to time.")
flags.DEFINE_integer("steps", 2000, "Timed steps per repeat (CNN: a tenth).")


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.random((48_000, 28, 28, 1), np.float32))
  labels = jax.device_put(rng.integers(0, 10, 48_000).astype(np.int32))
  for variant in flags.FLAGS.variants:
    config = mnist.get_config(variant)
    model = build_model(config.model)
    batch_size = config.train.batch_size
    tx = build_optimizer(config.optimizer, config.loss, total_steps=100_000)
    train_step = make_train_step(model, losses.softmax_cross_entropy, tx)
    on_indices = lambda s, x, y, i: train_step(s, gather_batch(x, y, i))  # noqa: E731
    one = jax.jit(on_indices, donate_argnums=0)
    many = jax.jit(scan_steps(on_indices), donate_argnums=0)
    steps = flags.FLAGS.steps // (10 if variant == "cnn" else 1)
    for k in map(int, flags.FLAGS.ks):
      calls = max(steps // k, 1)
      fn = one if k == 1 else many
      shape = (calls, batch_size) if k == 1 else (calls, k, batch_size)
      indices = rng.integers(0, 48_000, shape).astype(np.int32)
      state = create_train_state(init_variables(model, jax.random.PRNGKey(0), images[:1]), tx,
                                 jax.random.PRNGKey(1))
      start = time.perf_counter()
      state, _ = fn(state, images, labels, indices[0])
      jax.block_until_ready(state)
      first = time.perf_counter() - start
      repeats = []
      for _ in range(3):
        start = time.perf_counter()
        for i in range(calls):
          state, _ = fn(state, images, labels, indices[i])
        jax.block_until_ready(state)
        repeats.append((time.perf_counter() - start) / (calls * k))
      print(json.dumps({"model": variant, "batch_size": batch_size, "steps_per_call": k,
                        "us_per_step": round(float(np.median(repeats)) * 1e6, 1),
                        "first_call_s": round(first, 2), "device": jax.default_backend(),
                        "jax": jax.__version__}), flush=True)


if __name__ == "__main__":
  app.run(main)
