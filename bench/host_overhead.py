"""How busy the driver keeps the device: its steady step time against pure compute time.

  python -m bench.host_overhead [--workloads=mlp,mlp3,cnn] [--out=bench/results/x.md]

For each configs/fashion_mnist.py workload: the driver's steady-state time per step
(train.run: progress-rate clock, compilation and evaluation excluded, per-step host work,
metrics fetched at log time, checkpoints included), and the same compiled train function
called back to back on fixed indices with nothing else in the loop (pure compute plus
dispatch). busy = pure / driver: the fraction of the loop's time the device computes.
"""

import argparse
import os
import platform
import tempfile
import time

import jax

from bigjax import cli, data as data_lib, train
from bigjax.training.programs import Programs
from configs import fashion_mnist
from bench._report import emit


def pure_ms_per_step(config, repeats: int = 5, calls: int = 100) -> float:
  setup = Programs(config)
  state = setup.to_run_state(setup.initial_state)
  images, labels = setup.splits["train"]
  k, b = setup.steps_per_call, config.train.batch_size
  order = data_lib.epoch_permutation(config.seed, 0, labels.shape[0])
  fn = setup.train_many_on_indices if k > 1 else setup.train_on_indices
  indices = order[:k * b].reshape(k, b) if k > 1 else order[:b]
  state, _ = fn(state, images, labels, indices)
  jax.block_until_ready(state)
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(calls):
      state, _ = fn(state, images, labels, indices)
    jax.block_until_ready(state)
    best = min(best, (time.perf_counter() - t) / (calls * k) * 1e3)
  return best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workloads", default="mlp,mlp3,cnn")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  cli._quiet_logs()
  rows = []
  for workload in args.workloads.split(","):
    config = fashion_mnist.get_config(workload)
    with config.unlocked():
      config.report.plots = config.report.html = False
    with tempfile.TemporaryDirectory() as tmp:
      results = train.run(config, tmp)
    driver = config.train.batch_size / results["steady_examples_per_second"] * 1e3
    pure = pure_ms_per_step(config)
    rows.append(f"| {workload} | {config.train.batch_size} | {config.train.steps_per_call} | "
                f"{driver:.3f} ms | {pure:.3f} ms | {min(pure / driver, 1.0):.0%} |")
    print(rows[-1], flush=True)
  table = "\n".join([
      f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}; Fashion-MNIST; "
      "driver: train.run's steady rate; pure: the same compiled function back to back on "
      "fixed indices (best of 5 x 100 calls).", "",
      "| workload | batch | steps per call | driver step | pure compute step | busy |",
      "|---|---|---|---|---|---|", *rows]) + "\n"
  emit(table, args.out)


if __name__ == "__main__":
  main()
