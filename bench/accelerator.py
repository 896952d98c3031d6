"""One command on one GPU (or TPU): the accelerator figures bigjax has never had.

  python -m bench.accelerator --data=FASHION_MNIST_IDX_FOLDER --out_dir=DIR
  python -m bench.accelerator --dry-run      # every part at toy sizes on the CPU (about 1 min)

Writes DIR/accelerator_<device>.jsonl (one JSON line per measurement, flushed as it goes,
so a run cut short keeps what it measured) and DIR/accelerator_<device>.md (the tables and
the targets, met or not). Parts, in order (--parts picks some):

  environment    jax, jaxlib, CUDA and driver versions, the device, the date
  fashion_mnist  train.run to 0.93 test accuracy: train time and wall time from this
                 command's start (the whole split resident on the device)
  throughput     train-step examples/s of each image config, float32 and bfloat16
  lm             lm_small tokens/s and MFU in bfloat16, by batch size, with and without remat
  layers         Flax's stock BatchNorm/LayerNorm/pooling/dropout against bigjax's own kernels
  largest_gpt    the largest byte-level GPT whose train step (AdamW, remat, bfloat16
                 compute) fits on one device, each candidate in a fresh process; peak memory

Everything stops at --budget_s seconds from the start (default 450: one device call may run
600); a part that would start too late is recorded as skipped. Safe to rerun: nothing is
kept between runs but the output files, which are rewritten. `bench/prepare_accelerator.py`
gathers what a bare GPU machine lacks and prints the command to run there.
"""

from __future__ import annotations

import os
import time

_T0 = time.time()  # "wall time from the command's start" counts from here
# Memory as it is needed, not 75% of the device up front: largest_gpt's probes run in child
# processes beside this one.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import datetime  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from absl import app, flags  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bigjax.core import losses  # noqa: E402
from bigjax.core.optimizers import build_optimizer  # noqa: E402
from bigjax.core.steps import count_params, create_train_state, make_train_step  # noqa: E402
from bigjax.models import backend, build_model  # noqa: E402
from bigjax.outputs import mfu  # noqa: E402
from bigjax.outputs.summary import load_config_file  # noqa: E402

# largest_gpt runs early, while this process holds little device memory.
PARTS = ("environment", "fashion_mnist", "largest_gpt", "throughput", "lm", "layers")
LARGEST_GPT_BUDGET_S = 170.0
flags.DEFINE_bool("dry_run", False, "Every part at toy sizes (on a CPU, about a minute).")
flags.DEFINE_list("parts", list(PARTS), f"Which parts to run: {', '.join(PARTS)}.")
flags.DEFINE_string("data", "", "Folder of Fashion-MNIST's four IDX .gz files (default: the "
                    "config's, Debian's dataset-fashion-mnist).")
flags.DEFINE_string("out_dir", "bench/results", "Where the .jsonl and .md files go.")
flags.DEFINE_float("budget_s", 450.0, "Stop starting measurements after this many seconds.")
flags.DEFINE_integer("batch_size", 512, "Batch size of the image throughput and layers parts.")
flags.DEFINE_string("gpt_probe", "", "Internal: width,depth,heads,batch of one largest_gpt "
                    "candidate, measured in this (fresh) process.")
FLAGS = flags.FLAGS

