"""The files a run leaves for people: metrics.csv, pictures, and the report.

Called by the driver (process 0 only); everything here reads what the run already has and
writes files into the workdir.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
from typing import Any

import jax
import numpy as np

from bigjax.core import metrics
from bigjax.finetuning import lora
from bigjax.outputs import report
from bigjax.outputs import summary

GRID_SIZE = 25  # the lessons' 5x5 grid


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_metrics_csv(workdir: str) -> str:
  """metrics.csv beside metrics.jsonl: one row per log line, one column per key."""
  rows = read_metrics(workdir)
  columns = ["split", "step", "epoch"]
  columns += sorted({k for r in rows for k in r} - set(columns))
  path = os.path.join(workdir, "metrics.csv")
  with open(path + ".tmp", "w", newline="") as f:
    out = csv.DictWriter(f, columns)
    out.writeheader()
    out.writerows(rows)
  os.replace(path + ".tmp", path)
  return path


def plot_learning_curves(workdir: str, steps_per_epoch: int) -> str:
  from bigjax.outputs import plots
  return plots.learning_curves(read_metrics(workdir),
                               os.path.join(workdir, "learning_curves.png"), steps_per_epoch)


def picture_files(workdir: str) -> list[tuple[str, str]]:
  """(name, path) of every picture the run drew in its workdir (PNG), by name."""
  names = sorted(f for f in os.listdir(workdir) if f.endswith(".png"))
  return [(os.path.splitext(f)[0], os.path.join(workdir, f)) for f in names]


def picture_split(splits) -> str:
  """The split the pictures show: test when there is one."""
  return "test" if "test" in splits else list(splits)[-1]


def prediction_pictures(workdir: str, split: str, images: np.ndarray, labels: np.ndarray,
                        probabilities: np.ndarray, class_names, stats) -> list[report.Picture]:
  """The 5x5 grid of the first examples, and the most confidently wrong ones (images only:
  none for token sequences)."""
  from bigjax.outputs import plots
  if images.ndim != 4:
    return []
  predicted = probabilities.argmax(-1)
  confidence = probabilities.max(-1)
  shown = plots.displayable(images[:GRID_SIZE], stats)
  pictures = [report.Picture(
      plots.prediction_grid(shown, labels[:GRID_SIZE], predicted[:GRID_SIZE],
                            confidence[:GRID_SIZE], class_names,
                            os.path.join(workdir, f"predictions_{split}.png"),
                            f"The first {len(shown)} {split} images: predicted (confidence) / "
                            "true; mistakes in red"),
      f"The first {len(shown)} {split} images with predicted and true labels.")]
  wrong = np.flatnonzero(predicted != labels)
  if len(wrong):
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:GRID_SIZE]
    pictures.append(report.Picture(
        plots.prediction_grid(plots.displayable(images[worst], stats), labels[worst],
                              predicted[worst], confidence[worst], class_names,
                              os.path.join(workdir, f"confident_mistakes_{split}.png"),
                              f"The {len(worst)} most confidently wrong {split} images "
                              f"(of {len(wrong):,} mistakes)"),
        f"The most confidently wrong {split} images."))
  return pictures


def final_outputs(workdir: str, config, programs, state, results: dict,
                  outputs: np.ndarray | None = None) -> None:
  """Pictures, then report.md and report.html, at the end of training. `outputs`: the
  model's outputs for the picture split's examples, when its final evaluation kept them
  (else they are computed here)."""
  from bigjax.outputs import plots
  pictures: list[report.Picture] = []
  if config.report.plots:
    pictures.append(report.Picture(plot_learning_curves(workdir, programs.steps_per_epoch),
                                   "Learning curves: loss, accuracy and learning rate."))
    split = picture_split(results["metrics"])
    values = results["metrics"][split]
    images, labels = programs.splits[split]
    if outputs is None and (programs.classifies or programs.data.is_regression):
      outputs = programs.outputs(state, images)
    if not programs.classifies:
      if programs.data.is_regression:  # (regression models have one output; validated)
        pictures.append(report.Picture(
            plots.predicted_vs_true(np.asarray(labels), outputs[:, 0],
                                    os.path.join(workdir, f"predicted_vs_true_{split}.png"),
                                    f"{split}: predicted against true "
                                    f"({len(outputs):,} examples)"),
            f"Predicted against true values on the {split} split."))
      write_report_if(config, workdir, results, programs, state, pictures)
      return
    if "confusion_matrix" in values:
      pictures.append(report.Picture(
          plots.confusion_matrix(values["confusion_matrix"], programs.data.class_names,
                                 os.path.join(workdir, f"confusion_matrix_{split}.png"),
                                 f"Confusion matrix, {split} ({values['count']:,} examples)"),
          f"Confusion matrix on the {split} split."))
    probabilities = metrics.softmax_probabilities(outputs)
    pictures += prediction_pictures(workdir, split, np.asarray(images), np.asarray(labels),
                                    probabilities, programs.data.class_names, programs.data.stats)
  write_report_if(config, workdir, results, programs, state, pictures)


def write_report_if(config, workdir: str, results: dict, programs, state, pictures: list) -> None:
  if config.report.html:
    params = (lora.merge(state.params, programs.model.scale) if lora.is_lora(state.params)
              else state.params)
    variables = {"params": params, **state.model_state}
    model_summary = summary.summarize(programs.base_model, variables, programs.example_input)
    write_report(workdir, config, results, programs.data.class_names, model_summary, pictures)


def write_report(workdir: str, config, results: dict, class_names, model_summary: dict,
                 pictures: list) -> tuple[str, str]:
  final = results["metrics"]
  split = picture_split(final) if final else None
  headline = final.get(split, {}) if split else {}
  when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  opening = (f"{config.model.name} on {config.data.name}: "
             + "".join(f"{split} {name} {headline[name]:.4f}, " for name in ("accuracy", "r2")
                       if name in headline)
             + f"{results['steps']:,} steps, {model_summary['trainable_params']:,} trainable "
             f"parameters; trained in {results['train_seconds']:.1f} s. Written {when}.")
  sections: list[report.Section] = [("Results", [report.Text(opening),
                                                 report.metrics_table(final)])]
  if split and (table := report.per_class_table(headline, class_names)) is not None:
    sections.append((f"Per class ({split})", [table]))
  if pictures:
    sections.append(("Pictures", pictures))
  sections.append(("Model", [report.Text(
      f"Input {'x'.join(map(str, model_summary['input_shape']))}; depth "
      f"{model_summary['depth']} ({model_summary['depth_definition']}); "
      f"{model_summary['flops_per_example']:,} FLOPs per example (forward)."),
      report.summary_table(model_summary)]))
  timing = [["compile (s)", results["compile_seconds"]],
            ["train, including compile (s)", results["train_seconds"]],
            ["evaluation (s)", results["eval_seconds"]],
            ["steady examples/s", results["steady_examples_per_second"] or "-"],
            ["steps", results["steps"]], ["epochs", results["epochs"]],
            ["resumed from step", results["resumed_from_step"] or "-"],
            ["stopped early", results["stopped_early"] or "no"]]
  if results.get("best_checkpoint"):
    best = results["best_checkpoint"]
    timing.append(["best checkpoint", f"step {best['step']}: {best['metric']} "
                                      f"{best['value']:.4f}"])
  sections.append(("Timing", [report.Table(["", ""], timing)]))
  sections.append(("Environment", [report.Table(["", ""], [
      [k, v] for k, v in sorted(_library_versions(results["environment"]).items())])]))
  sections.append(("Config", [report.config_text(config.to_json_best_effort())]))
  return report.write(workdir, f"bigjax run: {os.path.basename(workdir)}", sections)


def _library_versions(environment: dict) -> dict[str, Any]:
  versions = dict(environment)
  # From the installed packages' metadata: importing TFDS only to ask is slow.
  for key, distribution in (("orbax", "orbax-checkpoint"), ("numpy", "numpy"),
                            ("tensorflow_datasets", "tensorflow-datasets")):
    try:
      versions[key] = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
      pass
  versions["jaxlib backend"] = jax.default_backend()
  return versions


def write_lora(workdir: str, config, params, scale: float) -> tuple[str, str]:
  """The adapters on their own (lora_adapters/) and the merged params (export/params/),
  each an Orbax checkpoint of a plain tree, with lora.json saying how they were made."""
  import orbax.checkpoint as ocp

  from bigjax.outputs.logs import write_json
  adapters_dir = os.path.join(workdir, "lora_adapters")
  export_dir = os.path.join(workdir, "export", "params")
  checkpointer = ocp.StandardCheckpointer()
  for path, tree in ((adapters_dir, params[lora.ADAPTERS]),
                     (export_dir, lora.merge(params, scale))):
    checkpointer.save(path, tree, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  write_json(os.path.join(workdir, "lora.json"),
             {"rank": config.lora.rank, "alpha": config.lora.alpha,
              "targets": config.lora.targets, "adapter_params": lora.count(params)})
  return adapters_dir, export_dir
