"""Few labels: does self-supervised pre-training help when only 600 labels exist?

Pre-trains the denoising autoencoder (configs/fashion_mnist_pretrain.py) on all 60,000
Fashion-MNIST training images without their labels, once; then trains the 784-256-128-10
MLP on 600 labelled images (configs/fashion_mnist_fewlabels.py) from scratch and from the
pre-trained encoder, for each seed. Writes a Markdown table.

  python -m bench.few_labels --seeds=0,1,2 --out=bench/results/few_labels_cpu2.md
"""

import argparse
import json
import os
import platform
import statistics
import tempfile

from bigjax import cli, train
from configs import fashion_mnist_fewlabels, fashion_mnist_pretrain
from bench._report import emit


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  cli._quiet_logs()
  seeds = [int(s) for s in args.seeds.split(",")]
  rows = {"scratch": [], "pre-trained encoder": []}
  with tempfile.TemporaryDirectory() as tmp:
    pretrain = os.path.join(tmp, "pretrain")
    pre = train.run(fashion_mnist_pretrain.get_config(), pretrain)
    for seed in seeds:
      for name, init in (("scratch", ""), ("pre-trained encoder", pretrain)):
        config = fashion_mnist_fewlabels.get_config()
        with config.unlocked():
          config.seed = seed
          config.init_from.path = init
        result = train.run(config, os.path.join(tmp, f"{name}_{seed}".replace(" ", "_")))
        rows[name].append(result["test_accuracy"])
        print(json.dumps({"run": name, "seed": seed, "test_accuracy": result["test_accuracy"],
                          "train_seconds": round(result["train_seconds"], 2)}), flush=True)
  lines = [
      f"Fashion-MNIST, 600 labelled training images (60 per class), test on all 10,000; "
      f"seeds {args.seeds}; {platform.machine()}, {os.cpu_count()} cores.",
      f"Pre-training: denoising autoencoder, 30 epochs on 60,000 unlabelled images, "
      f"{pre['train_seconds']:.0f} s, test reconstruction MSE {pre['test_loss']:.4f}.", "",
      "| start | test accuracy per seed | mean |", "|---|---|---|"]
  for name, values in rows.items():
    lines.append(f"| {name} | {', '.join(f'{v:.4f}' for v in values)} | "
                 f"{statistics.mean(values):.4f} |")
  gain = statistics.mean(rows["pre-trained encoder"]) - statistics.mean(rows["scratch"])
  lines += ["", f"Pre-training changes mean test accuracy by {gain * 100:+.2f} points."]
  text = "\n".join(lines) + "\n"
  emit(text, args.out)


if __name__ == "__main__":
  main()