TARGET_ACCURACY = 0.93
# Fashion-MNIST recipes, tried in order until one reaches the target, each stopping at the
# first epoch that does: ResNet-20 (0.9447 in 30 epochs at batch 128 on the CPU), batch 512
# with the learning rate scaled by 4, one cosine cycle after a warmup epoch, flips. Too slow
# to tune on the 2-core CPU (an epoch takes minutes there), so a longer cycle follows.
FASHION_RECIPES = [
    dict(name="resnet20_b512_e8", config="configs/fashion_mnist_resnet.py", epochs=8,
         batch_size=512, learning_rate=0.4, dtype="bfloat16"),
    dict(name="resnet20_b512_e14", config="configs/fashion_mnist_resnet.py", epochs=14,
         batch_size=512, learning_rate=0.4, dtype="bfloat16"),
]
IMAGE_CONFIGS = [  # (label, config file, input shape)
    ("mlp", "configs/fashion_mnist.py:mlp", (28, 28, 1)),
    ("cnn", "configs/fashion_mnist.py:cnn", (28, 28, 1)),
    ("resnet20", "configs/fashion_mnist_resnet.py", (28, 28, 1)),
    ("resnet18_32x32", "configs/cifar10_resnet.py", (32, 32, 3)),
    ("vit_cifar", "configs/cifar10_vit.py", (32, 32, 3)),
]
LM_BATCHES = [(16, False), (32, False), (64, False), (128, False), (32, True), (128, True)]
# (width, depth, heads), ascending in parameters: 0.3B, 1.2B, 2.5B, 6.4B, 8.1B, 12.6B.
GPT_CANDIDATES = [(1024, 24, 16), (2048, 24, 16), (2560, 32, 20), (4096, 32, 32),
                  (4096, 40, 32), (5120, 40, 40)]
GPT_PROBE_BATCH = 8
LAYER_CONFIGS = ["mlp_dropout", "cnn", "resnet20", "vit_cifar", "lm_small"]


class Out:
  """The JSON lines file (appended and flushed per record) and the records in memory."""

  def __init__(self, path: str):
    self.path, self.records = path, []
    with open(path, "w"):
      pass

  def add(self, part: str, **values) -> dict:
    record = {"part": part, **values}
    self.records.append(record)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    return record


def elapsed() -> float:
  return time.time() - _T0


def left() -> float:
  return FLAGS.budget_s - elapsed()


def device_slug() -> str:
  return re.sub(r"[^a-z0-9]+", "_", jax.devices()[0].device_kind.lower()).strip("_")


def peak_memory() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


# ---- environment ---------------------------------------------------------------------------

def environment(out: Out) -> None:
  import jaxlib
  info = jax.print_environment_info(return_string=True) or ""
  cuda = re.search(r"CUDA Version:\s*([\d.]+)", info)
  driver = re.search(r"Driver Version:\s*([\d.]+)", info)
  out.add("environment", device=jax.devices()[0].device_kind, device_count=jax.device_count(),
          backend=jax.default_backend(), jax=jax.__version__, jaxlib=jaxlib.__version__,
          cuda=cuda.group(1) if cuda else None, driver=driver.group(1) if driver else None,
          python=sys.version.split()[0], date=datetime.date.today().isoformat(),
          hand_written_kernels_default=backend.hand_written_kernels())


# ---- fashion_mnist -------------------------------------------------------------------------

def fashion_config(recipe: dict):
  config = load_config_file(recipe["config"])
  with config.unlocked():
    if FLAGS.data:
      config.data.update(source="idx", path=FLAGS.data)
    config.data.validation_fraction = 0.0  # all 60,000 train; the test split is watched
    config.data.augment.crop_padding = 0
    config.train.batch_size = recipe["batch_size"]
    config.train.num_epochs = recipe["epochs"]
    config.train.stop_when = f"test/accuracy>={TARGET_ACCURACY}"
    config.train.log_every_steps = 10_000
    config.optimizer.learning_rate = recipe["learning_rate"]
    steps_per_epoch = 60_000 // recipe["batch_size"]
    config.optimizer.schedule.warmup_steps = steps_per_epoch
    config.precision.compute_dtype = recipe["dtype"]
    config.eval.update(every_epoch="test", at_end="test", batch_size=1000,
                       metrics="loss,accuracy")
    config.checkpoint.update(best_metric="", max_to_keep=1, min_interval_seconds=1e9)
    config.report.update(plots=False, html=False, tensorboard=False)
    if FLAGS.dry_run:
      config.data.update(max_train_examples=512, max_test_examples=256)
      config.model = dict(name="cnn", conv_features=(4,), kernel_size=3, strides=1,
                          padding="VALID", pool_size=2, norm="none", dense_sizes=(),
                          activation="relu", dropout_rate=0.0, num_classes=10,
                          kernel_init="he_normal", bias_init="zeros")
      config.train.update(batch_size=64, num_epochs=1)
      config.optimizer.update(name="adam", learning_rate=1e-3, nesterov=None, momentum=None)
      config.optimizer.schedule.warmup_steps = 2
      config.eval.batch_size = 128
  return config


