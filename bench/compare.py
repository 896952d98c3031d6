"""bigjax's shipped configs next to the plain PyTorch reference, in one run, as a markdown table.

  python bench/compare.py [--workloads=mlp,mlp3,cnn] [--seeds=0,1,2] [--out=bench/results/x.md]

Each (workload, seed) runs bench/run_config.py (bigjax via run.py's driver, configs/
fashion_mnist.py:<workload>) and bench/torch_reference.py in fresh processes, one after the
other, so they do not share the 2 cores. Needs Debian's Fashion-MNIST and PyTorch.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _json_line(cmd):
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def run_pair(workload, seed):
  ours = _json_line([sys.executable, "bench/run_config.py",
                     f"--config=configs/fashion_mnist.py:{workload}", f"--config.seed={seed}"])
  ref = _json_line([sys.executable, "bench/torch_reference.py", f"--model={workload}",
                    f"--seed={seed}"])
  return ours, ref


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workloads", default="mlp,mlp3,cnn")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  rows, raw = [], []
  for workload in args.workloads.split(","):
    pairs = [run_pair(workload, int(s)) for s in args.seeds.split(",")]
    raw += [p for pair in pairs for p in pair]
    mean = lambda side, key: statistics.mean(p[side][key] for p in pairs)
    ours_t, ref_t = mean(0, "train_seconds"), mean(1, "train_seconds")
    rows.append(
        f"| {workload} ({pairs[0][0]['num_params']:,} params) | "
        f"{ours_t:.1f} s (compile {mean(0, 'compile_seconds'):.2f} s) | {ref_t:.1f} s | "
        f"{ref_t / ours_t:.2f}x | {mean(0, 'steady_examples_per_second'):,.0f} | "
        f"{mean(1, 'steady_examples_per_second'):,.0f} | "
        + ", ".join(f"{p[0]['test_accuracy']:.4f}" for p in pairs) + " | "
        + ", ".join(f"{p[1]['test_accuracy']:.4f}" for p in pairs) + " |")
  table = "\n".join([
      f"Seeds {args.seeds}; {platform.machine()}, {os.cpu_count()} cores; "
      f"jax {raw[0]['jax']}, torch {raw[1]['torch']}.",
      "",
      "| workload | bigjax train time | PyTorch train time | speed-up | bigjax ex/s | PyTorch ex/s "
      "| bigjax test acc | PyTorch test acc |",
      "|---|---|---|---|---|---|---|---|", *rows])
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")
    with open(os.path.splitext(args.out)[0] + ".jsonl", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in raw)


if __name__ == "__main__":
  main()
