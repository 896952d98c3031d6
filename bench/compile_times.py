"""First-step compile time of every shipped config.

  python -m bench.compile_times [--out=bench/results/compile_times_cpu2.md] [--only=SPEC,...]
                                [--repeats=3] [--baseline=OTHER_CHECKOUT]

Each config runs 3 steps through the driver (train.run) in a fresh process, so the figure
includes XLA's start-up as a user's first run does, twice: first with an empty persistent
compilation cache (cold: what a first run costs), then in a second fresh process with the
cache the first one filled (warm: what run.py's cache saves on a second run of a config).
Timings on a shared CPU swing by 20% and more between runs and between hours, so each
figure is the median of --repeats fresh processes, and --baseline=DIR times another
checkout (a `git worktree` of an older commit) interleaved with this one, for a comparison
that both sides measured on the machine in the same state.
Reported: the train step's compile time (what the driver logs as "train step compiled in"
or "loaded from the compilation cache in"; tracing and lowering included), after it the
model's initialisation (results.json's init_seconds, mostly compilation), and when the
train step was ready, counted from the start of train.run (startup_seconds: data, init,
optimizer state, config checks and the compile: what a user waits before the first
step). The train step compiles in a thread alongside the model's init, so both take longer
than either alone on 2 cores; ready is what the overlap shortens. That nothing compiles after the first epoch is a test (tests/end_to_end/test_train.py), not a
benchmark. Configs
whose data is not offline (TFDS mnist, cifar10, cats_vs_dogs) run on TFDS mock data of the
same shapes;
configs/lm_small.py and lm_1b.py are left out: they are for accelerators (lm_small's first
steps took over 16 GB of memory on this CPU).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from bench._report import emit

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
from bigjax import cli, train
from bigjax.outputs import summary
from bigjax.training import compilation
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
                  "startup_seconds": results.get("startup_seconds"),
                  "params": results["num_params"]}}))
"""


def _measure(spec: str, mock: bool, cache: str, root: str = ROOT) -> dict:
  """One fresh process's results (compile_seconds, init_seconds, params) with the bigjax
  checkout at `root`, or {"error"}."""
  code = _CHILD.format(root=root, spec=os.path.join("configs", spec), mock=mock, cache=cache)
  proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
  if proc.returncode != 0:
    return {"error": proc.stderr.strip().splitlines()[-1][:120]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(results: list[dict]) -> str:
  """Median compile (init) over the repeats, with the range when there are several."""
  compile_s = sorted(r["compile_seconds"] for r in results)
  init_s = statistics.median(r["init_seconds"] for r in results)
  cell = f"{statistics.median(compile_s):.2f} s"
  if len(compile_s) > 1:
    cell += f" ({compile_s[0]:.2f}-{compile_s[-1]:.2f})"
  cell += f", init {init_s:.2f} s"
  startup = [r["startup_seconds"] for r in results if r.get("startup_seconds") is not None]
  if startup:  # (a baseline from before the driver reported it has none)
    cell += f", ready {statistics.median(startup):.2f} s"
  return cell


def _time_config(spec: str, mock: bool, repeats: int, baseline: str) -> dict | str:
  """{kind: [results]} over `repeats` rounds (baseline, cold, warm), or the first failure."""
  groups = [[("cold", ROOT), ("warm", ROOT)]]  # warm reuses the cache its cold run filled
  if baseline:
    groups.insert(0, [("baseline", os.path.abspath(baseline))])
  runs = {kind: [] for group in groups for kind, _ in group}
  for _ in range(repeats):
    for group in groups:
      with tempfile.TemporaryDirectory() as cache:
        for kind, root in group:
          r = _measure(spec, mock, cache, root)
          if "error" in r:
            return f"{kind}: {r['error']}"
          runs[kind].append(r)
  return runs


def _describe(checkout: str) -> str:
  """"commit abc1234" for a git checkout, else its path."""
  proc = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True)
  return f"commit {proc.stdout.strip()}" if proc.returncode == 0 else checkout


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=None)
  parser.add_argument("--only", default="")
  parser.add_argument("--repeats", type=int, default=3,
                      help="cold/warm pairs per config, each with a fresh cache; the table "
                           "gives the median and the range (one shared CPU's timings swing "
                           "by +-20%% between runs)")
  parser.add_argument("--baseline", default="",
                      help="another bigjax checkout (e.g. a git worktree of an older commit): "
                           "its cold compile is timed too, interleaved with this one's, so "
                           "that both see the machine in the same state")
  args = parser.parse_args()
  if args.baseline and not os.path.isdir(os.path.join(args.baseline, "bigjax")):
    parser.error(f"--baseline={args.baseline} is not a bigjax checkout (no bigjax/ in it); "
                 "make one with: git worktree add /tmp/baseline COMMIT")
  only = {s for s in args.only.split(",") if s}
  kinds = ("baseline", "cold", "warm") if args.baseline else ("cold", "warm")
  rows = []
  for spec, mock in CONFIGS:
    if only and spec not in only:
      continue
    runs = _time_config(spec, mock, args.repeats, args.baseline)
    failed = isinstance(runs, str)
    cells = [f"failed: {runs}"] if failed else [_cell(runs[kind]) for kind in kinds]
    params = "" if failed else f"{runs['cold'][0]['params']:,}"
    rows.append(f"| {spec}{' (TFDS mock data)' if mock else ''} | {params} | "
                + " | ".join(cells) + " |")
    print(rows[-1], flush=True)
  table = "\n".join([
      f"{platform.machine()}, {os.cpu_count()} cores; the train step's first compile, in a "
      "fresh process, with an empty compilation cache (cold) and with the one the cold run "
      f"filled (warm); median (range) of {args.repeats} such pairs (bench/compile_times.py); "
      "init: the model's initialisation; ready: the train step ready to run, counted from "
      "the start of train.run"
      + (f"; baseline: bigjax at {_describe(args.baseline)}, cold, interleaved with them."
         if args.baseline else "."), "",
      "| config | parameters | " + " | ".join(
          f"{kind}: train step, init, ready" for kind in kinds) + " |",
      "|---" * (2 + len(kinds)) + "|", *rows]) + "\n"
  emit(table, args.out)


if __name__ == "__main__":
  main()
