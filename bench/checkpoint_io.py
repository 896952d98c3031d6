"""Checkpoint cost: save and restore time and size for 10M- and 100M-parameter train states
(params + Adam's two moments), with Orbax's synchronous and asynchronous saving; and the
training time a shipped config loses to checkpointing at its default interval.

  python -m bench.checkpoint_io --out=bench/results/checkpoint_io_cpu2.md
"""

import argparse
import os
import platform
import tempfile
import time

import jax
import optax

from bigjax import cli, train
from bigjax.training import checkpoint
from bigjax.core.steps import create_train_state
from configs import fashion_mnist
from bench._report import emit


def make_state(num_params: int):
  """A train state of `num_params` float32 params in 1,000 x 1,000 blocks, with Adam."""
  blocks = num_params // 1_000_000
  params = {f"layer_{i}": {"kernel": jax.random.normal(jax.random.PRNGKey(i), (1000, 1000))}
            for i in range(blocks)}
  state = create_train_state({"params": params}, optax.adam(1e-3), jax.random.PRNGKey(0))
  # Moments as after training (zeros would compress to nothing and flatter the sizes).
  noisy = lambda x: (jax.random.normal(jax.random.PRNGKey(x.size), x.shape, x.dtype)
                     if x.ndim == 2 else x)
  return state.replace(opt_state=jax.tree.map(noisy, state.opt_state))


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
             for f in files)


def time_io(num_params: int, async_save: bool, repeats: int = 3) -> dict:
  state = make_state(num_params)
  jax.block_until_ready(state)
  blocking, total, restore, size = [], [], [], 0
  for r in range(repeats):
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
      manager = checkpoint.make_manager(tmp, max_to_keep=1, async_save=async_save)
      t0 = time.perf_counter()
      checkpoint.save(manager, 1, state, {"epoch": 1})
      t1 = time.perf_counter()
      manager.wait_until_finished()
      t2 = time.perf_counter()
      blocking.append(t1 - t0)
      total.append(t2 - t0)
      size = folder_bytes(checkpoint.checkpoint_dir(tmp))
      t3 = time.perf_counter()
      restored, _ = checkpoint.restore(manager, 1, state)
      jax.block_until_ready(restored)
      restore.append(time.perf_counter() - t3)
      manager.close()
  return {"blocking": min(blocking), "total": min(total), "restore": min(restore),
          "size": size}


def lost_to_checkpointing(variant: str, min_interval: float | None = None) -> dict:
  """Runs a shipped Fashion-MNIST config, timing the training loop's checkpoint calls
  (and, with a throttle, the in-memory copies of a best state kept for a later save)."""
  spent = []
  original = checkpoint.save

  def timed(*args, **kwargs):
    t0 = time.perf_counter()
    original(*args, **kwargs)
    spent.append(time.perf_counter() - t0)

  checkpoint.save = timed
  try:
    config = fashion_mnist.get_config(variant)
    with config.unlocked():
      config.report.plots = config.report.html = config.report.tensorboard = False
      if min_interval is not None:
        config.checkpoint.min_interval_seconds = min_interval
    with tempfile.TemporaryDirectory() as tmp:
      results = train.run(config, tmp)
  finally:
    checkpoint.save = original
  return {"saves": len(spent), "save_seconds": sum(spent),
          "train_seconds": results["train_seconds"]}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="10,100", help="millions of parameters")
  parser.add_argument("--out", default="")
  parser.add_argument("--intervals", default="default,0",
                      help="checkpoint.min_interval_seconds values for the time-lost table")
  args = parser.parse_args()
  cli._quiet_logs()
  lines = [f"Orbax {__import__('orbax.checkpoint').checkpoint.__version__}, jax "
           f"{jax.__version__}; {platform.machine()}, {os.cpu_count()} cores; best of 3. "
           "A checkpoint holds params and Adam's two moments (3 x 4 bytes per parameter).",
           "", "| params | saving | save blocks training | save done | restore | size |",
           "|---|---|---|---|---|---|"]
  for millions in (int(m) for m in args.sizes.split(",") if m):
    for async_save in (False, True):
      r = time_io(millions * 1_000_000, async_save)
      lines.append(f"| {millions}M | {'async' if async_save else 'sync'} | "
                   f"{r['blocking']:.2f} s | {r['total']:.2f} s | {r['restore']:.2f} s | "
                   f"{r['size'] / 1e6:,.0f} MB |")
      print(lines[-1], flush=True)
  lines += ["", "Training time lost to checkpointing (async saves at epoch ends, latest and "
            "best), shipped Fashion-MNIST configs, full data; checkpoint.min_interval_seconds "
            f"default {fashion_mnist.get_config().checkpoint.min_interval_seconds:g} s, 0 = "
            "every epoch:", "",
            "| config | min interval | saves | time in save calls | train time | lost |",
            "|---|---|---|---|---|---|"]
  for variant in ("mlp", "cnn"):
    for interval in args.intervals.split(","):
      r = lost_to_checkpointing(variant, None if interval == "default" else float(interval))
      lines.append(f"| fashion_mnist.py:{variant} | {interval} | {r['saves']} | "
                   f"{r['save_seconds']:.2f} s | {r['train_seconds']:.1f} s | "
                   f"{100 * r['save_seconds'] / r['train_seconds']:.1f}% |")
      print(lines[-1], flush=True)
  text = "\n".join(lines) + "\n"
  emit(text, args.out)


if __name__ == "__main__":
  main()
