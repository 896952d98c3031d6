"""Train-step throughput of each model family at its shipped config, on this machine.

  python -m bench.families [--steps=30]

Random data of the config's image shape, the config's optimizer and batch size, one jitted
step per call (as the driver runs convolutional models). Prints one JSON line per config:
examples/s (median of 3 timed runs of --steps steps) and the first step's time.
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
from bigjax.core.steps import create_train_state, make_train_step
from bigjax.outputs.summary import load_config_file

flags.DEFINE_list("configs", ["configs/fashion_mnist.py:mlp", "configs/fashion_mnist.py:mlp3",
                              "configs/fashion_mnist.py:cnn", "configs/fashion_mnist_resnet.py",
                              "configs/cifar10_resnet.py", "configs/cifar10_vit.py"],
                  "Config files (with :variant) to time.")
flags.DEFINE_integer("steps", 30, "Timed steps per run.")

SHAPES = {"cifar10": (32, 32, 3)}  # else 28x28x1 (MNIST-format data)


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  for spec in flags.FLAGS.configs:
    config = load_config_file(spec)
    shape = SHAPES.get(config.data.name, (28, 28, 1))
    batch_size = config.train.batch_size
    model = build_model(config.model)
    tx = build_optimizer(config.optimizer, config.loss, total_steps=10_000)
    x = jax.device_put(rng.random((batch_size,) + shape, np.float32))
    batch = {"image": x, "label": jax.device_put(rng.integers(0, 10, batch_size).astype(np.int32))}
    state = create_train_state(init_variables(model, jax.random.PRNGKey(0), x[:1]), tx,
                               jax.random.PRNGKey(1))
    step = jax.jit(make_train_step(model, losses.build_loss(config.loss), tx), donate_argnums=0)
    start = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    rates = []
    for _ in range(3):
      start = time.perf_counter()
      for _ in range(flags.FLAGS.steps):
        state, _ = step(state, batch)
      jax.block_until_ready(state)
      rates.append(flags.FLAGS.steps * batch_size / (time.perf_counter() - start))
    print(json.dumps({"config": spec, "model": config.model.name, "image": list(shape),
                      "batch_size": batch_size, "examples_per_second": round(float(np.median(rates))),
                      "first_step_s": round(first, 2), "device": jax.default_backend(),
                      "jax": jax.__version__}), flush=True)


if __name__ == "__main__":
  app.run(main)
