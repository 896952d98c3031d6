"""The eval and predict modes: a saved run's params on a split or on image files."""

from __future__ import annotations

import csv
import logging as py_logging
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from bigjax.core import metrics as metrics_lib
from bigjax.data.images import load_image_files
from bigjax.inference import portable
from bigjax.outputs.logs import write_json
from bigjax.train import _is_writer
from bigjax.training import checkpoint
from bigjax.training.programs import Programs
from bigjax.training.programs import with_kept_tokenizer

logging = py_logging.getLogger(__name__)


def restore(config: ml_collections.ConfigDict, workdir: str,
            step: str | int = "latest") -> tuple[Programs, Any, int]:
  """(programs, train state, step) of a workdir's checkpoint: "latest", "best" or a step."""
  workdir = os.path.abspath(workdir)
  checkpoint.require(workdir, step)
  programs = Programs(with_kept_tokenizer(config, workdir))
  state, _, chosen = checkpoint.read(workdir, step, programs.initial_state,
                                     input_channels=programs.data.train.inputs.shape[-1])
  folder = checkpoint.checkpoint_dir(workdir, checkpoint.BEST if step == "best"
                                     else checkpoint.LATEST)
  logging.info("restored step %d from %s", chosen, folder)
  return programs, state, chosen


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             splits: str | Sequence[str] | None = None, step: str | int = "latest") -> dict:
  """Evaluates a checkpoint on `splits` (default config.eval.at_end); writes
  eval_results.json (per split: every configured metric)."""
  programs, state, chosen = restore(config, workdir, step)
  names = programs.split_names(splits if splits is not None else config.eval.at_end,
                                "--split")
  results: dict[str, Any] = {"step": chosen, "checkpoint": str(step)}
  for split in names:
    results[split] = programs.evaluate(state, split)
    logging.info("eval %s at step %d | %s (%d examples)", split, chosen, " ".join(
        f"{k} {v:.4f}" for k, v in metrics_lib.scalars(results[split]).items() if k != "count"),
        results[split]["count"])
  if _is_writer():
    write_json(os.path.join(workdir, "eval_results.json"), results)
  return results


def predict(config: ml_collections.ConfigDict, workdir: str, split: str | None = None,
            files: Sequence[str] = (), step: str | int = "latest") -> str:
  """Writes predictions (class, its name, confidence, every class probability) for a split
  (predictions_<split>.csv) or for image files (predictions_files.csv); returns the path."""
  if files and os.path.exists(os.path.join(workdir, portable.SPEC_FILE)):
    # From the workdir alone: no training data needed.
    files = portable.expand_files(files)
    predictor = portable.load(workdir, config, step)
    logging.info("restored step %d from %s (the workdir alone)", predictor.step, workdir)
    probabilities = portable.predict_files(predictor, files)
    return _write_predictions(workdir, predictor.class_names, list(files), None,
                              probabilities, "predictions_files.csv", split)
  programs, state, _ = restore(config, workdir, step)
  if programs.data.is_regression:
    return _predict_regression(programs, state, workdir, split, files)
  names = programs.data.class_names
  if files:  # a run trained before inference.json existed
    files = portable.expand_files(files)
    images = load_image_files(files, programs.data.train.inputs.shape[1:], programs.data.stats)
    keys, labels, out_name = list(files), None, "predictions_files.csv"
    probabilities = programs.probabilities(state, jax.device_put(images))
  else:
    split = split or "test"
    programs.check_split(split, "--split")
    images, labels = programs.splits[split]
    keys, out_name = list(range(len(labels))), f"predictions_{split}.csv"
    labels = np.asarray(labels)
    probabilities = programs.probabilities(state, images)
  return _write_predictions(workdir, names, keys, labels, probabilities, out_name, split)


def _write_predictions(workdir: str, names: Sequence[str], keys: list, labels, probabilities,
                       out_name: str, split: str | None) -> str:
  """predictions_<split|files>.csv: the class, its name, confidence and every probability."""
  files = labels is None
  predicted = probabilities.argmax(-1)
  path = os.path.join(os.path.abspath(workdir), out_name)
  with open(path + ".tmp", "w", newline="") as f:
    out = csv.writer(f)
    header = ["file" if files else "index"] + ([] if labels is None else ["label"])
    out.writerow(header + ["predicted", "predicted_name", "confidence"]
                 + [f"p_{name}" for name in names])
    for i, key in enumerate(keys):
      row = [key] + ([] if labels is None else [int(labels[i])])
      out.writerow(row + [int(predicted[i]), names[predicted[i]],
                          f"{probabilities[i, predicted[i]]:.6f}"]
                   + [f"{p:.6f}" for p in probabilities[i]])
  os.replace(path + ".tmp", path)
  if files:
    for key, guess, p in zip(keys, predicted, probabilities):
      logging.info("%s: %s (%.1f%%)", key, names[guess], 100 * p[guess])
  else:
    logging.info("%d %s predictions, accuracy %.4f", len(keys), split,
                 float((predicted == labels).mean()))
  logging.info("predictions written to %s", path)
  return path


def _predict_regression(programs: Programs, state, workdir: str, split: str | None,
                        files: Sequence[str]) -> str:
  if files:
    raise ValueError("This run is a regression on feature vectors; --mode=predict takes a "
                     "--split for it, not image files.")
  split = split or "test"
  programs.check_split(split, "--split")
  images, labels = programs.splits[split]
  outputs = programs.outputs(state, images)
  path = os.path.join(os.path.abspath(workdir), f"predictions_{split}.csv")
  with open(path + ".tmp", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["index", "target"] + [f"prediction_{j}" if outputs.shape[1] > 1
                                        else "prediction" for j in range(outputs.shape[1])])
    for i, (target, row) in enumerate(zip(np.asarray(labels), outputs)):
      out.writerow([i, f"{float(target):.6g}"] + [f"{v:.6g}" for v in row])
  os.replace(path + ".tmp", path)
  logging.info("%d %s predictions written to %s", len(outputs), split, path)
  return path
