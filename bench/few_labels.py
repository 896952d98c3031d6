"""Few labels: does self-supervised pre-training pay when only 600 labels exist?

Fashion-MNIST, 600 labelled training images (60 per class; configs/fashion_mnist_fewlabels.py),
test on all 10,000. For one network, per seed: trained from scratch on the 600; fine-tuned
from each pre-training (every pre-training runs once, on all 60,000 training images without
their labels), with the loaded backbone frozen (a linear probe; for the CNN, whose SimCLR
backbone is the conv trunk, its dense layer trains too) and in full; and the same network
trained on all 60,000 labels, the ceiling. A pre-training "closes the gap" by
(fine-tuned - scratch) / (ceiling - scratch) of the same seed. Writes a Markdown table.

  python -m bench.few_labels --network=cnn --methods=simclr --seeds=0,1,2 \
      --out=bench/results/few_labels_cnn_cpu2.md
  python -m bench.few_labels --network=mlp --methods=autoencoder,simclr   # the MLP

Methods: autoencoder (configs/fashion_mnist_pretrain.py; the MLP only), simclr and vicreg
(configs/fashion_mnist_simclr.py; the MLP, the CNN, the ViT), mae (configs/fashion_mnist_mae.py;
the ViT only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from bench._report import emit
from bigjax import cli, train
from configs import fashion_mnist_fewlabels, fashion_mnist_mae, fashion_mnist_pretrain
from configs import fashion_mnist_simclr

METHODS = ("autoencoder", "simclr", "vicreg", "mae")


def _quiet(config, **overrides):
  with config.unlocked():
    config.report.update(plots=False, html=False, tensorboard=False)
    config.update_from_flattened_dict(overrides)
  return config


def pretraining_config(method: str, network: str, epochs: int):
  if method == "autoencoder":
    if network != "mlp":
      raise SystemExit("The denoising autoencoder pre-trains the MLP only (--network=mlp).")
    config = fashion_mnist_pretrain.get_config()
  elif method == "mae":
    if network != "vit":
      raise SystemExit("The masked autoencoder pre-trains the ViT only (--network=vit).")
    config = fashion_mnist_mae.get_config()
  elif method in ("simclr", "vicreg"):
    config = fashion_mnist_simclr.get_config(network + (",vicreg" if method == "vicreg" else ""))
  else:
    raise SystemExit(f"Unknown method {method!r}: use {', '.join(METHODS)}.")
  overrides = {"train.num_epochs": epochs} if epochs else {}
  return _quiet(config, **overrides)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--network", default="mlp", choices=("mlp", "cnn", "vit"))
  parser.add_argument("--methods", default="autoencoder")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--pretrain_epochs", type=int, default=0,
                      help="Pre-training epochs (0: each config's own).")
  parser.add_argument("--ceiling_epochs", type=int, default=10,
                      help="Epochs of the all-labels ceiling (0: skip it).")
  parser.add_argument("--pretrained", default="",
                      help="method=RUN,...: finished pre-trainings to reuse.")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  cli._quiet_logs()
  seeds = [int(s) for s in args.seeds.split(",")]
  methods = [m for m in args.methods.split(",") if m]
  reuse = dict(item.split("=", 1) for item in args.pretrained.split(",") if item)
  rows: dict[str, list[float]] = {"scratch": []}
  notes = []
  with tempfile.TemporaryDirectory() as tmp:
    runs = {}
    for method in methods:
      if method in reuse:
        runs[method] = os.path.abspath(reuse[method])
        with open(os.path.join(runs[method], "results.json")) as f:
          seconds = json.load(f)["train_seconds"]
        with open(os.path.join(runs[method], "config.json")) as f:
          epochs = json.load(f)["train"]["num_epochs"]
      else:
        config = pretraining_config(method, args.network, args.pretrain_epochs)
        runs[method] = os.path.join(tmp, method)
        start = time.perf_counter()
        train.run(config, runs[method])
        seconds, epochs = time.perf_counter() - start, config.train.num_epochs
      notes.append(f"{method}: {epochs} epochs on the 60,000 training images without labels, "
                   f"{seconds / 60:.1f} min on this machine.")
      print(json.dumps({"pretrained": method, "seconds": round(seconds)}), flush=True)
      rows[f"{method}, frozen backbone"], rows[f"{method}, fine-tuned"] = [], []
    if args.ceiling_epochs:
      rows["ceiling: all 60,000 labels"] = []
    for seed in seeds:
      plan = [("scratch", args.network, {})]
      for method in methods:
        plan += [(f"{method}, frozen backbone", f"{args.network},probe",
                  {"init_from.path": runs[method]}),
                 (f"{method}, fine-tuned", args.network, {"init_from.path": runs[method]})]
      if args.ceiling_epochs:
        plan.append(("ceiling: all 60,000 labels", args.network,
                     {"data.labels_per_class": -1, "data.validation_fraction": 0.0,
                      "train.num_epochs": args.ceiling_epochs}))
      for name, variant, overrides in plan:
        config = _quiet(fashion_mnist_fewlabels.get_config(variant), seed=seed,
                        **{"eval.at_end": "test", **overrides})
        start = time.perf_counter()
        result = train.run(config, os.path.join(tmp, f"{name}_{seed}".replace(" ", "_")
                                                .replace(",", "").replace(":", "")))
        rows[name].append(result["metrics"]["test"]["accuracy"])
        print(json.dumps({"run": name, "seed": seed, "test_accuracy": rows[name][-1],
                          "seconds": round(time.perf_counter() - start)}), flush=True)
  ceiling = rows.get("ceiling: all 60,000 labels")
  lines = [
      f"Fashion-MNIST, the {args.network.upper()} of configs/fashion_mnist_fewlabels.py, 600 "
      f"labelled training images (60 per class), test on all 10,000; seeds {args.seeds}; "
      f"{platform.machine()}, {os.cpu_count()} cores. Each row trains 30 epochs on the 600 "
      f"(the ceiling: {args.ceiling_epochs} epochs on all 60,000 labels).",
      "", "Pre-training: " + " ".join(notes) if notes else "", "",
      "| start | test accuracy per seed | mean | gap closed per seed |", "|---|---|---|---|"]
  for name, values in rows.items():
    closed = ""
    if ceiling and name not in ("scratch", "ceiling: all 60,000 labels"):
      closed = ", ".join(f"{(v - s) / (c - s):.2f}"
                         for v, s, c in zip(values, rows["scratch"], ceiling))
    lines.append(f"| {name} | {', '.join(f'{v:.4f}' for v in values)} | "
                 f"{statistics.mean(values):.4f} | {closed} |")
  emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
  main()
