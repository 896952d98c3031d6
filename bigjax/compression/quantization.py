"""Post-training int8 quantization of a trained run with qwix (Google's JAX quantization
library, which rewrites a Flax Linen model's matmuls and convolutions).

Modes:
  weights  int8 weights, activations in float: the matmuls (Dense layers, attention);
           qwix quantizes convolutions only together with their activations, so a
           convolution's kernel stays in float here (named in the log and the results).
  dynamic  int8 weights and activations; each activation's scale from the batch at hand.
  static   int8 weights and activations; activation scales calibrated once on
           `calibration` training examples (absmax), then fixed.

Each returns a `portable.Predictor` of the quantized model, so evaluation and
`--mode=export` treat it as any other model. Weights are quantized per output channel.
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.inference import portable
from bigjax.registry import ConfigError

logging = py_logging.getLogger(__name__)

MODES = ("weights", "dynamic", "static")
MATMULS = ("dot_general", "einsum")  # what `weights` quantizes


def rules(mode: str) -> list:
  import qwix
  if mode == "weights":
    return [qwix.QuantizationRule(module_path=".*", weight_qtype="int8", op_names=MATMULS)]
  if mode == "dynamic":
    return [qwix.QuantizationRule(module_path=".*", weight_qtype="int8", act_qtype="int8")]
  if mode == "static":
    return [qwix.QuantizationRule(module_path=".*", weight_qtype="int8", act_qtype="int8",
                                  act_static_scale=True)]
  raise ConfigError(f"--quantize={mode!r}: use one of {', '.join(MODES)}.")


def _stock_convolutions(model):
  """qwix rewrites lax's convolutions; bigjax's CPU im2col kernel would reach it as a matmul
  of a reshaped kernel, whose int8 copy no longer fits the param's shape."""
  return model.clone(conv_impl="xla") if hasattr(model, "conv_impl") else model


def aware(model, mode: str):
  """The model with qwix's fake quantization (straight-through gradients) for training."""
  import qwix
  if mode == "weights":
    raise ConfigError('config.quantize.aware="weights": quantization-aware training is for '
                      '"dynamic" or "static" (weights alone lose too little to train for).')
  return qwix.quantize_model(_stock_convolutions(model), qwix.QtProvider(rules(mode)))


def quantize(predictor: portable.Predictor, mode: str,
             calibration: np.ndarray | None = None, batch_size: int = 256
             ) -> tuple[portable.Predictor, list[str]]:
  """(the quantized predictor, the paths of kernels left in float)."""
  import qwix
  chosen = rules(mode)
  if predictor.spec.get("lora_scale") is not None:
    raise ConfigError("This run trained LoRA adapters: merge them first (bigjax.finetuning.lora"
                      ".merge) or quantize the base run.")
  example = jnp.zeros((1, *predictor.spec["input_shape"]), predictor.spec["input_dtype"])
  params = predictor.variables["params"]
  others = {k: v for k, v in predictor.variables.items() if k not in ("params", "quant_stats")}
  stats: Any = predictor.variables.get("quant_stats", {})
  if mode == "static" and stats:
    logging.info("static scales from the run's quantization-aware training")
  elif mode == "static":
    if calibration is None or not len(calibration):
      raise ConfigError("--quantize=static calibrates activation scales on training examples; "
                        "none were given.")
    stats = _calibrate(predictor.model, params, others, chosen, calibration, batch_size)
  model = qwix.quantize_model(_stock_convolutions(predictor.model), qwix.PtqProvider(chosen))
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), example, train=False))
  quantized = qwix.quantize_params(params, abstract["params"], stats)
  in_float = kernels_in_float(quantized)
  if in_float:
    logging.warning("--quantize=%s left %d kernel(s) in float: %s%s", mode, len(in_float),
                    ", ".join(in_float[:8]), " ..." if len(in_float) > 8 else "")
  spec = dict(predictor.spec, quantized=mode)
  return portable.Predictor(model, {"params": quantized, **others}, spec,
                            predictor.step), in_float


