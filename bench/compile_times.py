"""First-step compile time of every shipped config.

  python bench/compile_times.py [--out=bench/results/compile_times_cpu2.md] [--only=SPEC,...]

Each config runs 3 steps through the driver (train.run) in a fresh process, so the figure
includes XLA's start-up as a user's first run does, twice: first with an empty persistent
compilation cache (cold: what a first run costs), then in a second fresh process with the
cache the first one filled (warm: what run.py's cache saves on a second run of a config).
Reported: the train step's compile time (what the driver logs as "train step compiled in"
or "loaded from the compilation cache in"; tracing and lowering included), and in brackets
the model's initialisation before it (results.json's init_seconds, mostly compilation). That nothing compiles after the first
epoch is a test (tests/test_train.py), not a benchmark. Configs whose data is not offline
(TFDS mnist, cifar10, cats_vs_dogs) run on TFDS mock data of the same shapes;
configs/lm_small.py and lm_1b.py are left out: they are for accelerators (lm_small's first
steps took over 16 GB of memory on this CPU).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

from _report import emit  # bench/ is the script's folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (config, whether it needs TFDS mock data)
CONFIGS = [
    ("mnist.py:mlp", True), ("mnist.py:cnn", True),
    ("fashion_mnist.py:mlp", False), ("fashion_mnist.py:mlp2", False),
    ("fashion_mnist.py:mlp3", False), ("fashion_mnist.py:cnn", False),
    ("fashion_mnist_resnet.py", False), ("fashion_mnist_fewlabels.py", False),
    ("fashion_mnist_pretrain.py", False),
    ("digits.py:mlp", False), ("digits.py:cnn", False), ("diabetes.py", False),
    ("cifar10_resnet.py", True), ("cifar10_vit.py", True), ("cats_vs_dogs.py", True),
    ("lm_tiny.py", False),
]

_CHILD = r"""
import contextlib, json, sys, tempfile
sys.path.insert(0, {root!r})
from bigjax import cli, compilation, summary, train
cli._quiet_logs()
compilation.enable_persistent_cache({cache!r})
config = summary.load_config_file({spec!r})
with config.unlocked():
  config.train.num_steps = 3
  config.report.plots = config.report.html = False
context = contextlib.nullcontext()
if {mock!r}:
  import tensorflow_datasets as tfds
  context = tfds.testing.mock_data(num_examples=4 * config.train.batch_size)
with context, tempfile.TemporaryDirectory() as tmp:
  results = train.run(config, tmp)
print(json.dumps({{"compile_seconds": results["compile_seconds"],
                  "init_seconds": results["init_seconds"],
                  "params": results["num_params"]}}))
"""


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=None)
  parser.add_argument("--only", default="")
  args = parser.parse_args()
  only = {s for s in args.only.split(",") if s}
  rows = []
  for spec, mock in CONFIGS:
    if only and spec not in only:
      continue
    times = []
    with tempfile.TemporaryDirectory() as cache:
      for _ in ("cold", "warm"):
        code = _CHILD.format(root=ROOT, spec=os.path.join("configs", spec), mock=mock,
                             cache=cache)
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True)
        if proc.returncode != 0:
          times.append(f"failed: {proc.stderr.strip().splitlines()[-1][:120]}")
          break
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        times.append(f"{r['compile_seconds']:.2f} s (init {r['init_seconds']:.2f} s)")
    params = f"{r['params']:,}" if proc.returncode == 0 else ""
    rows.append(f"| {spec}{' (TFDS mock data)' if mock else ''} | {params} | "
                + " | ".join(times) + " |")
    print(rows[-1], flush=True)
  table = "\n".join([
      f"{platform.machine()}, {os.cpu_count()} cores; the train step's first compile, in a "
      "fresh process, with an empty compilation cache (cold) and with the one the cold run "
      "filled (warm) (bench/compile_times.py).", "",
      "| config | parameters | cold: train step (model init) | warm: train step (model init) |",
      "|---|---|---|---|", *rows]) + "\n"
  emit(table, args.out)


if __name__ == "__main__":
  main()
