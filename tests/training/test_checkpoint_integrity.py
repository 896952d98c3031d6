"""Nothing lost, nothing silent: damaged checkpoints are detected by their integrity record
and fallen back from, in every mode; a config that fails its checks never replaces the run's
record; a workdir's config.json never imports code unasked."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigjax import registry, train
from bigjax.registry import ConfigError
from bigjax.training import checkpoint, hooks
from bigjax.training.programs import Programs
from conftest import REPO_ROOT
from configs import digits

pytestmark = pytest.mark.slow  # (whole runs, damaged and resumed)


def _config(**overrides):
  config = digits.get_config()
  with config.unlocked():
    config.train.num_epochs = 2
    config.report.update(plots=False, html=False, tensorboard=False)
    config.checkpoint.update(min_interval_seconds=0.0, max_to_keep=5, every_steps=15)
    config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished run (checkpoints at 15, 30, 40, 45, 60, 75, 80) and its config."""
  workdir = tmp_path_factory.mktemp("finished")
  config = _config()
  train.run(config, str(workdir))
  return workdir, config


def _copy(finished, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(finished[0], workdir)
  return workdir


def _largest_data_file(workdir: str, step: int) -> str:
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "d", "*"),
                    recursive=True)
  return max(files, key=os.path.getsize)


def _flip_a_bit(path: str) -> None:
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


def _target(config):
  programs = Programs(config)
  return programs.initial_state


def _leaves_equal(a, b) -> None:
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_every_array_is_recorded_and_a_flipped_bit_is_caught_in_every_mode(finished, tmp_path,
                                                                           caplog):
  workdir = _copy(finished, tmp_path)
  steps = checkpoint.list_steps(workdir)
  latest, previous = steps[-1], steps[-2]
  with open(os.path.join(workdir, "checkpoints", str(latest), "meta", "metadata")) as f:
    record = json.load(f)["arrays"]
  assert "['params']['head']['kernel']" in record or any("kernel" in p for p in record)
  shape, dtype, total, weighted = record[next(p for p in record if p.endswith("['kernel']"))]
  assert dtype == "float32" and len(shape) == 2 and total != weighted

  target = _target(finished[1])
  intact_previous, _, _ = checkpoint.read(workdir, previous, target)
  _flip_a_bit(_largest_data_file(workdir, latest))

  # eval / predict / sample / init_from read "latest": the previous one, with a warning,
  # and the damaged checkpoint is left where it is (reading changes nothing).
  with caplog.at_level("WARNING"):
    state, _, step = checkpoint.read(workdir, "latest", target)
  assert step == previous
  assert f"checkpoints/{latest} is damaged" in caplog.text and "checksum mismatch" in caplog.text
  _leaves_equal(state, intact_previous)
  assert latest in checkpoint.list_steps(workdir)
  # Asked for exactly that step: one line that says so and names the intact ones.
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=f"step {latest} .* is damaged; intact steps may be"):
    checkpoint.read(workdir, latest, target)
  _, params = checkpoint.latest_params(workdir)  # raw restores (init_from) are checked too
  _leaves_equal(params, intact_previous.params)


