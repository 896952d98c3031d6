"""bigjax's shipped configs next to the plain PyTorch reference, in one run, as a markdown table.

  python -m bench.compare [--workloads=mlp,mlp3,cnn] [--seeds=0,1,2] [--warm]
                          [--out=bench/results/x.md]

Each (workload, seed) runs bench/run_config.py (bigjax via run.py's driver, configs/
fashion_mnist.py:<workload>) and bench/torch_reference.py in fresh processes, one after the
other, so they do not share the 2 cores. Needs Debian's Fashion-MNIST and PyTorch.
bigjax's figures are a first run's (no compilation cache). With --warm, bigjax also runs a
second time with the persistent compilation cache its first run filled (run.py's default),
and the table adds that second run's time and speed-up.
Train time is each side's own figure: bigjax's includes its train step's whole compile
(even the part that ran alongside the model's init) and PyTorch's has no compile; the
last two columns time each whole process, what a user waits from the command to its end:
imports, data, model, training and evaluation on both sides, and on bigjax's also its
checkpoints and report.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _json_line(cmd):
  """The command's last stdout line, parsed, with process_seconds: its whole wall time."""
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return dict(json.loads(proc.stdout.strip().splitlines()[-1]),
              process_seconds=round(time.perf_counter() - start, 3))


def run_pair(workload, seed, warm=False):
  """(bigjax's first run, PyTorch's run, bigjax's second run with a warm cache or None)."""
  cmd = [sys.executable, "-m", "bench.run_config", f"--config=configs/fashion_mnist.py:{workload}",
         f"--config.seed={seed}"]
  with tempfile.TemporaryDirectory() as cache:
    ours = _json_line(cmd + ([f"--compilation_cache={cache}"] if warm else []))
    second = _json_line(cmd + [f"--compilation_cache={cache}"]) if warm else None
  ref = _json_line([sys.executable, "-m", "bench.torch_reference", f"--model={workload}",
                    f"--seed={seed}"])
  return ours, ref, second


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workloads", default="mlp,mlp3,cnn")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--out", default=None)
  parser.add_argument("--warm", action="store_true")
  args = parser.parse_args()
  rows, raw = [], []
  for workload in args.workloads.split(","):
    pairs = [run_pair(workload, int(s), args.warm) for s in args.seeds.split(",")]
    raw += [p for pair in pairs for p in pair if p is not None]
    mean = lambda side, key: statistics.mean(p[side][key] for p in pairs)
    ours_t, ref_t = mean(0, "train_seconds"), mean(1, "train_seconds")
    second = ""
    if args.warm:
      warm_t = mean(2, "train_seconds")
      second = (f"{warm_t:.1f} s (compile {mean(2, 'compile_seconds'):.2f} s) | "
                f"{ref_t / warm_t:.2f}x | ")
    rows.append(
        f"| {workload} ({pairs[0][0]['num_params']:,} params) | "
        f"{ours_t:.1f} s (compile {mean(0, 'compile_seconds'):.2f} s) | {ref_t:.1f} s | "
        f"{ref_t / ours_t:.2f}x | {second}{mean(0, 'steady_examples_per_second'):,.0f} | "
        f"{mean(1, 'steady_examples_per_second'):,.0f} | "
        + ", ".join(f"{p[0]['test_accuracy']:.4f}" for p in pairs) + " | "
        + ", ".join(f"{p[1]['test_accuracy']:.4f}" for p in pairs) + " | "
        f"{mean(0, 'process_seconds'):.1f} s | {mean(1, 'process_seconds'):.1f} s |")
  table = "\n".join([
      f"Seeds {args.seeds}; {platform.machine()}, {os.cpu_count()} cores; "
      f"jax {raw[0]['jax']}, torch {raw[1]['torch']}.",
      "",
      "| workload | bigjax train time | PyTorch train time | speed-up | "
      + ("bigjax second run (compilation cache) | its speed-up | " if args.warm else "")
      + "bigjax ex/s | PyTorch ex/s | bigjax test acc | PyTorch test acc | "
      "whole process, bigjax first run | whole process, PyTorch |",
      "|---|---|---|---|" + ("---|---|" if args.warm else "") + "---|---|---|---|---|---|",
      *rows])
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")
    with open(os.path.splitext(args.out)[0] + ".jsonl", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in raw)


if __name__ == "__main__":
  main()
