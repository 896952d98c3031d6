"""configs/lm_tiny.py on this machine: tokens/s, and validation bits per byte after about
5 and 20 minutes of training, with a sample of generated text.

  python -m bench.lm_tiny [--minutes=5,20] [--out=bench/results/lm_tiny_cpu2.md]

A 30-step probe measures steps/s; the run is then sized to the last --minutes value with a
checkpoint at each earlier one (one cosine schedule over the whole run), and each
checkpoint is evaluated on the validation split.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

from absl import app, flags

import jax

from bigjax import cli, train
from bigjax.inference import evaluate as inference, sample
from configs import lm_tiny

flags.DEFINE_list("minutes", ["5", "20"], "Training times at which to evaluate.")
flags.DEFINE_string("out", "", "Also write the table (markdown) here.")
flags.DEFINE_string("workdir", "", "A finished run of this benchmark to report on again "
                    "(no training); its checkpoints must include the --minutes steps.")


def _config(num_steps: int, every_steps: int = 0):
  config = lm_tiny.get_config()
  with config.unlocked():
    config.train.num_steps = num_steps
    config.train.log_every_steps = 200
    config.checkpoint.every_steps = every_steps
    config.checkpoint.max_to_keep = 10
    config.eval.every_epoch = ""  # evaluated below, at the chosen checkpoints
    config.eval.at_end = "validation"
    config.report.plots = config.report.html = config.report.tensorboard = False
  return config


def main(argv):
  del argv
  cli._quiet_logs()
  minutes = [float(m) for m in flags.FLAGS.minutes]
  if flags.FLAGS.workdir:  # report on a finished run
    workdir = flags.FLAGS.workdir
    config = train.load_run_config(workdir)
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    every = config.checkpoint.every_steps
    marks = [every * (i + 1) for i in range(len(minutes) - 1)] + [results["steps"]]
    wall = float("nan")
  else:
    with tempfile.TemporaryDirectory() as probe_dir:
      probe = train.run(_config(30), probe_dir)
    steps_per_second = probe["steady_examples_per_second"] / 32
    marks = [max(1, int(m * 60 * steps_per_second)) for m in minutes]
    workdir = tempfile.mkdtemp(prefix="lm_tiny_bench_")
    config = _config(marks[-1])
    with config.unlocked():
      config.checkpoint.every_steps = marks[0]
    start = time.perf_counter()
    results = train.run(config, workdir)
    wall = time.perf_counter() - start
  tokens_per_second = results["steady_examples_per_second"] * config.data.seq_len
  rows = []
  for m, step in zip(minutes, marks):
    values = inference.evaluate(config, workdir, "validation", step=step)["validation"]
    rows.append((m, step, values["loss"], values["bits_per_byte"], values["perplexity"]))
    print(rows[-1], flush=True)
  prompt = "The "
  texts = sample.sample(config, workdir, prompt, temperature=0.8, top_p=0.95, seed=0,
                        max_new_tokens=config.model.context_length - len(prompt))
  header = (f"configs/lm_tiny.py ({results['num_params']:,} params, windows of "
            f"{config.data.seq_len} bytes, batch 32) on Debian's fortunes; "
            f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].device_kind}, "
            f"jax {jax.__version__}. Steady training speed {tokens_per_second:,.0f} tokens/s "
            f"({results['steps']} steps in {results['train_seconds']:.0f} s of training"
            + (f", {wall:.0f} s wall with evaluation and saves" if wall == wall else "")
            + "). Validation split: the 5% of the corpus before the last 5%.\n\n")
  table = ("| minutes of training (planned) | step | validation loss (nats) | bits per byte "
           "| perplexity |\n|---|---|---|---|---|\n" + "\n".join(
               f"| {m:g} | {s} | {loss:.4f} | {bpb:.3f} | {ppl:.2f} |"
               for m, s, loss, bpb, ppl in rows))
  text = (header + table + "\n\nSample from the final checkpoint (prompt \"The \", temperature "
          "0.8, top-p 0.95):\n\n```\n" + texts[0] + "\n```\n")
  print(text)
  if flags.FLAGS.out:
    with open(flags.FLAGS.out, "w") as f:
      f.write("# " + text)


if __name__ == "__main__":
  app.run(main)
