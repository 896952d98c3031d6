"""What do int8 quantization, pruning and distillation cost and save? Fashion-MNIST (Debian's
IDX files), on this machine's CPU:

  for each model (the lessons' 784-128-10 MLP and CNN, ResNet-20):
    float32, trained from scratch
    int8 post-training: weights only, dynamic, static (512 calibration examples)
    int8 after quantization-aware fine-tuning (qwix, dynamic, from the float run)
    pruned to 50 / 80 / 90% by gradual magnitude pruning while fine-tuning from the float run
  each: test accuracy, param bytes, model.jax bytes (and gzip'd, which is what sparsity
  saves), latency at batch 1 and 256 through the exported StableHLO (jax) and, for float
  models, ONNX (onnxruntime)
  distillation: the MLP taught by --teacher against the MLP from scratch, 3 seeds.

  python -m bench.compression [--models=mlp,cnn,resnet20] [--epochs=mlp:5,cnn:3,resnet20:2]
      [--finetune_epochs=1] [--prune_end=0.75] [--prune_scope=global]
      [--teacher=cnn] [--seeds=0,1,2]
      [--distill_epochs=5] [--distill_alpha=0.5]
      [--distill_temperature=4] [--out=bench/results/compression_cpu2.md]

Needs `apt-get install dataset-fashion-mnist` and bigjax[export]. Each measurement is
flushed to the .jsonl beside --out as it is taken (a run cut short keeps its figures).
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from bench._report import emit
from bigjax import cli, train
from bigjax.compression import quantization
from bigjax.inference import export, portable
from bigjax.training.programs import Programs
from configs import fashion_mnist, fashion_mnist_resnet

flags.DEFINE_list("models", ["mlp", "cnn", "resnet20"], "Which models to compress.")
flags.DEFINE_list("epochs", ["mlp:5", "cnn:3", "resnet20:2"], "Float training epochs.")
flags.DEFINE_integer("finetune_epochs", 1, "Epochs of QAT and of pruning fine-tunes.")
flags.DEFINE_float("prune_end", 0.75, "Where in the fine-tune the pruning schedule reaches "
                   "its sparsity (a fraction of its steps); the rest trains at it.")
flags.DEFINE_enum("prune_scope", "global", ["layer", "global"], "config.prune.scope: each "
                  "kernel to the sparsity, or all kernels ranked together.")
flags.DEFINE_string("teacher", "cnn", "The distillation's teacher, one of --models ('': no "
                    "distillation).")
flags.DEFINE_list("sparsities", ["0.5", "0.8", "0.9"], "Pruning targets.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the distillation comparison.")
flags.DEFINE_integer("distill_epochs", 5, "Epochs of each distillation student.")
flags.DEFINE_float("distill_alpha", 0.5, "The hard-label loss's weight in distillation.")
flags.DEFINE_float("distill_temperature", 4.0, "Distillation's temperature.")
flags.DEFINE_string("out", "", "Also write the table (markdown) here, and .jsonl beside it.")

FASHION = "/usr/share/datasets/fashion-mnist"


def _config(model: str, **overrides):
  config = (fashion_mnist_resnet.get_config(model) if model.startswith("resnet")
            else fashion_mnist.get_config(model))
  with config.unlocked():
    config.data.update(source="idx", path=FASHION)
    config.report.update(plots=False, html=False, tensorboard=False)
    config.update_from_flattened_dict(overrides)
  return config


def _latency_ms(call, inputs, repeats: int = 20) -> float:
  call(inputs)  # compile / warm
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    np.asarray(call(inputs))
    times.append(time.perf_counter() - t0)
  return 1000 * statistics.median(times)


def _measure(name: str, variant: str, predictor, workdir: str, test) -> dict:
  """Accuracy, bytes and latencies of one model (float or quantized)."""
  images, labels = test
  scores = quantization.score(predictor, images, labels)
  quantized = bool(predictor.spec.get("quantized"))
  folder = export.write_folder(predictor, workdir, os.path.join(workdir, f"export_{variant}"),
                               onnx=not quantized)
  jax_file = os.path.join(folder, "model.jax")
  blob = open(jax_file, "rb").read()
  model = jax.export.deserialize(bytearray(blob))
  row = {"model": name, "variant": variant, "test_accuracy": scores.accuracy,
         "param_bytes": quantization.param_bytes(predictor.variables["params"]),
         "model_jax_bytes": len(blob), "model_jax_gzip_bytes": len(gzip.compress(blob)),
         "jax_ms_batch1": _latency_ms(model.call, images[:1]),
         "jax_ms_batch256": _latency_ms(model.call, images[:256])}
  onnx_file = os.path.join(folder, "model.onnx")
  if os.path.exists(onnx_file):
    import onnxruntime
    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    name_in = session.get_inputs()[0].name
    run = lambda x: session.run(None, {name_in: x})[0]
    row["onnx_ms_batch1"] = _latency_ms(run, images[:1])
    row["onnx_ms_batch256"] = _latency_ms(run, images[:256])
  row["nonzero_params"] = None if quantized else sum(
      int(np.count_nonzero(x)) for x in jax.tree.leaves(predictor.variables["params"]))
  return row


def _validation(workdir: str) -> dict:
  """A trained run's final validation accuracy (what to choose settings by, not test)."""
  with open(os.path.join(workdir, "results.json")) as f:
    validation = json.load(f)["metrics"].get("validation") or {}
  return {"validation_accuracy": validation["accuracy"]} if "accuracy" in validation else {}


