"""Runs any bigjax config and prints one JSON line of figures.

  python -m bench.run_config --config=configs/fashion_mnist.py:cnn [--config.seed=1 ...]

Prints: train seconds (compilation included, evaluation excluded), first-step compile
seconds, steady-state examples/s, test accuracy, and the environment.
"""

import json
import os
import tempfile

from absl import app, flags
from ml_collections import config_flags

from bigjax import cli, train
from bigjax.training import compilation

config_flags.DEFINE_config_file("config", None, "Config file, as for run.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "Keep the run here (default: a temporary folder).")
flags.DEFINE_string("compilation_cache", "", "As run.py's, but off by default, so a figure "
                    "is a first run's unless asked otherwise.")


def main(argv):
  del argv
  cli._quiet_logs()
  compilation.enable_persistent_cache(flags.FLAGS.compilation_cache)
  config_name = flags.FLAGS["config"].config_filename
  with tempfile.TemporaryDirectory() as tmp:
    results = train.run(flags.FLAGS.config, flags.FLAGS.workdir or os.path.join(tmp, "run"))
  print(json.dumps({
      "config": config_name, "seed": flags.FLAGS.config.seed,
      "train_seconds": round(results["train_seconds"], 3),
      "compile_seconds": round(results["compile_seconds"], 3),
      "steady_examples_per_second": round(results["steady_examples_per_second"] or 0),
      "test_accuracy": results["test_accuracy"], "num_params": results["num_params"],
      "device": results["environment"]["device"], "jax": results["environment"]["jax"],
  }), flush=True)


if __name__ == "__main__":
  app.run(main)
