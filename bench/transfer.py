"""Transfer: a CNN pre-trained on Fashion-MNIST classes 0-4, fine-tuned on classes 5-9.

Pre-trains the lessons' CNN (configs/fashion_mnist.py:cnn) on classes 0-4 once, then
trains a new 5-way head on classes 5-9 four ways, for each seed: from scratch, full
fine-tuning, frozen backbone (only the head trains), and LoRA (rank 4 adapters on every
kernel, base frozen, the new head trains). Reports test accuracy on classes 5-9 and
trainable parameters. Writes a Markdown table.

  python -m bench.transfer --seeds=0,1,2 --out=bench/results/transfer_cpu2.md
"""

import argparse
import json
import os
import platform
import statistics
import tempfile

from bigjax import cli, train
from configs import fashion_mnist
from bench._report import emit

SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def cnn_config(classes, epochs, labels_per_class=-1):
  config = fashion_mnist.get_config("cnn")
  with config.unlocked():
    config.data.classes = classes
    config.data.labels_per_class = labels_per_class
    config.model.num_classes = len(classes)
    config.train.num_epochs = epochs
    config.eval.every_epoch = ""
    config.checkpoint.best_metric = ""
    config.report.plots = config.report.html = config.report.tensorboard = False
  return config


VARIANTS = {
    "scratch": {},
    "full fine-tune": {"init_from.path": "PRE", "init_from.skip": "^head/"},
    "frozen backbone": {"init_from.path": "PRE", "init_from.skip": "^head/",
                        "finetune.freeze": "^(conv_|dense_0/)"},
    "LoRA rank 4": {"init_from.path": "PRE", "init_from.skip": "^head/", "lora.rank": 4,
                    "lora.train_base": "head/"},
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--labels_per_class", type=int, default=-1)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  cli._quiet_logs()
  seeds = [int(s) for s in args.seeds.split(",")]
  accuracy = {name: [] for name in VARIANTS}
  trainable = {}
  with tempfile.TemporaryDirectory() as tmp:
    pre_dir = os.path.join(tmp, "pre")
    pre = train.run(cnn_config(SOURCE, 2), pre_dir)
    for seed in seeds:
      for name, overrides in VARIANTS.items():
        config = cnn_config(TARGET, args.epochs, args.labels_per_class)
        with config.unlocked():
          config.seed = seed
          for key, value in overrides.items():
            section, field = key.split(".")
            config[section][field] = pre_dir if value == "PRE" else value
        result = train.run(config, os.path.join(tmp, f"{name}_{seed}".replace(" ", "_")))
        accuracy[name].append(result["test_accuracy"])
        trainable[name] = result["trainable_params"]
        print(json.dumps({"run": name, "seed": seed, "test_accuracy": result["test_accuracy"],
                          "trainable_params": result["trainable_params"],
                          "train_seconds": round(result["train_seconds"], 1)}), flush=True)
  labels = ("all" if args.labels_per_class < 0 else f"{args.labels_per_class} per class")
  lines = [
      f"Fashion-MNIST: the lessons' CNN pre-trained 2 epochs on classes 0-4 (test accuracy "
      f"{pre['test_accuracy']:.4f} on their 5,000 test images), then {args.epochs} epoch(s) "
      f"on classes 5-9 ({labels} training labels) with a new 5-way head; test on the 5,000 "
      f"test images of classes 5-9. Seeds {args.seeds}; {platform.machine()}, "
      f"{os.cpu_count()} cores.", "",
      "| start | trainable params | test accuracy per seed | mean |", "|---|---|---|---|"]
  for name, values in accuracy.items():
    lines.append(f"| {name} | {trainable[name]:,} | {', '.join(f'{v:.4f}' for v in values)} | "
                 f"{statistics.mean(values):.4f} |")
  text = "\n".join(lines) + "\n"
  emit(text, args.out)


if __name__ == "__main__":
  main()
