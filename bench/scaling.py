"""Data-parallel scaling table: the same run on 1, 2, 4 and 8 devices, jit and pmap.

  python -m bench.scaling [--config=configs/fashion_mnist.py:mlp] [--steps=300]
      [--fake_devices=8] [--out=bench/results/scaling_cpu2.md]

On a CPU, --fake_devices splits the host into that many XLA devices: the table then checks
correctness (every layout reaches the same loss), not speed, since they share the same
cores. On a machine with several accelerators, pass --fake_devices=0 for real figures.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import tempfile

from absl import app, flags

flags.DEFINE_string("config", "configs/fashion_mnist.py:mlp", "Config file[:variant].")
flags.DEFINE_integer("steps", 300, "Train steps per run.")
flags.DEFINE_integer("fake_devices", 8, "Split a CPU into this many devices (0: real ones).")
flags.DEFINE_string("out", "", "Also write the table (markdown) here.")


def main(argv):
  del argv
  if flags.FLAGS.fake_devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={flags.FLAGS.fake_devices}")
  import jax
  from bigjax import train
  path, _, arg = flags.FLAGS.config.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  rows = []
  counts = [n for n in (1, 2, 4, 8) if n <= jax.device_count()]
  for mode in ("jit", "pmap"):
    for n in counts:
      config = module.get_config(arg or None)
      with config.unlocked():
        config.train.num_steps = flags.FLAGS.steps
        config.train.batch_size = 64
        config.train.steps_per_call = 1
        config.parallel.mode, config.parallel.num_devices = mode, n
        config.eval.every_epoch = ""
        config.eval.at_end = "test"
        config.report.plots = config.report.html = config.report.tensorboard = False
      with tempfile.TemporaryDirectory() as workdir:
        r = train.run(config, workdir)
      rows.append((mode, n, 64 // n, r["steady_examples_per_second"], r["test_loss"],
                   r["test_accuracy"]))
      print(rows[-1], flush=True)
  base = rows[0][4]
  header = (f"Scaling, {flags.FLAGS.config}, {flags.FLAGS.steps} steps of global batch 64; "
            f"{jax.device_count()} x {jax.devices()[0].device_kind}"
            + (f" (fake devices on {os.cpu_count()} cores of one {platform.machine()} CPU:"
               " a correctness check, not a speed figure)" if flags.FLAGS.fake_devices else "")
            + f", jax {jax.__version__}.\n\n")
  table = ("| mode | devices | batch per device | examples/s | test loss | |loss - 1 device| "
           "| test accuracy |\n|---|---|---|---|---|---|---|\n" + "\n".join(
               f"| {m} | {n} | {b} | {eps:,.0f} | {loss:.6f} | {abs(loss - base):.1e} | "
               f"{acc:.4f} |" for m, n, b, eps, loss, acc in rows))
  print(header + table)
  if flags.FLAGS.out:
    with open(flags.FLAGS.out, "w") as f:
      f.write("# " + header + table + "\n")


if __name__ == "__main__":
  app.run(main)