def test_training_resumes_from_the_newest_intact_checkpoint_and_quarantines_the_damaged(
    finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  steps = checkpoint.list_steps(workdir)
  _flip_a_bit(_largest_data_file(workdir, steps[-1]))
  results = train.run(_config(), workdir)
  assert results["resumed_from_step"] == steps[-2]
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", str(steps[-1])))
  # It trained the lost steps again, to the same params as the run that never lost them.
  _leaves_equal(checkpoint.latest_params(workdir)[1],
                checkpoint.latest_params(str(finished[0]))[1])


def test_lost_orbax_metadata_is_not_a_config_change(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  latest = checkpoint.list_steps(workdir)[-1]
  target = _target(finished[1])
  intact, _, _ = checkpoint.read(workdir, latest, target)
  os.remove(os.path.join(workdir, "checkpoints", str(latest), "state", "_METADATA"))
  state, _, step = checkpoint.read(workdir, "latest", target)  # the record knows the shapes
  assert step == latest
  _leaves_equal(state, intact)


def test_unreadable_metadata_falls_back_and_a_permission_error_is_not_damage(
    finished, tmp_path, monkeypatch):
  workdir = _copy(finished, tmp_path)
  steps = checkpoint.list_steps(workdir)
  open(os.path.join(workdir, "checkpoints", str(steps[-1]), "meta", "metadata"), "w").close()
  target = _target(finished[1])
  assert checkpoint.read(workdir, "latest", target)[2] == steps[-2]

  def denied(self, step, args=None):
    raise ValueError("PERMISSION_DENIED: Error opening file: Permission denied")

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "restore", denied)
  manager = checkpoint.make_manager(workdir, create=False)
  with pytest.raises(checkpoint.CheckpointAccessError, match="Permission denied.*permissions"):
    checkpoint.restore_newest_intact(manager, target)
  assert checkpoint.list_steps(workdir) == steps  # nothing quarantined
  assert not os.path.exists(os.path.join(workdir, "checkpoints_damaged"))


def test_when_every_checkpoint_is_damaged_no_run_restarts_silently(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  for step in checkpoint.list_steps(workdir):
    _flip_a_bit(_largest_data_file(workdir, step))
  with pytest.raises(checkpoint.DamagedCheckpointError, match="are damaged"):
    train.run(_config(), workdir)
  assert checkpoint.list_steps(workdir) == []
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match="no intact checkpoint: the damaged ones are in .*Delete or move"):
    train.run(_config(), workdir)  # the same command again: refused, not a fresh start
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["steps"] == 80  # the finished run's record is untouched
  shutil.rmtree(os.path.join(workdir, "checkpoints_damaged"))
  assert train.run(_config(), workdir)["resumed_from_step"] is None  # told to: from step 0


def test_a_non_finite_state_is_never_saved(tmp_path):
  from bigjax.core.steps import TrainState
  manager = checkpoint.make_manager(str(tmp_path))
  state = TrainState(step=np.int32(3), params={"w": np.array([1.0, np.nan], np.float32)},
                     model_state={}, opt_state={}, rng=np.zeros(2, np.uint32))
  assert checkpoint.save(manager, 3, state, {}) is False
  fine = state.replace(params={"w": np.array([1.0, 2.0], np.float32)})
  assert checkpoint.save(manager, 4, fine, {}) is True
  manager.wait_until_finished()
  assert manager.all_steps() == [4]
  manager.close()


def test_a_failed_check_leaves_the_runs_config_json_and_an_error_closes_the_manager(
    finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  path = os.path.join(workdir, "config.json")
  before = open(path).read()
  with pytest.raises(ConfigError):  # fails after the workdir's checks, before training
    train.run(_config(**{"eval.metrics": "loss,acuracy"}), workdir)
  assert open(path).read() == before
  assert not os.path.exists(path + ".tmp")

  class FailAfterFirstSave(hooks.Hook):
    def after_epoch(self, run_, state):
      raise RuntimeError("a hook failed while the epoch's save was in flight")

  fresh = str(tmp_path / "fresh")
  with pytest.raises(RuntimeError, match="in flight"):
    train.run(_config(), fresh, hooks=[FailAfterFirstSave()])
  # The save in flight was finished, not abandoned (no temporary folder left behind).
  assert checkpoint.list_steps(fresh) and 40 in checkpoint.list_steps(fresh)
  assert not glob.glob(os.path.join(fresh, "checkpoints", "*tmp*"))


def test_a_partial_last_metrics_line_is_cut_and_rows_after_the_resume_are_dropped(
    finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  steps = checkpoint.list_steps(workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(steps[-1])))  # as if killed before it
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path, "a") as f:
    f.write('{"split": "train", "st')  # killed during an append
  train.run(_config(), workdir)
  rows = [json.loads(line) for line in open(path)]  # every line whole
  finals = [(r["split"], r["step"]) for r in rows if r["split"] == "test"]
  assert len(finals) == len(set(finals))  # the final evaluation's rows are not repeated
  keys = [(r["split"], r["step"]) for r in rows if r["split"] == "validation"]
  assert len(keys) == len(set(keys)), keys


def _rows(workdir: str) -> list[dict]:
  """metrics.jsonl without its clock readings."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in row.items() if "second" not in k and "time" not in k}
          for row in rows]


def test_a_run_resumed_mid_epoch_logs_the_rows_of_a_run_never_stopped(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  for step in checkpoint.list_steps(workdir):
    if step > 60:  # as if killed after step 60's save: 20 steps of epoch 2 not yet logged
      shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  meta = checkpoint.read(workdir, 60, _target(_config()), None)[1]
  assert len(meta["unlogged_train"]["loss"]["values"]) == 20 and meta["first_loss"] > 0
  train.run(_config(), workdir)
  resumed, never_stopped = _rows(workdir), _rows(str(finished[0]))
  assert [r for r in resumed if r["split"] == "train"] == [
      r for r in never_stopped if r["split"] == "train"]
  assert resumed == never_stopped
  final = checkpoint.read(workdir, 80, _target(_config()), None)[1]
  assert final["metrics"] == checkpoint.read(str(finished[0]), 80, _target(_config()),
                                             None)[1]["metrics"]


def test_running_a_finished_run_again_repeats_no_row(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  train.run(_config(), workdir)  # (e.g. killed after its results, before it exited)
  assert _rows(workdir) == _rows(str(finished[0]))


def test_a_workdirs_config_json_names_no_code_unless_trusted(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  path = os.path.join(workdir, "config.json")
  config = json.load(open(path))
  marker = tmp_path / "ran"
  config["model"] = {"name": "subprocess:Popen", "args": f"touch {marker}", "shell": True}
  config["hooks"] = ["os:system"]
  json.dump(config, open(path, "w"))
  done = subprocess.run([sys.executable, "run.py", "--mode=eval", f"--workdir={workdir}"],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1
  assert "model.name=subprocess:Popen" in done.stderr and "hooks=os:system" in done.stderr
  assert done.stderr.count("\n") == 2  # one line, and the BIGJAX_TRACEBACK hint
  assert "--trust_plugins" in done.stderr and "Traceback" not in done.stderr
  assert not marker.exists()
  try:  # and the registry itself refuses a dotted path from it, however reached
    registry.refuse_plugins_from("x/config.json", {"loss": {"name": "softmax_cross_entropy"}})
    with pytest.raises(ConfigError, match='x/config.json names the loss "os.system"'):
      registry.Registry("loss").get("os.system")
  finally:
    registry.trust_plugins()
  assert registry.import_object("os.path:join") is os.path.join


def test_a_disk_too_full_for_the_next_save_stops_with_one_line_and_loses_nothing(
    finished, tmp_path, monkeypatch):
  workdir = _copy(finished, tmp_path)
  steps = checkpoint.list_steps(workdir)
  usage = shutil.disk_usage(workdir)
  monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                      lambda path: usage._replace(free=100_000))
  with pytest.raises(checkpoint.DiskFullError, match=r"0\.1 MB free; saving step \d+ needs "
                     r"about [\d.]+ MB\. The checkpoints before it are intact"):
    train.run(_config(**{"train.num_epochs": 3}), workdir)
  assert checkpoint.list_steps(workdir) == steps
  monkeypatch.undo()
  results = train.run(_config(**{"train.num_epochs": 3}), workdir)
  assert results["resumed_from_step"] == steps[-1] and results["steps"] == 120


def test_a_real_full_disk_is_one_line(tmp_path):
  small = tmp_path / "small"
  small.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)],
                           capture_output=True)
  if mounted.returncode:
    pytest.skip("cannot mount a small tmpfs here (needs root in a container that allows it)")
  try:
    done = subprocess.run(
        [sys.executable, "run.py", "--config=configs/fashion_mnist.py:mlp,small",
         f"--workdir={small}/run", "--config.checkpoint.every_steps=10",
         "--config.report.plots=False", "--config.report.html=False",
         "--config.report.tensorboard=False", "--config.data.source=digits",
         "--config.model.num_classes=10", "--config.model.hidden_sizes=(2048,)"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "bigjax: error: The disk holding" in done.stderr
    assert "Traceback" not in done.stderr and "RESOURCE_EXHAUSTED" not in done.stderr
  finally:
    subprocess.run(["umount", str(small)], capture_output=True)
