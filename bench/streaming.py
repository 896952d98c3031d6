"""The streaming input path (records folders read by grain workers): memory, decode speed,
and whether training waits on it. Each part appends its table to --out.

  python -m bench.make_records --synthetic=244000 --shape=64,64,3 --out=/tmp/rec3g
  python -m bench.make_records --synthetic=2440000 --shape=64,64,3 --out=/tmp/rec30g
  python -m bench.streaming --part=memory --folders=/tmp/rec3g,/tmp/rec30g

  python -m bench.make_records --synthetic=6144 --shape=224,224,3 --encode=jpeg --out=/tmp/jpeg224
  python -m bench.streaming --part=decode --folders=/tmp/jpeg224

  python -m bench.make_records --config=configs/fashion_mnist.py --out=/tmp/fmnist_records
  python -m bench.streaming --part=wait --folders=/tmp/fmnist_records

  python -m bench.streaming --part=text --corpus_gb=0.2,2 --steps=300

memory: one epoch of a small MLP (64 hidden units, batch 512, 2 workers) trained by run.py on
  each folder (placement auto: host, the splits being larger than config.data.device_limit_gb),
  with the resident memory (RSS) of the run and its worker processes sampled every 0.2 s from
  /proc: the peak of their sum, and of the main process alone.
decode: examples/s reading and decoding the folder's train split in batches of 128, in the
  calling thread (0 workers) and in 1 and 2 worker processes, then the random crop (padding
  16) and flip of the same batches as the driver does them, on the device, jitted; and the
  cost of a batch's trip from a worker: grain's shared memory (what bigjax uses) against a pipe.
text: a language model's corpus larger than the in-memory path can hold, as a tokens folder
  (--corpus_gb: fortunes repeated, each copy's lines shuffled, written to --tmp): the time
  and peak memory of bench.make_records writing it (byte tokens), then of configs/lm_tiny.py
  training --steps steps from it (source tokens, placement auto) and testing on 4,096
  windows; and, for the smallest corpus, of the text source reading the same corpus whole.
wait: the CNN (configs/fashion_mnist.py:cnn) and ResNet-20 (configs/fashion_mnist_resnet.py)
  trained --steps steps from the records with 1 worker: the seconds training waited on input,
  per step, against the step time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import emit  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINE = f"{platform.machine()}, {os.cpu_count()} cores"


def _tree_rss(pid: int) -> tuple[int, int]:
  """(RSS of pid and all its descendants, RSS of pid alone), bytes, from /proc."""
  children: dict[int, list[int]] = {}
  rss: dict[int, int] = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    children.setdefault(int(fields[1]), []).append(int(entry))
    rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
  total, stack = 0, [pid]
  while stack:
    p = stack.pop()
    total += rss.get(p, 0)
    stack += children.get(p, [])
  return total, rss.get(pid, 0)


def _peak_rss(args: list[str]) -> tuple[float, float, str]:
  """(seconds, peak RSS of the process tree in bytes, stderr) of a command run in the repo."""
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  peak, start = 0, time.perf_counter()
  while proc.poll() is None:
    peak = max(peak, _tree_rss(proc.pid)[0])
    time.sleep(0.2)
  seconds = time.perf_counter() - start
  out, err = proc.communicate()
  if proc.returncode:
    raise SystemExit(f"{' '.join(args[:4])} failed:\n{err[-3000:]}")
  return seconds, peak, out + err


def _corpus(path: str, size: int) -> None:
  """Fortunes repeated to `size` bytes, each copy's lines in another order."""
  from bigjax.data import text
  lines = text.read_utf8(text.text_files("/usr/share/games/fortunes")).splitlines(True)
  rng, written = np.random.default_rng(0), 0
  with open(path, "wb") as f:
    while written < size:
      chunk = b"".join(lines[i] for i in rng.permutation(len(lines)))
      f.write(chunk)
      written += len(chunk)