def _calibrate(model, params, others: dict, chosen: list, calibration: np.ndarray,
               batch_size: int) -> Any:
  """Activation statistics (qwix's quant_stats) over the calibration examples."""
  import qwix
  calibrating = qwix.quantize_model(_stock_convolutions(model), qwix.QtProvider(chosen))
  example = jnp.zeros((1, *calibration.shape[1:]), calibration.dtype)
  stats = calibrating.init(jax.random.PRNGKey(0), example, train=False)["quant_stats"]

  def observe(stats, batch):  # (eager: qwix's convolution statistics cannot be jitted here)
    _, updated = calibrating.apply({"params": params, "quant_stats": stats, **others}, batch,
                                   train=False, mutable=["quant_stats"])
    return updated["quant_stats"]

  for start in range(0, len(calibration), batch_size):
    stats = observe(stats, jnp.asarray(calibration[start:start + batch_size]))
  return stats


def _is_quantized(leaf) -> bool:
  return type(leaf).__name__ in ("QArray", "WithAux")


def kernels_in_float(params) -> list[str]:
  """Paths of weight matrices and kernels (2 or more dimensions) not quantized."""
  leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_quantized)[0]
  return [jax.tree_util.keystr(path) for path, leaf in leaves
          if not _is_quantized(leaf) and np.ndim(leaf) >= 2]


def param_bytes(params) -> int:
  """Bytes of every array in the (possibly quantized) params: int8 values plus their scales."""
  return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(params)))


@dataclasses.dataclass
class Scores:
  accuracy: float
  loss: float
  count: int


def score(predictor: portable.Predictor, inputs: np.ndarray, labels: np.ndarray) -> Scores:
  """Accuracy and mean cross-entropy of a classifier's outputs."""
  logits = predictor.outputs(inputs)
  labels = np.asarray(labels).astype(np.int64)
  log_p = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
  return Scores(float((logits.argmax(-1) == labels).mean()),
                float(-log_p[np.arange(len(labels)), labels].mean()), len(labels))


def calibration_inputs(programs, examples: int) -> np.ndarray:
  """The first `examples` of the training split (model-ready), for static scales."""
  return np.asarray(programs.data.train.inputs[:examples])


def evaluate(config, workdir: str, mode: str, step: str | int = "latest",
             calibration_examples: int = 512) -> dict:
  """--mode=quantize: the run's float and int8 models on config.eval.at_end's splits;
  writes WORKDIR/quantized_<mode>.json and returns it."""
  import os
  from bigjax.outputs.logs import write_json
  from bigjax.training.programs import Programs
  from bigjax.training.programs import with_kept_tokenizer
  rules(mode)  # (an unknown mode fails before anything loads)
  predictor = portable.load(workdir, config, step)
  if predictor.spec["task"] != "classification":
    raise ConfigError(f"--mode=quantize scores classifiers; this run's task is "
                      f"{predictor.spec['task']}. --mode=export --quantize={mode} still "
                      "writes its quantized model.")
  programs = Programs(with_kept_tokenizer(config, workdir))
  quantized, in_float = quantize(predictor, mode, calibration_inputs(
      programs, calibration_examples) if mode == "static" else None)
  results: dict[str, Any] = {
      "mode": mode, "step": predictor.step, "kernels_in_float": in_float,
      "param_bytes": {"float": param_bytes(predictor.variables["params"]),
                      "int8": param_bytes(quantized.variables["params"])},
      "calibration_examples": calibration_examples if mode == "static" else 0}
  splits = programs.split_names(config.eval.at_end or "test", "config.eval.at_end")
  for split in splits:
    images, labels = programs.splits[split]
    inputs, labels = np.asarray(images), np.asarray(labels)
    before, after = score(predictor, inputs, labels), score(quantized, inputs, labels)
    results[split] = {"float": dataclasses.asdict(before), "int8": dataclasses.asdict(after),
                      "accuracy_change": after.accuracy - before.accuracy}
    logging.info("%s: accuracy %.4f float, %.4f int8 (%s) (%+.2f points); loss %.4f -> %.4f",
                 split, before.accuracy, after.accuracy, mode,
                 100 * (after.accuracy - before.accuracy), before.loss, after.loss)
  sizes = results["param_bytes"]
  logging.info("params: %s bytes float, %s bytes int8 (%.0f%%)", f"{sizes['float']:,}",
               f"{sizes['int8']:,}", 100 * sizes["int8"] / sizes["float"])
  write_json(os.path.join(os.path.abspath(workdir), f"quantized_{mode}.json"), results)
  return results
