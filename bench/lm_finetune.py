"""Pre-train, then fine-tune: configs/lm_tiny.py fine-tuned on one topic file of the corpus
against the same training from scratch (validation loss after the same number of steps).

  python -m bench.lm_finetune --pretrained=WORKDIR [--topic=/usr/share/games/fortunes/work]
      [--steps=300] [--out=bench/results/lm_finetune_cpu2.md]

WORKDIR is an lm_tiny run pre-trained on the whole of Debian's fortunes (bench/lm_tiny.py
leaves one). The default topic file, `work`, lies in the last 10% of the sorted corpus,
which lm_tiny holds out as validation and test, so pre-training never trained on it.
"""

from __future__ import annotations

import os
import tempfile

from absl import app, flags

import jax

from bigjax import cli, train
from bigjax.training import checkpoint
from bigjax.training.programs import Programs
from configs import lm_tiny

flags.DEFINE_string("pretrained", None, "Workdir of an lm_tiny run on the whole corpus.")
flags.DEFINE_string("topic", "/usr/share/games/fortunes/work", "The fine-tuning text.")
flags.DEFINE_integer("steps", 300, "Training steps for both runs.")
flags.DEFINE_list("finetune_lrs", ["3e-3", "3e-4"], "Peak learning rates for fine-tuning "
                  "(from scratch uses lm_tiny's 3e-3).")
flags.DEFINE_string("out", "", "Also write the table (markdown) here.")


def _config(init_from: str = "", learning_rate: float = 3e-3):
  config = lm_tiny.get_config()
  with config.unlocked():
    config.optimizer.learning_rate = learning_rate
    config.data.path = flags.FLAGS.topic
    config.train.update(num_steps=flags.FLAGS.steps, log_every_steps=100)
    config.optimizer.schedule.warmup_steps = 30
    config.eval.every_epoch = ""
    config.eval.at_end = "validation"
    config.init_from.path = init_from
    config.report.plots = config.report.html = config.report.tensorboard = False
  return config


def main(argv):
  del argv
  cli._quiet_logs()
  rows = []
  # Zero-shot: the pre-trained params on the topic's validation split, before any tuning.
  setup = Programs(_config())
  step, params = checkpoint.latest_params(flags.FLAGS.pretrained)
  zero_shot = setup.evaluate(setup.initial_state.replace(params=params), "validation")
  rows.append((f"pre-trained only (step {step} on the whole corpus)", 0, zero_shot))
  runs = [("from scratch, peak lr 3e-3", "", 3e-3)] + [
      (f"fine-tuned from the pre-trained run, peak lr {lr}", flags.FLAGS.pretrained, float(lr))
      for lr in flags.FLAGS.finetune_lrs]
  for name, init, lr in runs:
    with tempfile.TemporaryDirectory() as workdir:
      results = train.run(_config(init, lr), workdir)
    rows.append((name, results["steps"], results["metrics"]["validation"]))
    print(rows[-1][0], rows[-1][2]["loss"], flush=True)
  n_val = len(setup.data.validation)
  text = (f"lm_tiny on `{flags.FLAGS.topic}` ({os.path.getsize(flags.FLAGS.topic):,} bytes; "
          f"validation: {n_val} windows of 128 bytes, the 5% before its last 5%); the same "
          f"config and {flags.FLAGS.steps} steps for the trained rows (AdamW, 30 warmup "
          f"steps, cosine); {jax.devices()[0].device_kind}, jax {jax.__version__}.\n\n"
          "| model | steps on the topic | validation loss | bits per byte | perplexity |\n"
          "|---|---|---|---|---|\n" + "\n".join(
              f"| {name} | {steps} | {v['loss']:.4f} | {v['bits_per_byte']:.3f} | "
              f"{v['perplexity']:.2f} |" for name, steps, v in rows) + "\n")
  print(text)
  if flags.FLAGS.out:
    with open(flags.FLAGS.out, "w") as f:
      f.write("# " + text)


if __name__ == "__main__":
  flags.mark_flag_as_required("pretrained")
  app.run(main)