def text_corpus(sizes_gb: list[float], steps: int, tmp: str) -> str:
  rows = []
  for size in sizes_gb:
    corpus, folder = os.path.join(tmp, f"corpus_{size}gb.txt"), os.path.join(tmp, "tokens")
    _corpus(corpus, int(size * 1e9))
    mb = os.path.getsize(corpus) / 1e6
    write_s, write_peak, _ = _peak_rss([
        sys.executable, "-m", "bench.make_records", "--config=configs/lm_tiny.py",
        f"--config.data.path={corpus}", f"--out={folder}"])
    runs = [("tokens", ["--config.data.source=tokens", f"--config.data.path={folder}",
                        "--config.data.worker_count=1"])]
    if size == min(sizes_gb):
      runs.append(("text (whole)", [f"--config.data.path={corpus}"]))
    for source, flags in runs:
      with tempfile.TemporaryDirectory() as workdir:
        seconds, peak, log = _peak_rss([
            sys.executable, "run.py", "--config=configs/lm_tiny.py", *flags,
            f"--config.train.num_steps={steps}", "--config.eval.every_epoch=",
            "--config.eval.at_end=test", "--config.data.max_test_examples=4096",
            "--config.checkpoint.best_metric=train/loss", "--config.report.plots=False",
            "--config.report.html=False", f"--workdir={workdir}"])
        with open(os.path.join(workdir, "results.json")) as f:
          results = json.load(f)
      placement = next((line.split("data placement: ")[1].split(" (")[0]
                        for line in log.splitlines() if "data placement: " in line), "?")
      written = (f"{write_s:.0f} s, {write_peak / 1e9:.2f} GB" if source == "tokens" else
                 "(none)")
      rows.append(f"| {mb:,.0f} MB | {source} | {written} | {placement} | {seconds:.0f} s | "
                  f"{peak / 1e9:.2f} GB | {results['test_loss']:.3f} |")
      print(rows[-1], flush=True)
    os.remove(corpus)
    subprocess.run(["rm", "-rf", folder], check=True)
  return (f"A language model's corpus as a tokens folder: bench.make_records writing it (byte "
          f"tokens), then configs/lm_tiny.py trained {steps} steps from it and tested on 4,096 "
          f"windows; peak RSS of each process tree; {MACHINE}, 23 GiB RAM. The text source "
          "reads the corpus whole: for the smallest corpus only.\n\n"
          "| corpus | source | make_records: time, peak RSS | placement (logged) | run: wall "
          "time | run: peak RSS | test loss |\n|---|---|---|---|---|---|---|\n"
          + "\n".join(rows) + "\n")


