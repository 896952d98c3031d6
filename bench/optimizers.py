"""Optimizers x schedules on Fashion-MNIST: the lessons' 784-256-128-64-10 MLP, 10 epochs.

  python -m bench.optimizers [--epochs=10] [--seeds=0] [--validation_fraction=0.2]
                             [--out=bench/results/optimizers_cpu2]

Each optimizer runs at a learning rate sensible for it (batch 64), with a constant rate and
with a cosine decay to 0 over the run. Writes <out>.jsonl (one line per run) and <out>.md
(the table). Train seconds include compilation and exclude evaluation.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

from bigjax import cli, train
from configs import fashion_mnist

flags.DEFINE_integer("epochs", 10, "Training epochs per run.")
flags.DEFINE_list("seeds", ["0"], "Seeds (init and data order) to run each setting with.")
flags.DEFINE_float("validation_fraction", 0.2, "Fraction of train held out for validation.")
flags.DEFINE_list("only", [], "Run only these optimizer names.")
flags.DEFINE_list("schedules", ["constant", "cosine"], "Schedules to run each optimizer with.")
flags.DEFINE_list("lr_scales", ["1"], "Multiply each optimizer's rate by these (a sweep).")
flags.DEFINE_bool("table_only", False, "Only rewrite <out>.md from an existing <out>.jsonl.")
flags.DEFINE_string("out", "bench/results/optimizers_cpu2", "Output path without extension.")

# name -> optimizer config overrides (batch 64). Rates chosen by validation accuracy in a
# sweep over x1/3, x1, x3 (bench/results/optimizers_sweep_cpu2.md).
OPTIMIZERS = {
    "sgd": dict(name="sgd", learning_rate=0.3),
    "momentum": dict(name="momentum", learning_rate=0.02, momentum=0.9),
    "adam": dict(name="adam", learning_rate=1e-3),
    "adamw": dict(name="adamw", learning_rate=1e-3, weight_decay=0.05),
    "rmsprop": dict(name="rmsprop", learning_rate=1e-3),
}

def _config(optimizer: dict, schedule: str, seed: int):
  config = fashion_mnist.get_config("mlp3")
  with config.unlocked():
    config.seed = seed
    config.train.num_epochs = flags.FLAGS.epochs
    config.data.validation_fraction = flags.FLAGS.validation_fraction
    config.optimizer.update(optimizer)
    config.optimizer.schedule.name = schedule
  return config


def main(argv):
  del argv
  cli._quiet_logs()
  if flags.FLAGS.table_only:
    with open(flags.FLAGS.out + ".jsonl") as f:
      rows = [json.loads(line) for line in f]
    with open(flags.FLAGS.out + ".md", "w") as md:
      md.write(_summary(rows) + "\n" + _table(rows))
    return
  rows = []
  names = flags.FLAGS.only or list(OPTIMIZERS)
  os.makedirs(os.path.dirname(flags.FLAGS.out) or ".", exist_ok=True)
  with open(flags.FLAGS.out + ".jsonl", "w") as out:
    for name in names:
      for schedule in flags.FLAGS.schedules:
        for scale, seed in itertools.product(map(float, flags.FLAGS.lr_scales),
                                             map(int, flags.FLAGS.seeds)):
          optimizer = dict(OPTIMIZERS[name],
                           learning_rate=OPTIMIZERS[name]["learning_rate"] * scale)
          with tempfile.TemporaryDirectory() as tmp:
            try:
              results = train.run(_config(optimizer, schedule, seed), tmp)
            except FloatingPointError as e:  # diverged: a result of the sweep, not a crash
              print(e, file=sys.stderr)
              results = {"train_seconds": float("nan"), "test_accuracy": float("nan"),
                         "environment": {"device": "diverged"}}
          row = {"optimizer": name, **optimizer, "schedule": schedule, "seed": seed,
                 "epochs": flags.FLAGS.epochs,
                 "validation_fraction": flags.FLAGS.validation_fraction,
                 "train_seconds": round(results["train_seconds"], 2),
                 "validation_accuracy": results.get("validation_accuracy"),
                 "test_accuracy": results["test_accuracy"],
                 "device": results["environment"]["device"]}
          row["optimizer"] = name
          print(json.dumps(row), flush=True)
          out.write(json.dumps(row) + "\n")
          rows.append(row)
  with open(flags.FLAGS.out + ".md", "w") as md:
    md.write(_summary(rows) + "\n" + _table(rows))
  print(_summary(rows))


def _summary(rows) -> str:
  """Mean (min-max) over seeds per optimizer and schedule."""
  groups: dict = {}
  for r in rows:
    groups.setdefault((r["optimizer"], r["learning_rate"], r["schedule"]), []).append(r)
  lines = [f"Fashion-MNIST, 784-256-128-64-10 MLP, batch 64, {rows[0]['epochs']} epochs, "
           f"{rows[0]['validation_fraction']:.0%} of train held out; device "
           f"{rows[0]['device']}; seeds {sorted({r['seed'] for r in rows})}.", "",
           "| optimizer | learning rate | schedule | test accuracy, mean (min-max) | "
           "train s, mean |", "|---|---|---|---|---|"]
  for (name, lr, schedule), group in groups.items():
    acc = np.array([r["test_accuracy"] for r in group])
    secs = np.array([r["train_seconds"] for r in group])
    if np.isnan(acc).any():
      lines.append(f"| {name} | {lr:.3g} | {schedule} | diverged | - |")
      continue
    lines.append(f"| {name} | {lr:.3g} | {schedule} | {acc.mean():.4f} ({acc.min():.4f}-"
                 f"{acc.max():.4f}) | {secs.mean():.1f} |")
  return "\n".join(lines) + "\n"


def _table(rows) -> str:
  lines = ["| optimizer | learning rate | schedule | seed | validation accuracy | "
           "test accuracy | train s |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    validation = r["validation_accuracy"]
    if r["test_accuracy"] != r["test_accuracy"]:  # NaN
      lines.append(f"| {r['optimizer']} | {r['learning_rate']:.3g} | {r['schedule']} | "
                   f"{r['seed']} | diverged | diverged | - |")
      continue
    lines.append(f"| {r['optimizer']} | {r['learning_rate']:.3g} | {r['schedule']} | "
                 f"{r['seed']} | {'-' if validation is None else f'{validation:.4f}'} | "
                 f"{r['test_accuracy']:.4f} | {r['train_seconds']:.1f} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)