def fashion_mnist(out: Out) -> None:
  from bigjax import train
  for recipe in FASHION_RECIPES:
    if left() < 60 and not FLAGS.dry_run:
      out.add("fashion_mnist", recipe=recipe["name"], skipped="out of time")
      return
    with tempfile.TemporaryDirectory() as workdir:
      started = elapsed()
      results = train.run(fashion_config(recipe), workdir)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        curve = [json.loads(line) for line in f if '"split": "test"' in line]
    accuracy = results.get("test_accuracy")
    record = out.add(
        "fashion_mnist", recipe=recipe["name"], **{k: v for k, v in recipe.items() if k != "name"},
        reached=bool(accuracy is not None and accuracy >= TARGET_ACCURACY),
        test_accuracy=accuracy, epochs_run=results["epochs"], steps=results["steps"],
        train_seconds=round(results["train_seconds"], 3),
        compile_seconds=round(results["compile_seconds"], 3),
        eval_seconds=round(results["eval_seconds"], 3),
        run_wall_seconds=round(elapsed() - started, 3),
        wall_seconds_from_command_start=round(elapsed(), 3),
        test_accuracy_by_epoch=[round(r["accuracy"], 4) for r in curve if "accuracy" in r])
    if record["reached"] or FLAGS.dry_run:
      return


# ---- train-step timing ---------------------------------------------------------------------

def time_train_step(config, x_shape, batch_size: int, compute_dtype, steps: int,
                    labels_shape=None, vocab: int | None = None) -> dict:
  """Compile time and examples/s (median of 3 timed runs of `steps` steps) of the config's
  jitted train step on random data."""
  rng = np.random.default_rng(0)
  if vocab:
    x = rng.integers(0, vocab, (batch_size,) + x_shape).astype(np.int32)
    y = rng.integers(0, vocab, (batch_size,) + x_shape).astype(np.int32)
  else:
    x = rng.random((batch_size,) + x_shape, np.float32)
    y = rng.integers(0, 10, batch_size).astype(np.int32)
  batch = jax.device_put({"image": x, "label": y})
  model = build_model(config.model)
  tx = build_optimizer(config.optimizer, config.loss, total_steps=10_000)

  @jax.jit
  def init(key):
    variables = model.init({"params": key, "dropout": key}, batch["image"][:1], train=False)
    return create_train_state(variables, tx, key)

  state = init(jax.random.PRNGKey(0))
  step = jax.jit(make_train_step(model, losses.build_loss(config.loss), tx,
                                 compute_dtype=compute_dtype), donate_argnums=0)
  start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - start) / steps)
  step_s = float(np.median(times))
  finite = bool(np.isfinite(float(metrics["loss"])))
  return dict(params=count_params(state.params), compile_seconds=round(compile_s, 3),
              step_ms=round(1e3 * step_s, 4), examples_per_second=round(batch_size / step_s, 1),
              loss_finite=finite)


def _dtype(name: str):
  return jnp.bfloat16 if name == "bfloat16" else None


def _shrink_image_config(config, label: str) -> None:
  """--dry-run: the same model family at toy widths."""
  model = config.model
  if label.startswith("vit"):
    model.update(hidden_size=16, depth=1, num_heads=2)
  elif model.name == "cnn":
    model.update(conv_features=(4, 4), dense_sizes=(8,))
  elif model.name == "mlp":
    model.hidden_sizes = (8,)
  elif model.name.startswith("resnet"):
    model.update(name="resnet", stage_sizes=(1,), stage_features=(4,))


