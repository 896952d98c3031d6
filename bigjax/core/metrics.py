"""Evaluation metrics: pure sums on the device, one division on the host.

A metric is two functions. `sums` names the per-batch sums it needs (from `SUMS`), which the
eval step computes on the device, weighted by the padding mask; the driver adds them over
all batches (in float64 on the host) and `compute` turns the totals into values. So every
real example counts exactly once, whatever the batch size, and a metric over a split is the
same as one over the whole split at once.

Classification metrics read a confusion matrix (rows: true class, columns: predicted);
precision, recall and F1 follow scikit-learn's defaults: averages over the classes that
occur in the labels or the predictions, 0 where a ratio is 0/0.

Add your own with `@METRICS.register("name")` returning a `Metric`, or name one in
`config.eval.metrics` as "package.module:factory".
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.registry import ConfigError
from bigjax.registry import Registry

# ---------------------------------------------------------------- device-side sums
# Each takes (outputs [B, C], labels [B] int or [B, C] one-hot or float targets, weights [B],
# per-example loss [B]) and returns an array summed over the batch.
SumFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def class_labels(outputs_BxC: jax.Array, labels: jax.Array) -> jax.Array:
  """Integer class labels from integer or one-hot labels."""
  return labels.argmax(-1) if labels.ndim == outputs_BxC.ndim else labels


def correct_predictions(logits_BxC: jax.Array, labels: jax.Array,
                        multi_label: bool = False) -> jax.Array:
  """1.0 where argmax(logits) equals the (integer or one-hot) label, else 0.0. Multi-label
  (independent sigmoid outputs, multi-hot labels [B, C]): 1.0 where every class's
  prediction (logit > 0) equals its label, as scikit-learn's subset accuracy."""
  if multi_label:
    return ((logits_BxC > 0) == (labels > 0.5)).all(-1).astype(jnp.float32)
  return (logits_BxC.argmax(-1) == class_labels(logits_BxC, labels)).astype(jnp.float32)


def _confusion(outputs, labels, weights, loss):
  num_classes = outputs.shape[-1]
  true_BxC = jax.nn.one_hot(class_labels(outputs, labels), num_classes) * weights[:, None]
  predicted_BxC = jax.nn.one_hot(outputs.argmax(-1), num_classes)
  return true_BxC.T @ predicted_BxC  # [true, predicted]


def _regression_target(outputs, labels):
  """Targets shaped like the outputs: [B] targets for [B, 1] outputs are allowed."""
  target = labels.astype(jnp.float32)
  if target.ndim == outputs.ndim - 1:
    target = target[..., None]
  if target.shape != outputs.shape:
    raise ValueError(f"Regression metrics need targets shaped like the outputs "
                     f"{outputs.shape}; got {labels.shape}.")
  return target


def _top_k_correct(k: int) -> SumFn:
  def top_k_correct(outputs, labels, weights, loss):
    if k > outputs.shape[-1]:
      raise ValueError(f"top{k}_accuracy needs at least {k} classes; the model has "
                       f"{outputs.shape[-1]}.")
    _, top_BxK = jax.lax.top_k(outputs, k)
    hit = (top_BxK == class_labels(outputs, labels)[:, None]).any(-1)
    return (hit * weights).sum()
  return top_k_correct


SUMS: dict[str, SumFn] = {
    "count": lambda outputs, labels, weights, loss: weights.sum(),
    "loss_sum": lambda outputs, labels, weights, loss: (loss * weights).sum(),
    "correct_sum": lambda outputs, labels, weights, loss:
        (correct_predictions(outputs, labels) * weights).sum(),
    "confusion": _confusion,
    # Regression, per output column.
    "sq_err_sum": lambda o, y, w, loss: (((o - _regression_target(o, y)) ** 2)
                                         * w[:, None]).sum(0),
    "abs_err_sum": lambda o, y, w, loss: (jnp.abs(o - _regression_target(o, y))
                                          * w[:, None]).sum(0),
    "target_sum": lambda o, y, w, loss: (_regression_target(o, y) * w[:, None]).sum(0),
    "target_sq_sum": lambda o, y, w, loss: ((_regression_target(o, y) ** 2)
                                            * w[:, None]).sum(0),
}


# ---------------------------------------------------------------- metrics
@dataclasses.dataclass(frozen=True)
class Metric:
  """`sums`: names of per-batch sums; `compute(totals) -> {name: value}` on the host.

  `sum_fns` adds sums of the metric's own (name -> SumFn) beside the built-in `SUMS`.
  """
  sums: tuple[str, ...]
  compute: Callable[[Mapping[str, np.ndarray]], dict[str, Any]]
  sum_fns: Mapping[str, SumFn] = dataclasses.field(default_factory=dict)