def _trained(config, workdir: str) -> portable.Predictor:
  """Trains `config` in `workdir`; its model, from the workdir."""
  train.run(config, workdir)
  return portable.load(workdir, config)


def main(argv):
  del argv
  cli._quiet_logs()
  f = flags.FLAGS
  epochs = dict(item.split(":") for item in f.epochs)
  jsonl = (os.path.splitext(f.out)[0] + ".jsonl") if f.out else None
  rows: list[dict] = []

  def record(row: dict) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)
    if jsonl:
      with open(jsonl, "a") as out:
        out.write(json.dumps(row) + "\n")

  if jsonl and os.path.exists(jsonl):
    os.remove(jsonl)
  started = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    for name in f.models:
      n = int(epochs.get(name, 2))
      float_dir = os.path.join(tmp, name)
      t0 = time.perf_counter()
      config = _config(name, **{"train.num_epochs": n})
      float_model = _trained(config, float_dir)
      seconds = time.perf_counter() - t0
      programs = Programs(config)
      test = (np.asarray(programs.data.test.inputs), np.asarray(programs.data.test.targets))
      calibration = quantization.calibration_inputs(programs, 512)
      record({**_measure(name, "float32", float_model, float_dir, test),
              "train_seconds": seconds, "epochs": n})
      for mode in quantization.MODES:
        quantized, in_float = quantization.quantize(float_model, mode, calibration)
        record({**_measure(name, f"int8 {mode}", quantized, float_dir, test),
                "kernels_in_float": len(in_float)})
      fine = {"train.num_epochs": f.finetune_epochs, "init_from.path": float_dir,
              "optimizer.learning_rate": 0.3 * config.optimizer.learning_rate}
      if "warmup_steps" in config.optimizer.get("schedule", {}):
        fine["optimizer.schedule.warmup_steps"] = 0
      tuned_dir = os.path.join(tmp, name + "_tuned")  # the control: the same fine-tune
      record({**_measure(name, "float32 fine-tuned", _trained(_config(name, **fine), tuned_dir),
                         tuned_dir, test), **_validation(tuned_dir)})
      qat_dir = os.path.join(tmp, name + "_qat")
      qat = _trained(_config(name, **fine, **{"quantize.aware": "dynamic"}), qat_dir)
      quantized, _ = quantization.quantize(qat, "dynamic")
      record(_measure(name, "int8 QAT (dynamic)", quantized, qat_dir, test))
      for sparsity in map(float, f.sparsities):
        pruned_dir = os.path.join(tmp, f"{name}_pruned{sparsity}")
        fine_steps = programs.total_steps // n * f.finetune_epochs
        pruned = _trained(_config(name, **fine, **{
            "prune.sparsity": sparsity, "prune.every_steps": 50, "prune.scope": f.prune_scope,
            "prune.end_step": int(f.prune_end * fine_steps)}), pruned_dir)
        record({**_measure(name, f"pruned {sparsity:.0%}", pruned, pruned_dir, test),
                **_validation(pruned_dir)})
    if f.teacher:  # the MLP taught by the teacher, against the MLP alone
      if f.teacher not in f.models:
        raise app.UsageError(f"--teacher={f.teacher} is not among --models.")
      teacher = os.path.join(tmp, f.teacher)
      for seed in map(int, f.seeds):
        for how, extra in (("scratch", {}), ("distilled", {
            "distill.teacher": teacher, "distill.alpha": f.distill_alpha,
            "distill.temperature": f.distill_temperature})):
          results = train.run(_config("mlp", **{"seed": seed,
                                                "train.num_epochs": f.distill_epochs,
                                                **extra}), os.path.join(tmp, f"{how}{seed}"))
          record({"model": "mlp student", "variant": how, "seed": seed,
                  "test_accuracy": results["test_accuracy"]})
  emit(_table(rows, time.perf_counter() - started), f.out or None)


