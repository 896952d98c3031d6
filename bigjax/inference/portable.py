"""A trained run as a model that needs nothing but its workdir: no training data, no
optimizer, no data pipeline.

Training writes `inference.json` next to `config.json`: what one input looks like (shape,
dtype), how the run prepared its inputs (scaling, per-channel standardisation) and what the
outputs mean (class names, or regression targets). `load(workdir)` reads it with the model's
config and a checkpoint's params, so `--mode=predict` on image files works on another machine
(the workdir copied alone), and `--mode=export` and quantization start from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.finetuning import lora
from bigjax.models import build_model, init_variables
from bigjax.outputs.logs import write_json
from bigjax.registry import ConfigError
from bigjax.training import checkpoint

SPEC_FILE = "inference.json"
SPEC_VERSION = 1


def spec_of(programs, config) -> dict:
  """What inference needs to know about a run's inputs and outputs (from its prepared data)."""
  data = programs.data
  example = programs.example_input
  task = ("regression" if data.is_regression else "tokens" if data.is_tokens
          else "classification" if programs.classifies else "outputs")
  spec = {"version": SPEC_VERSION, "input_shape": list(example.shape[1:]),
          "input_dtype": str(example.dtype), "task": task,
          "num_outputs": int(programs.num_outputs), "class_names": list(data.class_names),
          "pixel_max": data.stats["pixel_max"], "lora_scale": None}
  if "mean" in data.stats:
    spec.update(mean=data.stats["mean"], std=data.stats["std"])
  if config.lora.rank > 0:
    spec["lora_scale"] = config.lora.alpha / config.lora.rank
  return spec


def write_spec(workdir: str, programs, config) -> None:
  write_json(os.path.join(workdir, SPEC_FILE), spec_of(programs, config))


def read_spec(workdir: str) -> dict:
  path = os.path.join(workdir, SPEC_FILE)
  if not os.path.exists(path):
    raise ConfigError(
        f"{path} does not exist: this run was trained before bigjax wrote it (or is not a "
        "finished run). Train it again, or predict with --config and the training data present.")
  with open(path) as f:
    spec = json.load(f)
  if spec.get("version") != SPEC_VERSION:
    raise ConfigError(f"{path} is version {spec.get('version')}; this bigjax reads version "
                      f"{SPEC_VERSION}. Use the bigjax that trained the run.")
  return spec


@dataclasses.dataclass
class Predictor:
  """A run's model and params, ready for inputs prepared as `spec` says."""
  model: Any            # the Flax module (LoRA-wrapped when the run trained adapters)
  variables: dict       # {"params": ..., plus collections such as batch_stats}
  spec: dict
  step: int

  @property
  def class_names(self) -> list[str]:
    return self.spec["class_names"]

  def apply(self, variables: dict, inputs: jax.Array) -> jax.Array:
    """The model's outputs in eval mode: a pure function of (variables, inputs)."""
    return self.model.apply(variables, inputs, train=False)

  def prepare(self, images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] [N, H, W, C] -> the model's inputs (the run's standardisation)."""
    images = np.asarray(images, np.float32)
    if "mean" in self.spec:
      images = ((images - np.asarray(self.spec["mean"], np.float32))
                / np.asarray(self.spec["std"], np.float32))
    return images

  @functools.cached_property
  def _jitted_apply(self):
    return jax.jit(self.apply)  # (one compile per predictor and batch shape)

  def outputs(self, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs [N, C] for model-ready inputs, in batches (the last padded to full size, so
    one program serves every batch)."""
    run = self._jitted_apply
    out = []
    for start in range(0, len(inputs), batch_size):
      batch = np.asarray(inputs[start:start + batch_size])
      pad = batch_size - len(batch) if len(inputs) > batch_size else 0
      padded = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
      out.append(np.asarray(run(self.variables, jnp.asarray(padded)))[:len(batch)])
    return np.concatenate(out).astype(np.float32)

  def probabilities(self, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.asarray(jax.nn.softmax(self.outputs(inputs, batch_size), axis=-1))


def load(workdir: str, config, step: str | int = "latest") -> Predictor:
  """The run in `workdir` (its config: the workdir's config.json, or the one given) at a
  checkpoint ("latest", "best" or a step), without its training data."""
  workdir = os.path.abspath(workdir)
  spec = read_spec(workdir)
  checkpoint.require(workdir, step)
  raw, _, chosen = checkpoint.read(workdir, step)  # integrity-checked; arrays as stored
  model = build_model(config.model)
  variables = {"params": raw["params"], **(raw.get("model_state") or {})}
  if spec["lora_scale"] is not None:
    model = lora.LoRAModel(model, spec["lora_scale"])
  else:
    _check_fits(model, variables, spec, workdir, chosen)
  return Predictor(model, jax.device_put(variables), spec, chosen)


def _check_fits(model, variables: dict, spec: dict, workdir: str, step: int) -> None:
  """The checkpoint's params against the model the config builds: one line per mismatch."""
  example = jnp.zeros((1, *spec["input_shape"]), spec["input_dtype"])
  expected = jax.eval_shape(functools.partial(init_variables, model), jax.random.PRNGKey(0),
                            example)
  want = {jax.tree_util.keystr(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(expected)}
  kept = {k: v for k, v in variables.items() if k != "quant_stats"}  # (training's, unused)
  have = {jax.tree_util.keystr(p): tuple(np.shape(x))
          for p, x in jax.tree_util.tree_leaves_with_path(kept)}
  problems = [f"{path}: model {want.get(path)}, checkpoint {have.get(path)}"
              for path in sorted(set(want) | set(have)) if want.get(path) != have.get(path)]
  if problems:
    raise ConfigError(
        f"The checkpoint at {workdir} step {step} does not fit the model its config builds ("
        + "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5
                                     else "")
        + "). Use the run's own config.json (leave out --config).")


def expand_files(paths: Sequence[str]) -> list[str]:
  """Image files named, and those in named folders (sorted, subfolders included)."""
  from bigjax.data.images import IMAGE_EXTENSIONS
  out = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                     for name in names
                     if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."))
      if not found:
        raise ConfigError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
      out += found
    else:  # (a missing or unreadable file is named by the image loader)
      out.append(path)
  return out


def predict_files(predictor: Predictor, files: Sequence[str]) -> np.ndarray:
  """Class probabilities [N, C] for image files, prepared as the run prepared its data."""
  from bigjax.data.images import load_image_file
  if predictor.spec["task"] != "classification" or len(predictor.spec["input_shape"]) != 3:
    raise ConfigError(
        f"This run's model takes {predictor.spec['task']} inputs of shape "
        f"{predictor.spec['input_shape']}, not images: --mode=predict takes a --split for it, "
        "not image files.")
  height, width, channels = predictor.spec["input_shape"]
  images = np.stack([load_image_file(p, height, width, channels) for p in files])
  return predictor.probabilities(predictor.prepare(images))