METRICS = Registry("metric")


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
  numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
  return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                   where=denominator != 0)


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support of each class from a [true, predicted] matrix."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  predicted, support = confusion.sum(0), confusion.sum(1)
  return {"precision": _ratio(tp, predicted), "recall": _ratio(tp, support),
          "f1": _ratio(2 * tp, predicted + support), "support": support}


def _averaged(score: str) -> Metric:
  def compute(totals):
    scores = per_class_scores(totals["confusion"])
    confusion = np.asarray(totals["confusion"])
    present = (confusion.sum(0) + confusion.sum(1)) > 0  # in the labels or the predictions
    values = scores[score]
    support = scores["support"]
    return {f"{score}_macro": float(values[present].mean()) if present.any() else 0.0,
            f"{score}_weighted": float(_ratio((values * support).sum(), support.sum())),
            f"{score}_per_class": values.tolist()}
  return Metric(("confusion",), compute)


METRICS.register("loss")(Metric(("loss_sum", "count"), lambda t: {
    "loss": float(_ratio(t["loss_sum"], t["count"]))}))
METRICS.register("accuracy")(Metric(("correct_sum", "count"), lambda t: {
    "accuracy": float(_ratio(t["correct_sum"], t["count"]))}))
# Language models (loss = mean next-token cross-entropy in nats): perplexity, and bits per
# token, which for byte-level tokens is bits per byte.
METRICS.register("perplexity")(Metric(("loss_sum", "count"), lambda t: {
    "perplexity": float(np.exp(_ratio(t["loss_sum"], t["count"])))}))
METRICS.register("bits_per_byte")(Metric(("loss_sum", "count"), lambda t: {
    "bits_per_byte": float(_ratio(t["loss_sum"], t["count"]) / np.log(2.0))}))
for _score in ("precision", "recall", "f1"):
  METRICS.register(_score)(_averaged(_score))
METRICS.register("support")(Metric(("confusion",), lambda t: {
    "support_per_class": np.asarray(t["confusion"]).sum(1).astype(int).tolist()}))
METRICS.register("confusion_matrix")(Metric(("confusion",), lambda t: {
    "confusion_matrix": np.rint(np.asarray(t["confusion"])).astype(int).tolist()}))


def _mean_over_outputs(key: str) -> Callable:
  return lambda t: float(np.mean(_ratio(t[key], t["count"])))


METRICS.register("mse")(Metric(("sq_err_sum", "count"), lambda t: {
    "mse": _mean_over_outputs("sq_err_sum")(t)}))
METRICS.register("mae")(Metric(("abs_err_sum", "count"), lambda t: {
    "mae": _mean_over_outputs("abs_err_sum")(t)}))


def _r2(t) -> dict:
  """R^2 = 1 - SSE/SST per output column, averaged (scikit-learn's 'uniform_average')."""
  n = np.float64(t["count"])
  sst = np.asarray(t["target_sq_sum"], np.float64) - np.asarray(t["target_sum"]) ** 2 / n
  sse = np.asarray(t["sq_err_sum"], np.float64)
  # A constant target: R^2 is 1 if predicted perfectly, else 0 (as scikit-learn).
  r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse == 0, 1.0, 0.0))
  return {"r2": float(r2.mean())}


METRICS.register("r2")(Metric(("sq_err_sum", "target_sum", "target_sq_sum", "count"), _r2))

_TOP_K = re.compile(r"top_?(\d+)_accuracy")
CLASSIFICATION = ("loss", "accuracy", "top5_accuracy", "precision", "recall", "f1", "support",
                  "confusion_matrix")
REGRESSION = ("loss", "mse", "mae", "r2")


def top_k_accuracy(k: int) -> Metric:
  key = f"top{k}_correct"
  return Metric((key, "count"), lambda t: {f"top{k}_accuracy": float(_ratio(t[key], t["count"]))},
                sum_fns={key: _top_k_correct(k)})


METRICS.register("top5_accuracy")(top_k_accuracy(5))


def _masked_token_sums(outputs, labels, weights, loss):
  """Masked-LM [B, T, V] outputs against labels that are a token where one was masked and
  -1 elsewhere: (correct masked tokens, masked tokens), each example weighted."""
  chosen = labels >= 0
  hits = (outputs.argmax(-1) == labels) & chosen
  axes = tuple(range(1, labels.ndim))
  return (hits.sum(axes) * weights).sum(), (chosen.sum(axes) * weights).sum()