def image_config(label: str, spec: str):
  config = load_config_file(spec)
  with config.unlocked():
    if label == "resnet18_32x32":
      config.model.name = "resnet18"
    if label == "mlp_dropout":
      config.model.update(hidden_sizes=(256, 128, 64), dropout_rate=0.2)
    if FLAGS.dry_run:
      _shrink_image_config(config, label)
  return config


def throughput(out: Out) -> None:
  batch = 16 if FLAGS.dry_run else FLAGS.batch_size
  steps = 2 if FLAGS.dry_run else 20
  for label, spec, shape in IMAGE_CONFIGS:
    # The dry run compiles float32 once (the MLP): the same code path with another dtype.
    dtypes = ("float32", "bfloat16") if label == "mlp" or not FLAGS.dry_run else ("bfloat16",)
    for dtype in dtypes:
      if left() < 20:
        out.add("throughput", config=label, dtype=dtype, skipped="out of time")
        continue
      config = image_config(label, spec)
      figures = time_train_step(config, shape, batch, _dtype(dtype), steps)
      out.add("throughput", config=label, model=config.model.name, dtype=dtype,
              batch_size=batch, image=list(shape), **figures)


# ---- lm ------------------------------------------------------------------------------------

def lm_config(remat: bool):
  config = load_config_file("configs/lm_small.py")
  with config.unlocked():
    config.model.remat = remat
    if FLAGS.dry_run:
      config.model.update(hidden_size=16, depth=1, num_heads=2, context_length=32)
  return config


def lm(out: Out) -> None:
  batches = [(2, False), (2, True)] if FLAGS.dry_run else LM_BATCHES
  for batch, remat in batches:
    if left() < 20:
      out.add("lm", batch_size=batch, remat=remat, skipped="out of time")
      continue
    config = lm_config(remat)
    seq = int(config.model.context_length)
    figures = time_train_step(config, (seq,), batch, jnp.bfloat16, 2 if FLAGS.dry_run else 10,
                              vocab=int(config.model.vocab_size))
    tokens_per_s = figures["examples_per_second"] * seq
    utilisation = mfu.utilisation(tokens_per_s, mfu.gpt_flops_per_token(config.model, seq),
                                  jax.devices()[0].device_kind, 1)
    out.add("lm", config="lm_small", batch_size=batch, seq_len=seq, remat=remat,
            tokens_per_second=round(tokens_per_s), mfu=None if utilisation is None
            else round(utilisation, 4), **figures)


# ---- layers --------------------------------------------------------------------------------

def layers(out: Out) -> None:
  batch = 16 if FLAGS.dry_run else FLAGS.batch_size
  steps = 2 if FLAGS.dry_run else 20
  specs = {"mlp_dropout": ("configs/fashion_mnist.py:mlp3", (28, 28, 1)),
           "cnn": ("configs/fashion_mnist.py:cnn", (28, 28, 1)),
           "resnet20": ("configs/fashion_mnist_resnet.py", (28, 28, 1)),
           "vit_cifar": ("configs/cifar10_vit.py", (32, 32, 3))}
  # (The dry run leaves out lm_small: its kernels are the ViT's, and the lm part compiles it.)
  for label in LAYER_CONFIGS[:-1] if FLAGS.dry_run else LAYER_CONFIGS:
    for own in (True, False):
      kernels = "bigjax" if own else "stock"
      if left() < 20:
        out.add("layers", config=label, kernels=kernels, skipped="out of time")
        continue
      os.environ[backend.ENV_VAR] = "1" if own else "0"
      try:
        if label == "lm_small":
          config = lm_config(remat=False)
          seq = int(config.model.context_length)
          figures = time_train_step(config, (seq,), 2 if FLAGS.dry_run else 32, jnp.bfloat16,
                                    steps, vocab=int(config.model.vocab_size))
        else:
          spec, shape = specs[label]
          figures = time_train_step(image_config(label, spec), shape, batch, jnp.bfloat16,
                                    steps)
      finally:
        del os.environ[backend.ENV_VAR]
      out.add("layers", config=label, kernels=kernels, dtype="bfloat16", **figures)


# ---- largest_gpt ---------------------------------------------------------------------------

