"""Does masked-LM pre-training pay for text classification? configs/fortunes_bert.py: a
BERT-mini encoder classifies 6 fortune categories, from scratch and fine-tuned after
a masked-LM pre-training on every fortune file's texts; test accuracy and macro-F1 on the
fixed held-out split, per seed. Also the speed figures: tokenizing all fortunes, and
masked-LM tokens/s of the pre-training and of a BERT-mini.

  python -m bench.text_pretraining [--seeds=0,1,2] [--pretrain_epochs=12] [--epochs=10]
      [--tokenizer=wordpiece:4096] [--lrs=1e-3,5e-4] [--pretrained=RUN] [--speed_only]
      [--out=bench/results/text_pretraining_cpu2.md]      # needs: apt-get install fortunes

The pre-training runs once (seed 0) and its tokenizer (trained on its texts) serves every
classifier, from scratch too, so the two differ in their initial weights alone. Each seed
then trains the classifier both ways with the same data order. The pre-training's texts
include the classification's test texts, without their labels (as a real pre-training
corpus would).
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
flags.DEFINE_integer("pretrain_epochs", None, "Masked-LM epochs over every fortune file "
                     "(default: the mlm config's).")
flags.DEFINE_integer("pretrain_batch", None, "Masked-LM batch size (default: the config's).")
flags.DEFINE_float("pretrain_lr", None, "Masked-LM peak learning rate (default: the config's).")
flags.DEFINE_integer("epochs", 10, "Classification epochs.")
flags.DEFINE_list("lrs", ["1e-3", "5e-4"], "Classification peak learning rates (each both "
                  "ways, every seed).")
flags.DEFINE_string("tokenizer", "wordpiece:4096", "config.data.tokenizer of the pre-training.")
flags.DEFINE_integer("seq_len", 64, "Tokens per text.")
flags.DEFINE_string("pretrained", "", "A finished masked-LM run (configs/fortunes_bert.py:mlm "
                    "with --config.data.tokenizer=...) to fine-tune from instead of pre-training "
                    "here; its own settings and figures are reported.")
flags.DEFINE_integer("speed_steps", 60, "Steps of the BERT-mini speed run (0: skip it).")
flags.DEFINE_bool("speed_only", False, "Only the speed figures (tokenizing; BERT-mini's "
                  "masked-LM tokens/s): no pre-training or classification.")
flags.DEFINE_string("out", "", "Also write the table (markdown) here.")


def _quiet(config, **overrides):
  with config.unlocked():
    config.report.update(plots=False, html=False, tensorboard=False)
    config.update_from_flattened_dict(overrides)
  return config


def _sized(tokenizer_vocab: int, seq_len: int) -> dict:
  return {"model.vocab_size": tokenizer_vocab, "data.seq_len": seq_len,
          "model.max_positions": seq_len}


def _tokenizing_seconds(spec: str) -> tuple[float, float, int]:
  """(seconds to train the tokenizer, seconds to encode (the best of 3), texts) on every
  fortune file."""
  from bigjax.data import text_classification as tc
  texts, _ = tc.read_texts(fortunes_bert.FORTUNES)
  t0 = time.perf_counter()
  tokenizer = tc.tokenizer_for(spec, texts)
  train_s = time.perf_counter() - t0
  encode_s = []
  for _ in range(3):
    t1 = time.perf_counter()
    tc.tokenize(texts, tokenizer, 128)
    encode_s.append(time.perf_counter() - t1)
  return train_s, min(encode_s), len(texts)


def _mean(rows, column: int) -> float:
  return sum(r[column] for r in rows) / len(rows)


def _wins(scratch, pretrained) -> str:
  """Seed by seed (rows in seed order): how often the pre-trained classifier is ahead."""
  acc = sum(p[3] > s[3] for s, p in zip(scratch, pretrained))
  f1 = sum(p[4] > s[4] for s, p in zip(scratch, pretrained))
  return (f"Pre-training wins on {acc} of {len(scratch)} seeds in accuracy, {f1} of "
          f"{len(scratch)} in macro-F1.")


def main(argv):
  del argv
  cli._quiet_logs()
  f = flags.FLAGS
  vocab = int(f.tokenizer.split(":")[1]) if ":" in f.tokenizer else 260
  rows, speed = [], []
  train_s, encode_s, n_texts = _tokenizing_seconds(f.tokenizer)
  speed.append(f"tokenizing every fortune file ({n_texts:,} texts) with {f.tokenizer}: "
               f"{train_s:.2f} s to train the tokenizer, {encode_s:.2f} s to encode")
  with tempfile.TemporaryDirectory() as tmp:
    if f.speed_steps:
      from bigjax.models import bert
      mini = {f"model.{k}": v for k, v in bert.sized("mini").items()}
      results = train.run(_quiet(fortunes_bert.get_config("mlm"), **{
          **mini, **_sized(vocab, f.seq_len), "data.tokenizer": f.tokenizer,
          "train.num_steps": f.speed_steps, "train.batch_size": 32,
          "eval.at_end": "", "eval.every_epoch": ""}), os.path.join(tmp, "mini"))
      speed.append(f"BERT-mini ({results['num_params']:,} parameters) masked-LM: "
                   f"{results['steady_examples_per_second'] * f.seq_len:,.0f} tokens/s "
                   f"(batch 32 x {f.seq_len} tokens, texts packed end to end)")
    if f.speed_only:
      emit(f"Speed ({os.cpu_count()} CPU cores, Python {platform.python_version()}):\n\n"
           + "\n".join(f"- {s}" for s in speed) + "\n", f.out or None)
      return
    if f.pretrained:  # reported from its own records
      pretrained = os.path.abspath(f.pretrained)
      with open(os.path.join(pretrained, "results.json")) as log:
        mlm = json.load(log)
      with open(os.path.join(pretrained, "config.json")) as log:
        mlm_config = json.load(log)
      pretrain_s = mlm["train_seconds"]
    else:
      start = time.perf_counter()
      pretrained = os.path.join(tmp, "mlm")
      chosen = {"train.num_epochs": f.pretrain_epochs, "train.batch_size": f.pretrain_batch,
                "optimizer.learning_rate": f.pretrain_lr}
      mlm_config = _quiet(fortunes_bert.get_config("mlm"), **{
          **_sized(vocab, f.seq_len), "data.tokenizer": f.tokenizer,
          **{k: v for k, v in chosen.items() if v is not None}})
      mlm = train.run(mlm_config, pretrained)
      pretrain_s = time.perf_counter() - start
      mlm_config = mlm_config.to_dict()
    seq_len = mlm_config["data"]["seq_len"]
    speed.append(f"the pre-training's encoder ({mlm['num_params']:,} parameters) masked-LM: "
                 f"{mlm['steady_examples_per_second'] * seq_len:,.0f} tokens/s (batch "
                 f"{mlm_config['train']['batch_size']} x {seq_len} tokens)")
    with open(os.path.join(pretrained, "metrics.jsonl")) as log:
      mlm_rows = [json.loads(line) for line in log]
    mlm_losses = [r["loss"] for r in mlm_rows if r.get("split") == "train"]
    mlm_test = mlm["metrics"]["test"]
    vocab = mlm_config["model"]["vocab_size"]
    shared = {**_sized(vocab, seq_len),
              "data.tokenizer": os.path.join(pretrained, "tokenizer.json"),
              "train.num_epochs": f.epochs}
    for lr in map(float, f.lrs):
      for seed in map(int, f.seeds):
        for how, extra in (("scratch", {}), ("pre-trained", {
            "init_from.path": pretrained, "init_from.skip": "^(mlm_|pooler|classifier)"})):
          t0 = time.perf_counter()
          results = train.run(_quiet(fortunes_bert.get_config(), **{
              "seed": seed, "optimizer.learning_rate": lr, **shared, **extra}),
              os.path.join(tmp, f"{how}{seed}_{lr}"))
          test, validation = results["metrics"]["test"], results["metrics"]["validation"]
          rows.append((lr, seed, how, test["accuracy"], test["f1_macro"],
                       validation["accuracy"], time.perf_counter() - t0))
          print(rows[-1], flush=True)
  lines = ["| learning rate | seed | classifier | test accuracy | test macro-F1 | validation "
           "accuracy | seconds |", "|---|---|---|---|---|---|---|"]
  lines += [f"| {lr:g} | {s} | {how} | {acc:.4f} | {f1:.4f} | {val:.4f} | {sec:.0f} |"
            for lr, s, how, acc, f1, val, sec in rows]
  summaries = []
  for lr in map(float, f.lrs):
    means = {how: [r for r in rows if r[0] == lr and r[2] == how]
             for how in ("scratch", "pre-trained")}
    summaries.append(f"At {lr:g}: " + "; ".join(
        f"{how} mean accuracy {_mean(rs, 3):.4f}, macro-F1 {_mean(rs, 4):.4f}"
        for how, rs in means.items()) + ". " + _wins(means["scratch"], means["pre-trained"]))
  if len(f.lrs) > 1:  # each arm at the learning rate its validation accuracy prefers
    best = {how: max(map(float, f.lrs), key=lambda lr: _mean(
        [r for r in rows if r[0] == lr and r[2] == how], 5)) for how in ("scratch",
                                                                          "pre-trained")}
    chosen = {how: [r for r in rows if r[0] == lr and r[2] == how] for how, lr in best.items()}
    summaries.append(
        "Each at the learning rate of its best mean validation accuracy: " + "; ".join(
            f"{how} at {best[how]:g}, mean accuracy {_mean(rs, 3):.4f}, macro-F1 "
            f"{_mean(rs, 4):.4f}" for how, rs in chosen.items())
        + ". " + _wins(chosen["scratch"], chosen["pre-trained"]))
  emit(f"Masked-LM pre-training{' (' + f.pretrained + ')' if f.pretrained else ''}: "
       f"{mlm_config['data']['tokenizer']}, {seq_len} tokens per text, "
       f"{mlm_config['train']['num_epochs']} epochs of batch "
       f"{mlm_config['train']['batch_size']} at {mlm_config['optimizer']['learning_rate']:g}, "
       f"{mlm['steps']} steps, {pretrain_s / 60:.1f} min, masked-token loss "
       f"{mlm_losses[0]:.3f} -> {mlm_losses[-1]:.3f}, test masked accuracy "
       f"{mlm_test['masked_accuracy']:.4f}; classification: {f.epochs} epochs per run, the "
       f"same recipe both ways. Machine: {os.cpu_count()} CPU cores, Python "
       f"{platform.python_version()}.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(summaries)
       + "\n\nSpeed:\n\n" + "\n".join(f"- {s}" for s in speed) + "\n", f.out or None)


if __name__ == "__main__":
  app.run(main)