def _folder_bytes(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def memory(folders: list[str], workers: int, steps: int) -> str:
  rows = []
  for folder in folders:
    bounded = ([f"--config.train.num_steps={steps}", "--config.data.max_test_examples=24400"]
               if steps > 0 else [])
    with tempfile.TemporaryDirectory() as workdir:
      proc = subprocess.Popen(
          [sys.executable, "run.py", "--config=configs/fashion_mnist.py",
           "--config.data.source=array_record", f"--config.data.path={folder}",
           f"--config.data.worker_count={workers}", "--config.train.num_epochs=1",
           "--config.train.batch_size=512", "--config.eval.batch_size=1024",
           "--config.model.hidden_sizes=(64,)", "--config.eval.every_epoch=",
           "--config.eval.at_end=test", "--config.report.plots=False",
           "--config.report.html=False", f"--workdir={workdir}", *bounded],
          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      peak_total = peak_main = 0
      start = time.perf_counter()
      while proc.poll() is None:
        total, main = _tree_rss(proc.pid)
        peak_total, peak_main = max(peak_total, total), max(peak_main, main)
        time.sleep(0.2)
      seconds = time.perf_counter() - start
      log = proc.stderr.read()
      if proc.returncode:
        raise SystemExit(f"run on {folder} failed:\n{log[-3000:]}")
      with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
      with open(os.path.join(folder, "info.json")) as f:
        splits = json.load(f)["splits"]
    placement = next((l.split("data placement: ")[1] for l in log.splitlines()
                      if "data placement: " in l), "?")
    rows.append(f"| {_folder_bytes(folder) / 1e9:.1f} GB ({splits['train']:,} train + "
                f"{splits['test']:,} test images) | {peak_total / 1e9:.2f} GB | "
                f"{peak_main / 1e9:.2f} GB | {results['steps']:,} | {seconds / 60:.1f} min | "
                f"{results['input_wait_seconds'] / results['train_seconds']:.0%} | "
                f"{placement} |")
    print(rows[-1], flush=True)
  span = (f"{steps} steps (then 24,400 test examples)" if steps > 0 else "one epoch")
  return (f"Peak resident memory of {span} streamed from a records folder (64x64x3 uint8 "
          f"images, raw), MLP 64 hidden, batch 512, {workers} workers, then the test split "
          f"evaluated; {MACHINE}, 23 GiB RAM.\n\n"
          "| records folder | peak RSS, run + workers | peak RSS, main process | steps | "
          "wall time | training time waiting on input | placement (logged) |\n"
          "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def decode(folder: str, batch_size: int, repeats: int) -> str:
  import jax
  from bigjax.data import augment as augment_lib, records, stream
  images, labels = records.open_split(folder, "train")
  n = len(labels) // batch_size * batch_size
  rows = np.random.default_rng(0).permutation(len(labels))[:n].reshape(-1, batch_size)
  lines = []

  def timed(make_batches) -> float:
    """examples/s over all but the first 4 batches (the workers' start, about 2 s each here,
    is not their speed)."""
    best = 0.0
    for _ in range(repeats):
      batches = make_batches()
      for _ in range(4):
        next(batches)
      start = time.perf_counter()
      count = sum(len(b["label"]) for b in batches)
      best = max(best, count / (time.perf_counter() - start))
    return best

  thread = timed(lambda: (stream.read_batch(images, labels, r) for r in rows))
  lines.append(f"| read + decode | the calling thread (0 workers) | {thread:,.0f} |")
  for workers in (1, 2):
    rate = timed(lambda: stream.worker_batches(images, labels, rows, workers=workers))
    lines.append(f"| read + decode | {workers} worker{'s' * (workers > 1)} | {rate:,.0f} |")
    print(lines[-1], flush=True)
  augment = augment_lib.make_augmenter(dict(crop_padding=16, flip_lr=True), 10)
  step = jax.jit(lambda b, k: augment(b, k)["image"])
  batch = stream.read_batch(images, labels, rows[0])
  batch = {"image": jax.device_put(batch["image"].astype(np.float32) / 255),
           "label": jax.device_put(batch["label"])}
  jax.block_until_ready(step(batch, jax.random.PRNGKey(0)))
  start = time.perf_counter()
  for i in range(20):
    out = step(batch, jax.random.PRNGKey(i))
  jax.block_until_ready(out)
  rate = 20 * batch_size / (time.perf_counter() - start)
  lines.append(f"| random crop (padding 16) + flip, jitted, on the device (CPU) | - | "
               f"{rate:,.0f} |")
  trip = _batch_trip(batch_size, batch["image"].shape[1:])
  shape = "x".join(str(d) for d in batch["image"].shape[1:])
  return (f"Decode throughput, {n - 4 * batch_size:,} of {n:,} {shape} JPEG records (quality 90) of {folder}, batch "
          f"{batch_size}, best of {repeats} passes; {MACHINE}.\n\n"
          "| work | where | examples/s |\n|---|---|---|\n" + "\n".join(lines) + "\n\n"
          + trip)


def _produce(queue, batch_size: int, shape, count: int, shm: bool):
  from grain._src.python.ipc import shared_memory_array as sma
  batch = np.zeros((batch_size, *shape), np.uint8)
  for _ in range(count):
    queue.put(sma.copy_to_shm(batch) if shm else batch)


def _batch_trip(batch_size: int, shape) -> str:
  """Seconds per batch from a worker process to the main one, through grain's shared memory
  and copied out (as stream.worker_batches does), or pickled through a pipe."""
  import multiprocessing
  from grain._src.python.ipc import shared_memory_array as sma
  context = multiprocessing.get_context("spawn")
  out = []
  for shm in (True, False):
    queue = context.Queue(2)
    worker = context.Process(target=_produce, args=(queue, batch_size, tuple(shape), 11, shm))
    worker.start()
    queue.get()
    start = time.perf_counter()
    for _ in range(10):
      got = queue.get()
      if shm:
        array = sma.SharedMemoryArray.from_metadata(got)
        array.unlink_on_del()
        np.array(array)
        del array
    out.append((time.perf_counter() - start) / 10)
    worker.join()
  mb = batch_size * int(np.prod(shape)) / 1e6
  return (f"A {mb:.1f} MB batch's trip from a worker to the training process: "
          f"{out[0] * 1000:.0f} ms through grain's shared memory and copied out, "
          f"{out[1] * 1000:.0f} ms pickled through a pipe.\n")


def wait(folder: str, steps: int) -> str:
  rows = []
  for name, config in (("CNN (configs/fashion_mnist.py:cnn)", "configs/fashion_mnist.py:cnn"),
                       ("ResNet-20 (configs/fashion_mnist_resnet.py)",
                        "configs/fashion_mnist_resnet.py")):
    with tempfile.TemporaryDirectory() as workdir:
      proc = subprocess.run(
          [sys.executable, "run.py", f"--config={config}", "--config.data.source=array_record",
           f"--config.data.path={folder}", "--config.data.placement=host",
           "--config.data.worker_count=1", f"--config.train.num_steps={steps}",
           "--config.eval.every_epoch=", "--config.eval.at_end=",
           "--config.report.plots=False", "--config.report.html=False",
           f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True)
      if proc.returncode:
        raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
      with open(os.path.join(workdir, "results.json")) as f:
        r = json.load(f)
      with open(os.path.join(workdir, "config.json")) as f:
        batch = json.load(f)["train"]["batch_size"]
    step_ms = 1000 * (r["train_seconds"] - r["compile_seconds"]) / r["steps"]
    wait_ms = 1000 * r["input_wait_seconds"] / r["steps"]
    rows.append(f"| {name} | {batch} | {r['steps']} | {step_ms:.1f} ms | {wait_ms:.2f} ms | "
                f"{wait_ms / step_ms:.1%} |")
    print(rows[-1], flush=True)
  return (f"Does training wait on the stream? Fashion-MNIST as a records folder (raw pixels), "
          f"placement host, 1 worker, {steps} steps; {MACHINE}. Step time: training time less "
          "compilation, per step; waiting: time the step loop spent blocked on the next host "
          "batch (it includes the first batch's, and the worker's start).\n\n"
          "| network | batch | steps | time per step | waiting per step | share |\n"
          "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--part", required=True, choices=("memory", "decode", "wait", "text"))
  parser.add_argument("--folders", default="", help="records folder(s), comma-separated")
  parser.add_argument("--corpus_gb", default="0.2,2", help="text: corpus sizes, GB")
  parser.add_argument("--tmp", default=tempfile.gettempdir(), help="text: where to write")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--steps", type=int, default=300, help="wait: steps per network")
  parser.add_argument("--memory_steps", type=int, default=0,
                      help="memory: train this many steps (and test on 24,400 examples) "
                           "instead of a whole epoch (0)")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  folders = args.folders.split(",")
  if args.part == "memory":
    text = memory(folders, args.workers, args.memory_steps)
  elif args.part == "text":
    text = text_corpus([float(s) for s in args.corpus_gb.split(",")], args.steps, args.tmp)
  elif args.part == "decode":
    text = decode(folders[0], args.batch_size, args.repeats)
  else:
    text = wait(folders[0], args.steps)
  if args.out and os.path.exists(args.out):
    with open(args.out) as f:
      text = f.read() + "\n" + text
  emit(text, args.out)


if __name__ == "__main__":
  main()