def gpt_probe(spec: str) -> dict:
  """One candidate in this process: init, one compiled AdamW step with remat; peak memory."""
  width, depth, heads, batch = (int(v) for v in spec.split(","))
  config = lm_config(remat=True)
  with config.unlocked():
    config.model.update(hidden_size=width, depth=depth, num_heads=heads)
  seq = int(config.model.context_length)
  try:
    figures = time_train_step(config, (seq,), batch, jnp.bfloat16, 2,
                              vocab=int(config.model.vocab_size))
  except Exception as e:  # noqa: BLE001 (out of memory is the answer, not a failure)
    return dict(fits=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
  return dict(fits=True, peak_bytes=peak_memory(),
              tokens_per_second=round(figures["examples_per_second"] * seq), **figures)


def largest_gpt(out: Out) -> None:
  candidates = [(32, 1, 2), (64, 1, 2)] if FLAGS.dry_run else GPT_CANDIDATES
  batch = 1 if FLAGS.dry_run else GPT_PROBE_BATCH
  lo, hi, best = 0, len(candidates) - 1, None  # binary search: fits is monotone in size
  deadline = elapsed() + LARGEST_GPT_BUDGET_S
  main_stats = jax.devices()[0].memory_stats() or {}
  while lo <= hi:
    mid = (lo + hi) // 2
    width, depth, heads = candidates[mid]
    if min(left(), deadline - elapsed()) < 45:
      out.add("largest_gpt", width=width, depth=depth, skipped="out of time")
      break
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               XLA_PYTHON_CLIENT_MEM_FRACTION="0.97")
    command = [sys.executable, "-m", "bench.accelerator", f"--gpt_probe={width},{depth},"
               f"{heads},{batch}", f"--dry_run={FLAGS.dry_run}"]
    started = time.time()
    try:
      done = subprocess.run(command, env=env, capture_output=True, text=True,
                            timeout=max(10.0, min(left(), deadline - elapsed()) - 10))
      lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
      result = json.loads(lines[-1]) if lines else dict(
          fits=False, error=f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
    except subprocess.TimeoutExpired:
      result = dict(fits=False, error="timed out (out of budget)", timed_out=True)
    out.add("largest_gpt", width=width, depth=depth, heads=heads, batch_size=batch,
            seq_len=lm_config(True).model.context_length, probe_seconds=round(time.time() -
                                                                           started, 1),
            **result)
    if result.get("timed_out"):
      break
    if result["fits"]:
      best, lo = mid, mid + 1
    else:
      hi = mid - 1
  out.add("largest_gpt", summary=True, largest=None if best is None else
          dict(zip(("width", "depth", "heads"), candidates[best])),
          # what this (parent) process held meanwhile, which the probes could not use
          parent_bytes_in_use=main_stats.get("bytes_in_use"),
          parent_pool_bytes=main_stats.get("pool_bytes"))


# ---- the report ----------------------------------------------------------------------------

def _table(rows: list[dict], columns: list[str]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join("-" if row.get(c) is None else str(row.get(c))
                                   for c in columns) + " |")
  return "\n".join(lines)


def report(records: list[dict]) -> str:
  by = {part: [r for r in records if r["part"] == part] for part in PARTS}
  env = (by["environment"] or [{}])[0]
  text = [f"# bigjax on {env.get('device', '?')}", "",
          f"`python -m bench.accelerator` on {env.get('date')}: jax {env.get('jax')}, jaxlib "
          f"{env.get('jaxlib')}, CUDA {env.get('cuda')}, driver {env.get('driver')}, Python "
          f"{env.get('python')}, {env.get('device_count')} device(s). Raw figures: the .jsonl "
          "file beside this one.", "", "## Targets", ""]
  fashion = [r for r in by["fashion_mnist"] if "train_seconds" in r]
  reached = [r for r in fashion if r["reached"]]
  if fashion:
    best = reached[0] if reached else fashion[-1]
    met = "met" if reached and best["train_seconds"] <= 2.0 else "not met"
    text.append(f"- Fashion-MNIST {TARGET_ACCURACY} test accuracy in 2 s of training: **{met}** "
                f"({best['recipe']}: test accuracy {best['test_accuracy']} after "
                f"{best['epochs_run']} epochs, {best['train_seconds']} s of training, "
                f"{best['wall_seconds_from_command_start']} s from the command's start).")
  lm_rows = [r for r in by["lm"] if r.get("mfu") is not None]
  if lm_rows:
    top = max(lm_rows, key=lambda r: r["mfu"])
    text.append(f"- lm_small MFU >= 40% in bfloat16: **{'met' if top['mfu'] >= 0.4 else 'not met'}"
                f"** (best {100 * top['mfu']:.1f}% at batch {top['batch_size']}, remat "
                f"{top['remat']}).")
  layer_rows = [r for r in by["layers"] if "step_ms" in r]
  for label in LAYER_CONFIGS:
    pair = {r["kernels"]: r["step_ms"] for r in layer_rows if r["config"] == label}
    if len(pair) == 2:
      faster = min(pair, key=pair.get)
      text.append(f"- {label}: {faster} kernels faster ({pair['bigjax']} ms bigjax, "
                  f"{pair['stock']} ms stock per step).")
  text += ["", "## Fashion-MNIST to 0.93", "", _table(fashion, [
      "recipe", "batch_size", "dtype", "epochs", "reached", "test_accuracy", "epochs_run",
      "train_seconds", "compile_seconds", "wall_seconds_from_command_start",
      "test_accuracy_by_epoch"])]
  text += ["", "## Train-step throughput (random data, one step per call)", "", _table(
      by["throughput"], ["config", "model", "dtype", "batch_size", "params", "step_ms",
                         "examples_per_second", "compile_seconds", "skipped"])]
  text += ["", "## lm_small in bfloat16 (context 1,024)", "", _table(
      by["lm"], ["batch_size", "remat", "step_ms", "tokens_per_second", "mfu",
                 "compile_seconds", "skipped"])]
  text += ["", "## bigjax's own kernels against Flax's stock ones (bfloat16)", "", _table(
      layer_rows + [r for r in by["layers"] if "skipped" in r],
      ["config", "kernels", "step_ms", "examples_per_second", "skipped"])]
  gpt_rows = [r for r in by["largest_gpt"] if not r.get("summary")]
  for r in gpt_rows:
    if r.get("peak_bytes"):
      r["peak_gib"] = round(r["peak_bytes"] / 2 ** 30, 2)
  text += ["", "## The largest GPT on one device (AdamW, remat, bfloat16 compute, float32 "
           f"params; byte vocabulary, batch {GPT_PROBE_BATCH} x 1,024)", "", _table(
               gpt_rows, ["width", "depth", "heads", "params", "fits", "peak_gib", "step_ms",
                          "tokens_per_second", "compile_seconds", "probe_seconds", "error",
                          "skipped"])]
  return "\n".join(text) + "\n"


def main(argv):
  del argv
  if FLAGS.gpt_probe:
    print(json.dumps(gpt_probe(FLAGS.gpt_probe)), flush=True)
    return
  unknown = sorted(set(FLAGS.parts) - set(PARTS))
  if unknown:
    raise app.UsageError(f"Unknown --parts {unknown}: choose from {', '.join(PARTS)}.")
  from bigjax import cli
  cli._quiet_logs()
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  stem = os.path.join(FLAGS.out_dir, f"accelerator_{device_slug()}")
  out = Out(stem + ".jsonl")
  for part in PARTS:
    if part in FLAGS.parts:
      try:
        globals()[part](out)
      except Exception as e:  # noqa: BLE001 (one broken part must not cost the others)
        out.add(part, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
  with open(stem + ".md", "w") as f:
    f.write(report(out.records))
  print(f"wrote {stem}.md and .jsonl in {elapsed():.0f} s", flush=True)


if __name__ == "__main__":
  sys.argv = [a.replace("--dry-run", "--dry_run", 1) if a.startswith("--dry-run") else a
              for a in sys.argv]
  app.run(main)
