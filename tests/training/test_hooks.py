"""Hooks: the user's periodic work in the training loop (bigjax/training/hooks.py), passed to
train.run or named in config.hooks, and the built-in ones' choices (log by time, the best
checkpoint's direction)."""

import glob
import json

import pytest

from bigjax import train
from bigjax.training import hooks
from bigjax.registry import ConfigError
from configs import digits


def _config(**overrides):
  config = digits.get_config()
  with config.unlocked():
    config.train.num_epochs = 2
    config.report.plots = config.report.html = config.report.tensorboard = False
    config.update_from_flattened_dict(overrides)
  return config


class Recorder(hooks.Hook):
  """Writes down every call it gets."""

  def __init__(self):
    self.calls = []

  def start(self, run, state):
    self.calls.append(("start", run.loop.step, int(state.step)))

  def after_step(self, run, state):
    self.calls.append(("after_step", run.loop.step))

  def on_metrics(self, run, split, step, values):
    self.calls.append(("on_metrics", split, step, float(values["loss"])))

  def after_epoch(self, run, state):
    self.calls.append(("after_epoch", run.loop.epoch, run.loop.step))

  def end(self, run, state, results):
    self.calls.append(("end", results["steps"], results["test_accuracy"]))

  def close(self, run):
    self.calls.append(("close",))


def test_a_users_hook_sees_every_step_metric_row_and_epoch(tmp_path):
  recorder = Recorder()
  config = _config(**{"train.steps_per_call": 1})
  results = train.run(config, str(tmp_path), hooks=[recorder])
  steps_per_epoch = results["steps"] // 2
  names = [c[0] for c in recorder.calls]
  assert recorder.calls[0] == ("start", 0, 0)
  assert [c[1] for c in recorder.calls if c[0] == "after_step"] == list(
      range(1, results["steps"] + 1))
  assert [c[1:] for c in recorder.calls if c[0] == "after_epoch"] == [
      (0, steps_per_epoch), (1, 2 * steps_per_epoch)]
  # The rows metrics.jsonl holds, in the same order, with the same values.
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  seen = [c[1:] for c in recorder.calls if c[0] == "on_metrics"]
  assert seen == [(r["split"], r["step"], pytest.approx(r["loss"])) for r in rows]
  assert {split for split, _, _ in seen} == {"train", "validation", "test"}
  assert recorder.calls[-2:] == [("end", results["steps"], results["test_accuracy"]),
                                 ("close",)]
  assert names.count("start") == names.count("end") == names.count("close") == 1


def test_a_hook_can_stop_training(tmp_path):
  class StopAfterFirstEpoch(hooks.Hook):
    def after_epoch(self, run, state):
      run.loop.stop_reason = "enough"

  recorder = Recorder()
  results = train.run(_config(), str(tmp_path), hooks=[StopAfterFirstEpoch(), recorder])
  assert results["stopped_early"] == "enough"
  epochs = [c for c in recorder.calls if c[0] == "after_epoch"]
  assert len(epochs) == 1 and results["steps"] == epochs[0][2]  # of 2 epochs, one ran


def test_hooks_named_in_the_config_are_imported_and_called(tmp_path, monkeypatch):
  module = tmp_path / "my_hooks.py"
  module.write_text(
      "import json\n"
      "from bigjax.training import hooks\n"
      "class CountEpochs(hooks.Hook):\n"
      "  def __init__(self):\n"
      "    self.epochs = 0\n"
      "  def after_epoch(self, run, state):\n"
      "    self.epochs += 1\n"
      "  def end(self, run, state, results):\n"
      "    open(run.workdir + '/epochs.json', 'w').write(json.dumps(self.epochs))\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  train.run(_config(hooks=("my_hooks:CountEpochs",)), str(tmp_path / "run"))
  assert json.loads((tmp_path / "run" / "epochs.json").read_text()) == 2


def test_bad_hooks_fail_before_training_with_one_clear_line(tmp_path):
  with pytest.raises(ConfigError, match='"package.module:Name"'):
    train.run(_config(hooks=("nohook",)), str(tmp_path / "a"))
  with pytest.raises(ConfigError, match='Did you mean "Hook"'):
    train.run(_config(hooks=("bigjax.training.hooks:Hok",)), str(tmp_path / "b"))
  with pytest.raises(ConfigError, match="lacks start, after_step.*subclass bigjax.training.hooks.Hook"):
    train.run(_config(), str(tmp_path / "c"), hooks=[object()])


@pytest.mark.slow
def test_training_metrics_are_logged_by_time_as_well_as_by_steps(tmp_path):
  every_step = _config(**{"train.log_every_steps": 1000, "train.log_every_seconds": 1e-9,
                          "train.steps_per_call": 1})
  results = train.run(every_step, str(tmp_path / "by_time"))
  rows = [json.loads(line) for line in open(tmp_path / "by_time" / "metrics.jsonl")]
  assert [r["step"] for r in rows if r["split"] == "train"] == list(
      range(1, results["steps"] + 1))  # every step is "due" by time
  never = _config(**{"train.log_every_steps": 1000, "train.log_every_seconds": 0.0})
  train.run(never, str(tmp_path / "by_steps"))
  rows = [json.loads(line) for line in open(tmp_path / "by_steps" / "metrics.jsonl")]
  assert len([r for r in rows if r["split"] == "train"]) == 2  # each epoch's end only


@pytest.mark.slow
def test_the_best_checkpoints_direction_is_set_by_the_config(tmp_path):
  """validation/loss is kept at its minimum by default ("auto"); best_mode="max" keeps the
  largest instead (e.g. a metric whose name does not say)."""
  bests = {}
  for mode in ("auto", "max"):
    config = _config(**{"train.num_epochs": 3, "checkpoint.best_metric": "validation/loss",
                        "checkpoint.best_mode": mode, "checkpoint.min_interval_seconds": 0.0,
                        "optimizer.learning_rate": 1e-2})
    results = train.run(config, str(tmp_path / mode))
    losses = [json.loads(line) for line in open(tmp_path / mode / "metrics.jsonl")]
    losses = [r["loss"] for r in losses if r["split"] == "validation"]
    assert losses[0] > losses[-1]  # it learns: the largest loss is the first epoch's
    bests[mode] = results["best_checkpoint"]["value"]
    expected = min(losses) if mode == "auto" else max(losses)
    assert bests[mode] == pytest.approx(expected)
  assert bests["auto"] < bests["max"]


@pytest.mark.slow
def test_weights_and_biases_offline_gets_the_config_metrics_and_results(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = _config(hooks=("bigjax.training.hooks:WandB",))
  with config.unlocked():
    config.report.plots = True
  results = train.run(config, str(tmp_path))
  runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
  assert len(runs) == 1
  # W&B's run log is protobuf records: the names of what was logged appear as they are.
  record = open(runs[0], "rb").read()
  for logged in (b"train/loss", b"validation/accuracy", b"test/f1_macro",  # metrics rows
                 b"test_accuracy", b"num_params",                          # the summary
                 b"predictions_test", b"early_stopping"):                  # pictures, config
    assert logged in record, logged
  assert results["test_accuracy"] > 0.5
