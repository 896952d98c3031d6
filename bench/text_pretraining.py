"""Does masked-LM pre-training pay for text classification? configs/fortunes_bert.py: a
BERT-tiny-shaped encoder classifies 6 fortune categories, from scratch and fine-tuned after
a masked-LM pre-training on every fortune file's texts; test accuracy and macro-F1 on the
fixed held-out split, per seed.

  python -m bench.text_pretraining [--seeds=0,1,2] [--pretrain_epochs=3] [--epochs=10]
      [--out=bench/results/text_pretraining_cpu2.md]      # needs: apt-get install fortunes

The pre-training runs once (seed 0); each seed then trains the classifier both ways with the
same data order. The pre-training's texts include the classification's test texts, without
their labels (as a real pre-training corpus would).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

from absl import app, flags

from bench._report import emit
from bigjax import cli, train
from configs import fortunes_bert

flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the classification runs.")
flags.DEFINE_integer("pretrain_epochs", 3, "Masked-LM epochs over every fortune file.")
flags.DEFINE_integer("epochs", 10, "Classification epochs.")
flags.DEFINE_string("out", "", "Also write the table (markdown) here.")


def _quiet(config, **overrides):
  with config.unlocked():
    config.report.update(plots=False, html=False, tensorboard=False)
    config.update_from_flattened_dict(overrides)
  return config


def main(argv):
  del argv
  cli._quiet_logs()
  epochs = flags.FLAGS.epochs
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    pretrained = os.path.join(tmp, "mlm")
    mlm = train.run(_quiet(fortunes_bert.get_config("mlm"),
                           **{"train.num_epochs": flags.FLAGS.pretrain_epochs}), pretrained)
    pretrain_s = time.perf_counter() - start
    with open(os.path.join(pretrained, "metrics.jsonl")) as f:
      mlm_losses = [json.loads(line)["loss"] for line in f if '"split": "train"' in line]
    for seed in map(int, flags.FLAGS.seeds):
      for how, extra in (("scratch", {}), ("pre-trained", {
          "init_from.path": pretrained, "init_from.skip": "^(mlm_|pooler|classifier)"})):
        t0 = time.perf_counter()
        results = train.run(_quiet(fortunes_bert.get_config(), **{
            "seed": seed, "train.num_epochs": epochs, **extra}), os.path.join(tmp, f"{how}{seed}"))
        test = results["metrics"]["test"]
        rows.append((seed, how, test["accuracy"], test["f1_macro"], time.perf_counter() - t0))
        print(rows[-1], flush=True)
  lines = ["| seed | classifier | test accuracy | test macro-F1 | seconds |", "|---|---|---|---|---|"]
  lines += [f"| {s} | {how} | {acc:.4f} | {f1:.4f} | {sec:.0f} |" for s, how, acc, f1, sec in rows]
  means = {how: [r for r in rows if r[1] == how] for how in ("scratch", "pre-trained")}
  summary = "; ".join(f"{how}: mean accuracy {sum(r[2] for r in rs) / len(rs):.4f}, macro-F1 "
                      f"{sum(r[3] for r in rs) / len(rs):.4f}" for how, rs in means.items())
  wins = sum(p[2] > s[2] for s, p in zip(means["scratch"], means["pre-trained"]))
  emit(f"Masked-LM pre-training: {flags.FLAGS.pretrain_epochs} epochs, {mlm['steps']} steps, "
       f"{pretrain_s:.0f} s, masked-token loss {mlm_losses[0]:.3f} -> {mlm_losses[-1]:.3f}"
       f"; classification: {epochs} epochs per run. Machine: {os.cpu_count()} CPU cores, "
       f"Python {platform.python_version()}.\n\n" + "\n".join(lines)
       + f"\n\n{summary}. Pre-training wins on {wins} of {len(means['scratch'])} seeds.\n",
       flags.FLAGS.out or None)


if __name__ == "__main__":
  app.run(main)
