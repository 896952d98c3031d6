"""bigjax's entry point.

  python run.py --config=configs/mnist.py [--config.optimizer.learning_rate=3e-4] \
      [--workdir=runs/mnist] [--mode=train|eval|predict|summary] [--compilation_cache=DIR]
  python run.py --mode=eval --workdir=runs/mnist [--step=best] [--split=test]
  python run.py --mode=predict --workdir=runs/mnist [--split=test | image.png ...]
  python run.py --mode=sample --workdir=runs/lm_tiny --prompt="Once upon" [--temperature=0.8]
"""

import os

from absl import app, flags
from ml_collections import config_flags

from bigjax import cli

config_flags.DEFINE_config_file(
    "config", None, "A config file: configs/x.py, or configs/x.py:variant.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where outputs go. Default: runs/<config name>[_<variant>].")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "summary", "sample", "export",
                                     "quantize"],
                  "train: train, evaluate and checkpoint. eval: evaluate a workdir's "
                  "checkpoint (uses the workdir's config.json when --config is not given). "
                  "predict: write a checkpoint's predictions for a split or for image files "
                  "given as arguments. summary: the per-layer depth and parameter report, "
                  "without training. sample: text from a language model's checkpoint. "
                  "export: the checkpoint as StableHLO (jax.export) and ONNX files that run "
                  "without bigjax, in WORKDIR/export (docs/export.md). quantize: the "
                  "checkpoint quantized to int8 (--quantize), scored against float.")
flags.DEFINE_string(
    "compilation_cache", os.environ.get("BIGJAX_COMPILATION_CACHE", "~/.cache/bigjax/jax"),
    "Where compiled XLA programs are kept between runs, so a second run of the same config "
    "skips most of its compile time; empty turns the cache off. Default: "
    "$BIGJAX_COMPILATION_CACHE, else ~/.cache/bigjax/jax.")
flags.DEFINE_bool("trust_plugins", False, "eval/predict/sample/export without --config: let the "
                  "workdir's config.json import the code it names (\"package.module:name\"); "
                  "off, only built-in names are resolved from it.")
flags.DEFINE_string("split", None, "eval: comma-separated splits (default: config.eval.at_end)."
                    " predict: one split (default: test).")
flags.DEFINE_string("step", "latest",
                    "eval/predict/sample/export/quantize: which checkpoint: latest, best, or a step.")
flags.DEFINE_string("prompt", None, "sample: the text to continue (default: config.sample).")
flags.DEFINE_integer("max_new_tokens", None, "sample: tokens (bytes) to generate.")
flags.DEFINE_float("temperature", None, "sample: 0 = always the most likely token.")
flags.DEFINE_integer("top_k", None, "sample: keep the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", None, "sample: keep the most likely tokens up to this "
                   "probability mass (1 = all).")
flags.DEFINE_integer("num_samples", None, "sample: how many continuations.")
flags.DEFINE_string("export_dir", None, "export: the folder to write (default WORKDIR/export, "
                    "or WORKDIR/export_hf).")
flags.DEFINE_enum("export_format", "jax", ["jax", "hf"], "export: jax (StableHLO and ONNX) "
                  "or hf (a Hugging Face checkpoint: GPT-2, Llama, Qwen2, BERT, ViT).")
flags.DEFINE_bool("onnx", True, "export: also write model.onnx (needs bigjax[export]).")
flags.DEFINE_enum("quantize", None, ["weights", "dynamic", "static"],
                  "quantize/eval/export: int8 weights only, or weights and activations with "
                  "per-batch (dynamic) or calibrated (static) scales (docs/compression.md).")
flags.DEFINE_integer("calibration_examples", 512, "quantize/export --quantize=static: "
                     "training examples that calibrate the activation scales.")


def main(argv):
  files = argv[1:]
  if files and flags.FLAGS.mode != "predict":
    raise app.UsageError(f"Unexpected arguments: {files} (image files are for --mode=predict)")
  cli.main(flags.FLAGS, files)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