METRICS.register("masked_accuracy")(Metric(
    ("masked_correct", "masked_count"),
    lambda t: {"masked_accuracy": float(_ratio(t["masked_correct"], t["masked_count"])),
               "masked_tokens": int(round(float(t["masked_count"])))},
    sum_fns={"masked_correct": lambda o, y, w, loss: _masked_token_sums(o, y, w, loss)[0],
             "masked_count": lambda o, y, w, loss: _masked_token_sums(o, y, w, loss)[1]}))


def get_metric(name: str) -> Metric:
  """A metric by name: registered, 'top<k>_accuracy', or 'package.module:factory'."""
  match = _TOP_K.fullmatch(name)
  if match and name not in METRICS:
    return top_k_accuracy(int(match.group(1)))
  try:
    metric = METRICS.get(name)
  except ConfigError as e:
    raise ConfigError(f"{e} (set in config.eval.metrics; top<k>_accuracy takes any k)") from None
  if not isinstance(metric, Metric):  # a dotted path to a factory
    metric = metric()
  if not isinstance(metric, Metric):
    raise ConfigError(f'Metric "{name}" did not give a bigjax.core.metrics.Metric.')
  return metric


def parse_names(names: str | Sequence[str]) -> tuple[str, ...]:
  """'loss, accuracy,f1' or a sequence -> ('loss', 'accuracy', 'f1'), loss always first."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",")]
  names = [n for n in names if n]
  return tuple(dict.fromkeys(["loss", *names]))  # the loss is needed to catch divergence


def _multi_label_correct_sum(outputs, labels, weights, loss):
  return (correct_predictions(outputs, labels, multi_label=True) * weights).sum()


def sum_functions(names: Iterable[str], multi_label: bool = False) -> dict[str, SumFn]:
  """Every sum the named metrics need, each once (and always the count). multi_label:
  accuracy is subset accuracy over thresholded sigmoid outputs (see correct_predictions)."""
  fns: dict[str, SumFn] = {"count": SUMS["count"]}
  for name in names:
    metric = get_metric(name)
    for key in metric.sums:
      fns[key] = metric.sum_fns.get(key) or SUMS[key]
  if multi_label and "correct_sum" in fns:
    fns["correct_sum"] = _multi_label_correct_sum
  return fns


def compute_sums(fns: Mapping[str, SumFn], outputs, labels, weights, per_example_loss) -> dict:
  """On the device: the weighted per-batch sums (pure, for inside the eval step)."""
  weights = weights.astype(jnp.float32)
  outputs = outputs.astype(jnp.float32)
  return {key: fn(outputs, labels, weights, per_example_loss) for key, fn in fns.items()}


def total(batch_sums: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """On the host: the per-batch sums added in float64."""
  return {key: np.sum([np.asarray(s[key], np.float64) for s in batch_sums], axis=0)
          for key in batch_sums[0]}


def compute(names: Iterable[str], totals: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """{metric value name: value} for the named metrics, plus 'count'."""
  values: dict[str, Any] = {"count": int(round(float(totals["count"])))}
  for name in names:
    values.update(get_metric(name).compute(totals))
  return values


def scalars(values: Mapping[str, Any]) -> dict[str, float]:
  """The single-number values (for logs and curves), without per-class lists."""
  return {k: v for k, v in values.items() if isinstance(v, (int, float))}


def finalize(batch_sums: Mapping[str, Any] | Sequence[Mapping[str, Any]],
             names: Iterable[str] = ("loss", "accuracy")) -> dict[str, Any]:
  """Metric values from one batch's sums or a list of them (device or host arrays)."""
  if isinstance(batch_sums, Mapping):
    batch_sums = [batch_sums]
  return compute(names, total(jax.device_get(list(batch_sums))))


def lower_is_better(name: str) -> bool:
  """Whether a smaller value of the metric `name` is better (losses and errors)."""
  base = name.rsplit("/", 1)[-1]
  return any(word in base for word in ("loss", "mse", "mae", "error", "perplexity",
                                       "bits_per"))


def softmax_probabilities(logits: np.ndarray) -> np.ndarray:
  """Class probabilities [N, C] (float32) from logits, computed in float64 on the host."""
  logits = np.asarray(logits, np.float64)
  exp = np.exp(logits - logits.max(-1, keepdims=True))
  return (exp / exp.sum(-1, keepdims=True)).astype(np.float32)