def _table(rows: list[dict], seconds: float) -> str:
  device = jax.devices()[0].device_kind
  head = (f"Fashion-MNIST test split (10,000 images). Machine: {os.cpu_count()} CPU cores "
          f"({device}), Python {platform.python_version()}, jax {jax.__version__}; "
          f"{seconds / 60:.0f} minutes in all. Latency: median of 20 calls of the exported "
          "model, after a warm-up.\n\n")
  lines = ["| model | variant | test acc | change | param bytes | model.jax | gzip'd | "
           "non-zero params | jax ms b1 / b256 | onnxruntime ms b1 / b256 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  base = {}
  for r in rows:
    if "param_bytes" not in r:
      continue
    if r["variant"] == "float32":
      base[r["model"]] = r
    b = base.get(r["model"], r)
    onnx = (f"{r['onnx_ms_batch1']:.2f} / {r['onnx_ms_batch256']:.2f}"
            if "onnx_ms_batch1" in r else "-")
    lines.append(
        f"| {r['model']} | {r['variant']} | {r['test_accuracy']:.4f} | "
        f"{100 * (r['test_accuracy'] - b['test_accuracy']):+.2f} | {r['param_bytes']:,} "
        f"({r['param_bytes'] / b['param_bytes']:.0%}) | {r['model_jax_bytes']:,} | "
        f"{r['model_jax_gzip_bytes']:,} | "
        f"{'-' if r['nonzero_params'] is None else format(r['nonzero_params'], ',')} | "
        f"{r['jax_ms_batch1']:.2f} / {r['jax_ms_batch256']:.2f} | {onnx} |")
  lines.append("")
  for model, b in base.items():
    ptq = [r for r in rows if r["model"] == model and r["variant"].startswith("int8 ")
           and "QAT" not in r["variant"]]
    tuned = next((r for r in rows if r["model"] == model
                  and r["variant"] == "float32 fine-tuned"), None)
    pruned = next((r for r in rows if r["model"] == model and r["variant"] == "pruned 80%"),
                  None)
    held = [r["variant"][5:] for r in ptq if abs(r["test_accuracy"] - b["test_accuracy"]) <= 0.005
            and r["param_bytes"] <= 0.26 * b["param_bytes"]]
    lines.append(f"- {model}: int8 within 0.5 points at a quarter of the bytes: "
                 f"{', '.join(held) or 'none'}"
                 + (f"; 80% sparsity {100 * (pruned['test_accuracy'] - b['test_accuracy']):+.2f}"
                    " points against float32, "
                    f"{100 * (pruned['test_accuracy'] - tuned['test_accuracy']):+.2f} against "
                    "the same fine-tune in float" if pruned and tuned else ""))
  students = [r for r in rows if r["model"] == "mlp student"]
  if students:
    f = flags.FLAGS
    lines += ["", f"Students: {f.distill_epochs} epochs; distilled with alpha {f.distill_alpha}, "
              f"temperature {f.distill_temperature}.", "",
              f"| seed | MLP from scratch | MLP distilled from the {f.teacher} |", "|---|---|---|"]
    by_seed: dict = {}
    for r in students:
      by_seed.setdefault(r["seed"], {})[r["variant"]] = r["test_accuracy"]
    for seed, pair in sorted(by_seed.items()):
      lines.append(f"| {seed} | {pair.get('scratch', float('nan')):.4f} | "
                   f"{pair.get('distilled', float('nan')):.4f} |")
    wins = sum(p.get("distilled", 0) > p.get("scratch", 1) for p in by_seed.values())
    lines.append(f"\nThe distilled student wins on {wins} of {len(by_seed)} seeds.")
  return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)
