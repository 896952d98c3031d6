"""Checks that run before training, so bad input fails in seconds with a fix, not mid-run."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import ml_collections
import numpy as np

from bigjax.data import PreparedData
from bigjax.data.pipeline import LazyImages
from bigjax.registry import ConfigError


def _count_nonfinite(images) -> int:
  """NaN/Inf pixel values; lazily read images are scanned chunk by chunk (integer pixels,
  e.g. uint8, cannot be either)."""
  if isinstance(images, LazyImages):
    if not np.issubdtype(images.raw.dtype, np.floating):
      return 0
    return sum(int(c.size - np.isfinite(c).sum()) for c in images.chunks())
  return int(images.size - np.isfinite(images).sum())


def check_tokenizer_matches_init(config: ml_collections.ConfigDict,
                                 data: PreparedData) -> None:
  """A fine-tune of a run that kept a tokenizer.json must tokenize with it: another
  tokenizer's ids index other rows of the loaded embeddings."""
  source = config.init_from.get("path") or ""
  kept = os.path.join(source, "tokenizer.json") if source and os.path.isdir(source) else ""
  if not kept or not os.path.isfile(kept) or data.tokenizer is None:
    return
  from tokenizers import Tokenizer
  with open(kept) as f:
    theirs = Tokenizer.from_str(f.read()).get_vocab()
  if Tokenizer.from_str(data.tokenizer).get_vocab() != theirs:
    raise ConfigError(
        f"config.init_from.path={source} was trained with its own tokenizer, but this run "
        f'tokenizes with another (config.data.tokenizer="{config.data.get("tokenizer")}"), so '
        "the loaded embeddings would index other tokens. Pass "
        f"--config.data.tokenizer={kept}.")


def check_data(config: ml_collections.ConfigDict, data: PreparedData) -> None:
  """Batch sizes and label ranges against the data and the model."""
  check_tokenizer_matches_init(config, data)
  n_train = len(data.train)
  if config.train.batch_size < 1:
    raise ConfigError(f"config.train.batch_size must be positive; got {config.train.batch_size}.")
  if config.train.batch_size > n_train:
    raise ConfigError(
        f"config.train.batch_size={config.train.batch_size} is larger than the "
        f"{n_train} training examples (after holding out validation). Use "
        f"--config.train.batch_size={max(1, n_train // 10)} or more data.")
  for name, split in data.splits().items():
    bad = _count_nonfinite(split.inputs)
    if bad:
      raise ConfigError(
          f"The {name} split has {bad} NaN or infinite pixel values. Clean the data (e.g. "
          "np.nan_to_num) before training.")
  if config.train.num_epochs < 1 and config.train.get("num_steps", -1) <= 0:
    raise ConfigError(f"config.train.num_epochs={config.train.num_epochs} trains nothing: use "
                      "1 or more (or config.train.num_steps > 0).")
  accum = config.train.grad_accum_steps
  if accum < 1 or config.train.batch_size % accum:
    raise ConfigError(
        f"config.train.batch_size={config.train.batch_size} does not split into "
        f"grad_accum_steps={accum} equal micro-batches; use a divisor of the batch size.")
  steps_per_call = config.train.get("steps_per_call", 1)
  if not isinstance(steps_per_call, int) or steps_per_call < 1:
    raise ConfigError(f"config.train.steps_per_call={steps_per_call!r}: use a whole number "
                      ">= 1 (train steps per compiled call; 1 = one step per call).")
  vocab = config.model.get("vocab_size")
  if vocab and data.is_tokens:
    top = max([int(np.max(np.asarray(split.inputs))) for split in data.splits().values()
               if len(split) and not isinstance(split.inputs, LazyImages)] or [0])
    # Streamed tokens are never all read here: their source knows their largest id (texts
    # tokenized as read: their tokenizer's vocabulary; a token corpus: its info.json).
    top = max([top] + [int(getattr(split.inputs.raw, "top_token", 0))
                       for split in data.splits().values()
                       if isinstance(split.inputs, LazyImages)])
    if top >= vocab:
      raise ConfigError(
          f"The data holds token ids up to {top}, but the model's vocabulary is "
          f"config.model.vocab_size={vocab}: set it to {top + 1} or more (the tokenizer's "
          "vocabulary size), or use the tokenizer the model was trained with.")
  num_classes = config.model.get("num_classes")
  if num_classes is None:
    return
  if data.is_regression:
    if num_classes != 1:
      raise ConfigError(
          f"This data has one float regression target per example, but the model has "
          f"num_classes={num_classes} outputs. Set --config.model.num_classes=1.")
    return
  for name, split in data.splits().items():
    if len(split) == 0:
      raise ConfigError(f"The {name} split is empty; check config.data.")
    if np.ndim(split.targets) != 1:
      raise ConfigError(
          f"The {name} split's labels have shape {np.shape(split.targets)}, but a classifier "
          "needs one integer label per example (shape [N]): were images given as labels? "
          "Check which array config.data names as the labels.")
    lo, hi = int(split.targets.min()), int(split.targets.max())
    if lo < 0:
      raise ConfigError(
          f"The {name} split has negative labels (down to {lo}); class labels are "
          f"0..num_classes-1. Relabel the data (or drop the unlabelled examples).")
    if hi >= num_classes:
      raise ConfigError(
          f"The {name} split has labels in [{lo}, {hi}] but the model has "
          f"num_classes={num_classes} outputs. Set --config.model.num_classes={hi + 1} "
          "(or check the data's labels).")
  if len(np.unique(np.asarray(data.train.targets))) < 2:
    raise ConfigError(
        f"The training split has examples of only one class (label "
        f"{int(np.asarray(data.train.targets)[0])}): a classifier needs two or more. Check the "
        "data (an image folder needs one subfolder per class).")
  if data.num_classes > num_classes:
    raise ConfigError(
        f"The dataset has {data.num_classes} classes but the model has num_classes="
        f"{num_classes}. Set --config.model.num_classes={data.num_classes}.")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "."))
    else:
      out[path] = list(value) if isinstance(value, tuple) else value
  return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       ignore: Iterable[str] = ()) -> list[str]:
  """'key: saved -> current' for every key that differs, except the ignored ones."""
  a, b = flatten(saved), flatten(current)
  ignore = set(ignore)
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]


def check_resumable(config: ml_collections.ConfigDict, workdir: str,
                    resumable_changes: Iterable[str]) -> None:
  """Refuses to resume a workdir's checkpoint under a different config, unless allowed."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or config.checkpoint.allow_config_change:
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except ValueError:
    raise ConfigError(f"{path} is not valid JSON (damaged), so this workdir's checkpoint "
                      "cannot be checked against the config. Restore the file, or pass "
                      "--config.checkpoint.allow_config_change=True to resume under this "
                      "config.") from None
  current = json.loads(config.to_json_best_effort())
  diffs = config_differences(saved, current, resumable_changes)
  if diffs:
    raise ConfigError(
        f"{workdir} holds a checkpoint of a run with a different config:\n  "
        + "\n  ".join(diffs)
        + "\nUse another --workdir, or pass --config.checkpoint.allow_config_change=True "
        "to resume it under the new config.")
