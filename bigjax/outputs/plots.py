"""The run's pictures as PNG files: learning curves, confusion matrix, prediction grids.

Matplotlib with its non-interactive Agg backend, so plotting works on a machine with no
display; each function writes one file and closes its figure.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str) -> str:
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)  # a reader (or the report) never sees half a picture
  return path


def learning_curves(rows: Sequence[Mapping[str, Any]], path: str,
                    steps_per_epoch: int) -> str:
  """Train and validation loss and accuracy, and the learning rate, against step (bottom
  axis) and epoch (top axis), from metrics.jsonl rows."""
  def series(split, key):
    points = [(r["step"], r[key]) for r in rows if r.get("split") == split and key in r]
    return tuple(zip(*points)) if points else ((), ())

  # The second panel: accuracy for classification, else the first regression metric logged.
  second = next((key for key in ("accuracy", "r2", "mae", "mse")
                 if any(key in r for r in rows)), "accuracy")
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, key in zip(axes[:2], ("loss", second)):
    for split, style in (("train", "-"), ("validation", "o-")):
      steps, values = series(split, key)
      if steps:
        ax.plot(steps, values, style, label=split, markersize=4)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  steps, rates = series("train", "learning_rate")
  axes[2].plot(steps, rates, color="tab:green")
  axes[2].set_title("learning rate")
  axes[2].set_xlabel("step")
  axes[2].grid(alpha=0.3)
  if steps_per_epoch > 0:
    for ax in axes:
      top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch,
                                                 lambda e: e * steps_per_epoch))
      top.set_xlabel("epoch")
  fig.tight_layout()
  return _save(fig, path)


def plain(text) -> str:
  """The text as written: a "$" in a class name would start matplotlib's maths notation
  (and a lone one fail to parse)."""
  return str(text).replace("$", r"\$")


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str,
                     title: str = "confusion matrix") -> str:
  """A heatmap coloured by the fraction of each true class, annotated with counts."""
  matrix = np.asarray(matrix)
  num_classes = len(matrix)
  fractions = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
  size = max(5.0, 0.55 * num_classes + 2)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
  ticks = np.arange(num_classes)
  ax.set_xticks(ticks, [plain(n) for n in class_names], rotation=45, ha="right")
  ax.set_yticks(ticks, [plain(n) for n in class_names])
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(plain(title))
  if num_classes <= 30:
    for i in range(num_classes):
      for j in range(num_classes):
        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                color="white" if fractions[i, j] > 0.5 else "black")
  fig.tight_layout()
  return _save(fig, path)


def displayable(images: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
  """Model inputs back to [0, 1] pixels: undoes the standardisation saved with the run."""
  images = np.asarray(images, np.float32)
  if "mean" in stats:
    images = images * np.asarray(stats["std"], np.float32) + np.asarray(stats["mean"],
                                                                          np.float32)
  return np.clip(images, 0.0, 1.0)


def prediction_grid(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                    confidence: np.ndarray, class_names: Sequence[str], path: str,
                    title: str, columns: int = 5) -> str:
  """Images titled "predicted (confidence) / true label"; mistakes framed in red.

  One axes in inch units holds every tile: a subplot per image, laid out by tight_layout,
  cost more than the rest of a small run's report.
  """
  n = len(images)
  rows = max(1, -(-n // columns))
  h, w = images.shape[1:3]
  scale = 1.9 / max(h, w)  # inches per pixel: the longer side is 1.9 in; the aspect is kept
  cell_w, cell_h, heading = 2.2, h * scale + 0.8, 0.5  # inches: a tile; the grid's title
  width, height = cell_w * columns, cell_h * rows + heading
  fig = plt.figure(figsize=(width, height))
  ax = fig.add_axes((0, 0, 1, 1))
  for i, (image, true, guess, conf) in enumerate(zip(images, labels, predicted, confidence)):
    row, column = divmod(i, columns)
    left = column * cell_w + (cell_w - w * scale) / 2
    top = heading + row * cell_h + 0.45
    extent = (left, left + w * scale, top + h * scale, top)
    if image.shape[-1] == 1:
      ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, extent=extent)
    else:
      ax.imshow(image, extent=extent)
    wrong = int(true) != int(guess)
    ax.text(column * cell_w + cell_w / 2, top - 0.05,
            f"{plain(class_names[int(guess)])} ({conf:.0%})\ntrue: "
            f"{plain(class_names[int(true)])}",
            fontsize=9, ha="center", va="bottom", color="red" if wrong else "black")
    if wrong:
      ax.add_patch(matplotlib.patches.Rectangle(
          (extent[0], extent[3]), w * scale, h * scale, fill=False, edgecolor="red",
          linewidth=3))
  ax.text(width / 2, heading / 2, plain(title), fontsize=12, ha="center", va="center")
  ax.set_xlim(0, width)
  ax.set_ylim(height, 0)  # rows downwards, like the images' own pixels
  ax.set_axis_off()
  return _save(fig, path)


def predicted_vs_true(true: np.ndarray, predicted: np.ndarray, path: str, title: str) -> str:
  """Regression: each example's prediction against its target, with the y = x line."""
  true, predicted = np.ravel(true), np.ravel(predicted)
  fig, ax = plt.subplots(figsize=(5.5, 5))
  ax.scatter(true, predicted, s=12, alpha=0.6)
  low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
  ax.plot([low, high], [low, high], color="tab:red", linewidth=1, label="perfect")
  ax.set_xlabel("true")
  ax.set_ylabel("predicted")
  ax.set_title(plain(title))
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)
