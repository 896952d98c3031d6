"""Input pipeline throughput and its cost in the CNN's train step (Fashion-MNIST).

  python -m bench.input_pipeline [--batches=200] [--augment=crop_padding=2,flip_lr=1,...]
      [--out=bench/results/input_pipeline_cpu2.md]

1. The pipeline alone, in examples/s: each batch gathered and augmented (the config's
   augmentation, on the device) with no model, for the device-resident path (split in
   device memory, batches gathered by index there) and the host path (batches read from
   the host split and copied to the device by the prefetch thread), with and without
   augmentation.
2. The CNN's train step (configs/fashion_mnist.py:cnn, batch 64), time per step:
   a) on one batch already on the device (no input pipeline at all);
   b) the driver's device path: gather by index + augmentation + step in one jitted call;
   c) the host path: prefetched batches + augmentation + step.
   The overhead of b) and c) over a) is the input pipeline's cost.
Each timing is the median of 5 repeats of `--batches` batches, after a warm-up; the three
step variants are interleaved in each repeat.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from bigjax.training.programs import Programs
from bigjax.data import augment as augment_lib, feed, pipeline
from bigjax.core.steps import gather_batch
from configs import fashion_mnist

flags.DEFINE_integer("batches", 200, "Timed batches per repeat.")
flags.DEFINE_string("augment", "crop_padding=2,flip_lr=1,rotate_degrees=10,cutout_size=6",
                    "The augmentation timed (config.data.augment keys).")
flags.DEFINE_string("out", "", "Also write the table (markdown) here.")


def _options(text: str) -> dict:
  out = {}
  for item in filter(None, text.split(",")):
    key, _, value = item.partition("=")
    default = augment_lib.DEFAULTS[key]
    out[key] = type(default)(float(value)) if not isinstance(default, bool) else value != "0"
  return out


REPEATS = 5


def _median_seconds(fn, repeats: int = REPEATS) -> float:
  fn()  # warm-up (compilation, caches)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  n = flags.FLAGS.batches
  options = _options(flags.FLAGS.augment)
  rows = []
  setups = {}
  for placement in ("device", "host"):
    config = fashion_mnist.get_config("cnn")
    with config.unlocked():
      config.data.placement = placement
      config.data.augment.update(options)
    setups[placement] = Programs(config)
  batch_size = 64
  setup = setups["device"]
  order = pipeline.epoch_permutation(0, 0, len(setup.data.train))
  augment = augment_lib.make_augmenter(options, 10)
  key = jax.random.PRNGKey(0)

  # ------------------------------------------------------------- 1. pipeline alone
  for augmented in (False, True):
    aug = (lambda b, k: augment(b, k)) if augmented else (lambda b, k: b)
    dev_images, dev_labels = setups["device"].splits["train"]
    gather_aug = jax.jit(lambda x, y, i, k: aug(gather_batch(x, y, i), k)["image"].sum())
    on_device = jax.jit(lambda b, k: aug(b, k)["image"].sum())

    def device_path():
      out = [gather_aug(dev_images, dev_labels, order[i * batch_size:(i + 1) * batch_size],
                        jax.random.fold_in(key, i)) for i in range(n)]
      jax.block_until_ready(out)

    host_images, host_labels = setups["host"].splits["train"]

    def host_path():
      batches = feed.Prefetch(feed.host_batches(host_images, host_labels, order, batch_size,
                                                0, n))
      out = [on_device(b, jax.random.fold_in(key, i)) for i, b in enumerate(batches)]
      jax.block_until_ready(out)

    for name, fn in (("device-resident", device_path), ("host + prefetch", host_path)):
      seconds = _median_seconds(fn)
      rows.append(("pipeline alone", name, "yes" if augmented else "no",
                   f"{n * batch_size / seconds:,.0f} examples/s", f"{seconds / n * 1e6:,.0f}"))
      print(rows[-1], flush=True)

  # ---------------------------------------------------- 2. in the CNN's train step
  state = setup.initial_state
  fixed = jax.device_put({"image": np.asarray(setup.data.train.inputs[:batch_size]),
                          "label": setup.data.train.targets[:batch_size]})
  plain = Programs(fashion_mnist.get_config("cnn"))  # no augmentation: the bare step

  def bare():
    nonlocal state
    for _ in range(n):
      state, _ = plain.train_on_batch(state, fixed)
    jax.block_until_ready(state)

  def device_step():
    nonlocal state
    for i in range(n):
      state, _ = setup.train_on_indices(state, dev_images, dev_labels,
                                        order[i * batch_size:(i + 1) * batch_size])
    jax.block_until_ready(state)

  host_setup = setups["host"]

  def host_step():
    nonlocal state
    batches = feed.Prefetch(feed.host_batches(host_images, host_labels, order, batch_size,
                                              0, n))
    for batch in batches:
      state, _ = host_setup.train_on_batch(state, batch)
    jax.block_until_ready(state)

  variants = (("one fixed batch on the device (no pipeline)", bare),
              ("device path: gather + augment + step", device_step),
              ("host path: prefetch + augment + step", host_step))
  samples: dict = {name: [] for name, _ in variants}
  for name, fn in variants:
    fn()  # warm-up
  for _ in range(REPEATS):  # interleaved, so drift in the machine's speed hits all alike
    for name, fn in variants:
      start = time.perf_counter()
      fn()
      samples[name].append(time.perf_counter() - start)
  timings = {name: statistics.median(times) / n for name, times in samples.items()}
  base = timings["one fixed batch on the device (no pipeline)"]
  for name, seconds in timings.items():
    rows.append(("CNN train step", name, "yes" if "path" in name else "no",
                 f"{seconds * 1e3:.2f} ms/step", f"{(seconds / base - 1) * 100:+.1f}%"))
    print(rows[-1], flush=True)

  header = (f"Input pipeline, Fashion-MNIST 28x28, batch {batch_size}, augmentation "
            f"`{augment_lib.describe(options)}`; {jax.device_count()} x "
            f"{jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} cores), "
            f"jax {jax.__version__}. Median of {REPEATS} x {n} batches.\n\n")
  table = ("| what | path | augmented | throughput / time | us per batch or overhead |\n"
           "|---|---|---|---|---|\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows))
  print(header + table)
  if flags.FLAGS.out:
    with open(flags.FLAGS.out, "w") as f:
      f.write("# " + header + table + "\n")


if __name__ == "__main__":
  app.run(main)
