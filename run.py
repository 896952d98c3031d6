"""bigjax's entry point.

  python run.py --config=configs/mnist.py [--config.optimizer.learning_rate=3e-4] \
      [--workdir=runs/mnist] [--mode=train|eval|summary]
"""

from absl import app, flags
from ml_collections import config_flags

from bigjax import cli

config_flags.DEFINE_config_file(
    "config", None, "A config file: configs/x.py, or configs/x.py:variant.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where outputs go. Default: runs/<config name>[_<variant>].")
flags.DEFINE_enum("mode", "train", ["train", "eval", "summary"],
                  "train: train, evaluate and checkpoint. eval: evaluate a workdir's latest "
                  "checkpoint (uses the workdir's config.json when --config is not given). "
                  "summary: the per-layer depth and parameter report, without training.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.main(flags.FLAGS)


if __name__ == "__main__":
  app.run(main)
