"""What each bad input prints: run.py on a list of mistakes, one row per case with its exit
status, whether it ended in one clear line, a traceback, or silence, and the line itself.

  python -m bench.bad_inputs [--out=docs/bad_inputs.md]   # about 2 minutes on 2 CPU cores

Cases use the scikit-learn digits (no download) and Debian's Fashion-MNIST where a case is
about IDX files.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags

from bench._report import emit

flags.DEFINE_string("out", "", "Also write the table (markdown) here.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = "/usr/share/datasets/fashion-mnist"
QUIET = ["--config.report.plots=False", "--config.report.html=False",
         "--config.report.tensorboard=False"]
DIGITS = ["--config=configs/digits.py", *QUIET]
RECORDS = lambda tmp, name="bad_records": [
    "--config.data.source=array_record", f"--config.data.path={tmp}/{name}",
    "--config.data.placement=host", "--config.train.num_epochs=1"]


LM = ["--config=configs/lm_tiny.py:small", *QUIET]
TOKENS = lambda tmp: ["--config.data.source=tokens", f"--config.data.path={tmp}/tokens",
                      "--config.data.placement=host"]


def cases(tmp: str, trained: str) -> list[tuple[str, list[str], str]]:
  """(what, run.py arguments, what a user should see: error | warning)."""
  w = lambda name: f"--workdir={tmp}/{name}"
  return [
      ("mistyped override key", [*DIGITS, w("a"), "--config.train.num_epochz=2"], "error"),
      ("override of the wrong type", [*DIGITS, w("a"), "--config.train.num_epochs=abc"],
       "error"),
      ("unknown model", [*DIGITS, w("a"), "--config.model.name=mpl"], "error"),
      ("unknown loss", [*DIGITS, w("a"), "--config.loss.name=crossentropy"], "error"),
      ("unknown optimizer", [*DIGITS, w("a"), "--config.optimizer.name=adamm"], "error"),
      ("unknown metric", [*DIGITS, w("a"), "--config.eval.metrics=loss,acuracy"], "error"),
      ("negative layer width", [*DIGITS, w("a"), "--config.model.hidden_sizes=(-3,)"],
       "error"),
      ("num_epochs=-1", [*DIGITS, w("a"), "--config.train.num_epochs=-1"], "error"),
      ("batch_size=0", [*DIGITS, w("a"), "--config.train.batch_size=0"], "error"),
      ("batch larger than the data", [*DIGITS, w("a"), "--config.train.batch_size=100000"],
       "error"),
      ("steps_per_call=0", [*DIGITS, w("a"), "--config.train.steps_per_call=0"], "error"),
      ("learning rate NaN", [*DIGITS, w("nan"), "--config.optimizer.learning_rate=nan"],
       "error"),
      ("learning rate 1e6 (diverges)", [*DIGITS, w("big"),
                                        "--config.optimizer.learning_rate=1e6"], "warning"),
      ("empty --workdir", [*DIGITS, "--workdir="], "error"),
      ("workdir that cannot be created", [*DIGITS, "--workdir=/proc/bigjax_run"], "error"),
      ("no --config", [w("a")], "error"),
      ("missing config file", ["--config=configs/nope.py", w("a")], "error"),
      ("config file with a syntax error", [f"--config={tmp}/syntax.py", w("a")], "error"),
      ("config file without get_config", [f"--config={tmp}/no_get.py", w("a")], "error"),
      ("unknown config variant", ["--config=configs/mnist.py:cnnn", w("a")], "error"),
      ("missing IDX folder", ["--config=configs/fashion_mnist.py", w("a"),
                              "--config.data.source=idx", "--config.data.path=/nonexistent"],
       "error"),
      ("damaged gzip IDX file", ["--config=configs/fashion_mnist.py", w("a"),
                                 "--config.data.source=idx", f"--config.data.path={tmp}/idx"],
       "error"),
      ("one-class image folder", [*DIGITS, w("a"), "--config.data.source=folder",
                                  f"--config.data.path={tmp}/one_class"], "error"),
      ("--step=foo", ["--mode=eval", f"--workdir={trained}", "--step=foo"], "error"),
      ("eval of a workdir with no run", ["--mode=eval", w("empty")], "error"),
      ("eval --step of a missing step", ["--mode=eval", f"--workdir={trained}",
                                         "--step=99999"], "error"),
      ("predict on a missing image", ["--mode=predict", f"--workdir={trained}",
                                      f"{tmp}/missing.png"], "error"),
      ("predict on a file that is no image", ["--mode=predict", f"--workdir={trained}",
                                              f"{tmp}/syntax.py"], "error"),
      ("sample from an image classifier", ["--mode=sample", f"--workdir={trained}"], "error"),
      ("config.json that names code", ["--mode=eval", f"--workdir={tmp}/plugin_run"], "error"),
      ("flipped bit in the latest checkpoint", ["--mode=eval", f"--workdir={tmp}/flipped"],
       "warning"),
      ("teacher of other classes", [*DIGITS, w("a"), f"--config.distill.teacher={trained}",
                                    "--config.data.classes=(0,1,2)"], "error"),
      ("pruning that matches no kernel", [*DIGITS, w("a"), "--config.prune.sparsity=0.5",
                                          "--config.prune.include=^nothing"], "error"),
      ("sparsity of 1.5", [*DIGITS, w("a"), "--config.prune.sparsity=1.5"], "error"),
      ("--mode=quantize without --quantize", ["--mode=quantize", f"--workdir={trained}"],
       "error"),
      ("static QAT through convolutions", ["--config=configs/digits.py:cnn", *QUIET, w("a"),
                                           "--config.quantize.aware=static"], "error"),
      ("int8 weights of a CNN (convolutions stay float)",
       ["--mode=quantize", "--quantize=weights", f"--workdir={tmp}/cnn"], "warning"),
      ("export of a run without inference.json", ["--mode=export", f"--workdir={tmp}/old"],
       "error"),
      ("contrastive loss without two views", [*DIGITS, w("a"), "--config.loss.name=nt_xent",
                                              "--config.eval.every_epoch=",
                                              "--config.eval.at_end="], "error"),
      ("contrastive loss with evaluation on", ["--config=configs/fashion_mnist_simclr.py:small",
                                               *QUIET, w("a"), "--config.eval.at_end=test"],
       "error"),
      ("records folder prepared as tfrecord", [*DIGITS, w("a"),
                                               "--config.data.source=array_record",
                                               f"--config.data.path={tmp}/tfrecords"], "error"),
      ("records folder with an undecodable image", [*DIGITS, w("a"), *RECORDS(tmp)], "error"),
      ("the same, skip_bad_records=True", [*DIGITS, w("skip"), *RECORDS(tmp),
                                           "--config.data.skip_bad_records=True"], "warning"),
      ("worker_count above the CPUs", [*DIGITS, w("workers"), *RECORDS(tmp, "good_records"),
                                       "--config.data.worker_count=64"], "warning"),
      ("negative worker_count", [*DIGITS, w("negative"), *RECORDS(tmp, "good_records"),
                                 "--config.data.worker_count=-1"], "error"),
      ("tokens source given a records folder", [*LM, w("a"), "--config.data.source=tokens",
                                                f"--config.data.path={tmp}/good_records"],
       "error"),
      ("tokens folder past the model's vocabulary", [*LM, w("a"), *TOKENS(tmp),
                                                     "--config.model.vocab_size=100"], "error"),
      ("tokens folder, seq_len longer than a split", [*LM, w("a"), *TOKENS(tmp),
                                                      "--config.data.seq_len=100000"], "error"),
      ("contrastive backbone that is no image family",
       ["--config=configs/fashion_mnist_simclr.py:small", *QUIET, w("a"),
        "--config.model.backbone.name=gpt"], "error"),
  ]


def _prepare(tmp: str, trained: str) -> None:
  with open(f"{tmp}/syntax.py", "w") as f:
    f.write("def get_config(:\n")
  with open(f"{tmp}/no_get.py", "w") as f:
    f.write("x = 1\n")
  os.makedirs(f"{tmp}/idx")
  if os.path.isdir(FASHION):
    for name in os.listdir(FASHION):
      shutil.copy(os.path.join(FASHION, name), f"{tmp}/idx/{name}")
    path = f"{tmp}/idx/train-images-idx3-ubyte.gz"
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])  # cut mid-stream
  else:  # a gzip of something else
    with gzip.open(f"{tmp}/idx/train-images-idx3-ubyte.gz", "wb") as f:
      f.write(b"\x00" * 10)
  from PIL import Image
  os.makedirs(f"{tmp}/one_class/cat")
  for i in range(100):
    Image.new("L", (8, 8), color=i * 2).save(f"{tmp}/one_class/cat/{i}.png")
  plugin = f"{tmp}/plugin_run"
  shutil.copytree(trained, plugin)
  config = json.load(open(f"{plugin}/config.json"))
  config["model"] = {"name": "subprocess:Popen", "args": f"touch {tmp}/ran", "shell": True}
  json.dump(config, open(f"{plugin}/config.json", "w"))
  old = f"{tmp}/old"  # a run from before inference.json
  shutil.copytree(trained, old)
  os.remove(f"{old}/inference.json")
  subprocess.run([sys.executable, "run.py", "--config=configs/digits.py:cnn", *QUIET,
                  f"--workdir={tmp}/cnn", "--config.train.num_epochs=1"], cwd=ROOT,
                 capture_output=True, check=True)
  _records(tmp)
  flipped = f"{tmp}/flipped"
  shutil.copytree(trained, flipped)
  latest = max(int(s) for s in os.listdir(f"{flipped}/checkpoints") if s.isdigit())
  files = [os.path.join(r, n) for r, _, ns in os.walk(f"{flipped}/checkpoints/{latest}/state")
           for n in ns if os.path.basename(r) == "d"]
  target = max(files, key=os.path.getsize)
  data = bytearray(open(target, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(target, "wb").write(bytes(data))


def _records(tmp: str) -> None:
  """digits as records folders: one sound, one whose 101st training image does not decode;
  and a folder of tfrecord files."""
  from bigjax.data import records, sources
  from configs import digits
  raw = sources.load_raw(digits.get_config().data)
  for name in ("good_records", "bad_records"):
    train = [(image, label) for image, label in zip(raw.train_inputs, raw.train_targets)]
    if name == "bad_records":
      train[100] = (b"\x89PNG not really", train[100][1])
    counts = {"train": records.write_split(f"{tmp}/{name}", "train", train),
              "test": records.write_split(f"{tmp}/{name}", "test",
                                          zip(raw.test_inputs, raw.test_targets))}
    records.write_info(f"{tmp}/{name}", raw.class_names, raw.train_inputs.shape[1:], counts,
                       raw.pixel_max)
  os.makedirs(f"{tmp}/tfrecords")
  open(f"{tmp}/tfrecords/digits-train.tfrecord-00000-of-00001", "wb").close()
  from bigjax.data import token_files  # a language model's corpus as a tokens folder
  with open(f"{tmp}/corpus.txt", "w") as f:
    f.write("".join(f"Line {i}: caf\u00e9 au lait, {i * i} times.\n" for i in range(3000)))
  from configs import lm_tiny
  token_files.write_corpus(dict(lm_tiny.get_config("small").data, path=f"{tmp}/corpus.txt"),
                           f"{tmp}/tokens")


def classify(proc: subprocess.CompletedProcess) -> tuple[str, str]:
  """(one line | traceback | warned | silent, the line a user reads)."""
  err = proc.stderr
  lines = [line for line in err.splitlines() if line.strip()]
  if "Traceback (most recent call last)" in err:
    return "traceback", (lines[-1] if lines else "")[:160]
  if proc.returncode != 0:
    error = [line for line in lines if line.startswith(("bigjax: error:", "FATAL Flags"))]
    return "one line", (error[0] if error else lines[-1] if lines else "")[:400]
  warned = [line for line in lines if "WARNING" in line or " is damaged" in line
            or "diverging" in line]
  if warned:
    return "warned", warned[0].split(" ", 1)[-1][:400]
  return "silent", ""


def main(argv):
  del argv
  env = dict(os.environ, BIGJAX_COMPILATION_CACHE="", JAX_PLATFORMS="cpu")
  rows, counts = [], collections.Counter()
  with tempfile.TemporaryDirectory() as tmp:
    trained = f"{tmp}/trained"
    subprocess.run([sys.executable, "run.py", *DIGITS, f"--workdir={trained}",
                    "--config.train.num_epochs=2", "--config.checkpoint.min_interval_seconds=0"],
                   cwd=ROOT, env=env, capture_output=True, check=True, timeout=600)
    _prepare(tmp, trained)
    for what, args, expected in cases(tmp, trained):
      proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
      outcome, line = classify(proc)
      counts[outcome] += 1
      shown = " ".join(a for a in args if a not in QUIET).replace(tmp, "TMP")
      rows.append(f"| {what} | `{shown}` | {proc.returncode} | {outcome} | "
                  f"{line.replace(tmp, 'TMP').replace('|', '/')} |")
      print(rows[-1], flush=True)
    assert not os.path.exists(f"{tmp}/ran"), "a workdir's config.json ran its command"
  summary = ", ".join(f"{n} {k}" for k, n in counts.most_common())
  emit("| input | arguments | exit | outcome | what it prints |\n|---|---|---|---|---|\n"
       + "\n".join(rows) + f"\n\n{len(rows)} cases: {summary}.\n", flags.FLAGS.out or None)


if __name__ == "__main__":
  app.run(main)
