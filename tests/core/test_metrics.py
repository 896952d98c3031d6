"""Metrics against scikit-learn, early stopping and stop targets."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk

from bigjax.core import metrics
from bigjax.training import termination
from bigjax.registry import ConfigError


def _batched_totals(names, outputs, labels, batch_size):
  """Sums over padded batches, as the driver computes them."""
  fns = metrics.sum_functions(names)
  n = len(labels)
  batches = []
  for start in range(0, n, batch_size):
    o, y = outputs[start:start + batch_size], labels[start:start + batch_size]
    pad = batch_size - len(y)
    # Padding rows hold real-looking values: only the mask may keep them out.
    o = np.concatenate([o, outputs[:pad]]) if pad else o
    y = np.concatenate([y, labels[:pad]]) if pad else y
    mask = np.r_[np.ones(batch_size - pad), np.zeros(pad)].astype(np.float32)
    loss = np.ones(batch_size, np.float32)
    batches.append(metrics.compute_sums(fns, o, y, mask, loss))
  return metrics.total(batches)


def test_classification_metrics_match_scikit_learn_over_padded_batches():
  rng = np.random.default_rng(0)
  n, num_classes = 1003, 7
  labels = rng.integers(0, num_classes - 1, n).astype(np.int32)  # class 6 never true
  logits = rng.normal(size=(n, num_classes)).astype(np.float32)
  logits[:, 5] -= 10.0  # class 5 (almost) never predicted: precision 0/0
  logits[labels == 0, 0] += 1.5  # some skill, so the scores are not all alike
  names = ("loss", "accuracy", "top3_accuracy", "precision", "recall", "f1", "support",
           "confusion_matrix")
  values = metrics.compute(names, _batched_totals(names, logits, labels, batch_size=64))
  predicted = logits.argmax(-1)

  assert values["count"] == n and values["loss"] == pytest.approx(1.0)
  assert values["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
  assert values["top3_accuracy"] == pytest.approx(
      sk.top_k_accuracy_score(labels, logits, k=3, labels=range(num_classes)))
  for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score),
                   ("f1", sk.f1_score)):
    for average in ("macro", "weighted"):
      assert values[f"{name}_{average}"] == pytest.approx(
          fn(labels, predicted, average=average, zero_division=0)), (name, average)
    np.testing.assert_allclose(
        values[f"{name}_per_class"],
        fn(labels, predicted, average=None, labels=range(num_classes), zero_division=0))
  np.testing.assert_array_equal(values["confusion_matrix"],
                                sk.confusion_matrix(labels, predicted,
                                                    labels=range(num_classes)))
  assert values["support_per_class"] == np.bincount(labels, minlength=num_classes).tolist()


def test_one_hot_labels_give_the_same_metrics():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 50).astype(np.int32)
  logits = rng.normal(size=(50, 4)).astype(np.float32)
  names = ("accuracy", "f1", "top2_accuracy")
  a = metrics.compute(names, _batched_totals(names, logits, labels, 16))
  b = metrics.compute(names, _batched_totals(names, logits, np.eye(4)[labels], 16))
  assert a == b


def test_confusion_matrix_on_a_hand_made_case():
  # true:      0  0  1  1  1  2
  # predicted: 0  1  1  1  2  2
  logits = np.eye(3, dtype=np.float32)[[0, 1, 1, 1, 2, 2]]
  labels = np.array([0, 0, 1, 1, 1, 2], np.int32)
  names = ("confusion_matrix", "precision", "recall")
  values = metrics.compute(names, _batched_totals(names, logits, labels, 4))
  assert values["confusion_matrix"] == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
  assert values["precision_per_class"] == pytest.approx([1.0, 2 / 3, 0.5])
  assert values["recall_per_class"] == pytest.approx([0.5, 2 / 3, 1.0])


def test_regression_metrics_match_scikit_learn():
  rng = np.random.default_rng(2)
  targets = rng.normal(3.0, 2.0, size=(301, 2)).astype(np.float32)
  outputs = (targets + rng.normal(0, 0.7, size=targets.shape)).astype(np.float32)
  names = ("mse", "mae", "r2")
  values = metrics.compute(names, _batched_totals(names, outputs, targets, 32))
  assert values["mse"] == pytest.approx(sk.mean_squared_error(targets, outputs), rel=1e-5)
  assert values["mae"] == pytest.approx(sk.mean_absolute_error(targets, outputs), rel=1e-5)
  assert values["r2"] == pytest.approx(sk.r2_score(targets, outputs), rel=1e-5)
  # One output column with [B] targets.
  values = metrics.compute(names, _batched_totals(names, outputs[:, :1], targets[:, 0], 32))
  assert values["r2"] == pytest.approx(sk.r2_score(targets[:, 0], outputs[:, 0]), rel=1e-5)


def test_unknown_metric_lists_the_known_ones():
  with pytest.raises(ConfigError, match=r'Unknown metric "f1_score".*Known metrics: .*accuracy'):
    metrics.get_metric("f1_score")
  assert metrics.get_metric("top7_accuracy").sums == ("top7_correct", "count")


def test_a_user_metric_plugs_in_by_registration():
  metrics.METRICS.register("error_rate")(metrics.Metric(
      ("correct_sum", "count"), lambda t: {"error_rate": 1 - t["correct_sum"] / t["count"]}))
  try:
    logits = np.eye(2, dtype=np.float32)[[0, 1, 1, 1]]
    labels = np.array([0, 0, 1, 1], np.int32)
    values = metrics.compute(["error_rate"], _batched_totals(["error_rate"], logits, labels, 4))
    assert values["error_rate"] == pytest.approx(0.25)
  finally:
    metrics.METRICS.unregister("error_rate")


def test_early_stopping_stops_at_the_expected_evaluation():
  scripted = [0.50, 0.60, 0.60, 0.59, 0.65, 0.64, 0.64, 0.649, 0.7]
  state, stopped_at = None, None
  for i, value in enumerate(scripted):
    state, stop = termination.early_stopping_update(state, value, mode="max", patience=3)
    if stop:
      stopped_at = i
      break
  # Best 0.65 at index 4; 0.64, 0.64, 0.649 are three without improvement.
  assert stopped_at == 7 and state["best"] == 0.65

  # min_delta: improvements smaller than it do not count.
  state = None
  for i, value in enumerate([1.0, 0.95, 0.94, 0.935]):
    state, stop = termination.early_stopping_update(state, value, mode="min", patience=2,
                                                    min_delta=0.02)
  assert stop and state["best"] == 0.95


def test_stop_targets_parse_and_trigger():
  target = termination.Target.parse("validation/accuracy >= 0.9")
  assert target == termination.Target("validation/accuracy", ">=", 0.9)
  assert not target.reached({})  # not evaluated yet
  assert not target.reached({"validation": {"accuracy": 0.89}})
  assert target.reached({"validation": {"accuracy": 0.9}})
  assert termination.Target.parse("train/loss<0.1").reached({"train": {"loss": 0.05}})
  assert termination.Target.parse("") is None
  with pytest.raises(ConfigError, match="split/metric>=value"):
    termination.Target.parse("accuracy is high")
  with pytest.raises(ConfigError, match='no metric "acuracy". Did you mean "accuracy"'):
    termination.Target.parse("validation/acuracy>0.5").reached(
        {"validation": {"accuracy": 0.9, "loss": 0.3}})
  assert termination.mode_of("validation/loss") == "min"
  assert termination.mode_of("validation/f1_macro") == "max"




def test_masked_accuracy_counts_only_the_masked_tokens():
  from bigjax.core import metrics
  logits = np.zeros((2, 3, 5), np.float32)
  logits[0, 0, 2] = logits[0, 1, 4] = logits[1, 2, 1] = logits[1, 0, 3] = 1.0
  labels = np.array([[2, 0, -1], [-1, -1, 1]])  # 3 masked tokens, 2 predicted right
  weights = np.array([1.0, 1.0])
  values = metrics.compute(["masked_accuracy"], metrics.total([metrics.compute_sums(
      metrics.sum_functions(["masked_accuracy"]), jnp.asarray(logits), jnp.asarray(labels),
      jnp.asarray(weights), jnp.zeros(2))]))
  assert values["masked_accuracy"] == pytest.approx(2 / 3) and values["masked_tokens"] == 3
  padded = metrics.compute(["masked_accuracy"], metrics.total([metrics.compute_sums(
      metrics.sum_functions(["masked_accuracy"]), jnp.asarray(logits), jnp.asarray(labels),
      jnp.asarray([1.0, 0.0]), jnp.zeros(2))]))  # the second example is padding
  assert padded["masked_accuracy"] == 0.5 and padded["masked_tokens"] == 2
