"""SIGTERM and SIGINT in every phase of a run (start-up, the last epoch's end, the final
evaluation, a second Ctrl-C) end it with one line, exit 128+signal, and a workdir whose
next run resumes to the result of a run never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from bigjax.training import checkpoint
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

PLUGIN = """
import os, signal
from bigjax.training import hooks
from bigjax.data import sources


def _kill():
  os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL_NAME"]))


def digits_then_signal(config):
  \"\"\"A data source that is signalled while the run starts up.\"\"\"
  data = sources.SOURCES.get("digits")(config)
  _kill()
  return data


class AtLastEpochEnd(hooks.Hook):
  def after_epoch(self, run, state):
    if run.loop.step >= run.loop.total_steps:
      _kill()


class AtFinalEvaluation(hooks.Hook):
  def end(self, run, state, results):
    _kill()
"""


def _run(tmp_path, workdir, *args, signal_name=None):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO_ROOT]))
  if signal_name:
    env["SIGNAL_NAME"] = signal_name
  return subprocess.run(
      [sys.executable, "run.py", "--config=configs/digits.py", f"--workdir={workdir}",
       "--config.train.num_epochs=2", "--config.report.plots=False",
       "--config.report.html=False", "--config.checkpoint.min_interval_seconds=0", *args],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def plugin(tmp_path):
  (tmp_path / "signal_plugin.py").write_text(PLUGIN)
  return tmp_path


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_at_the_end_of_training_or_in_the_final_phase_saves_and_exits(plugin, name):
  straight = _run(plugin, plugin / "straight")
  assert straight.returncode == 0, straight.stderr[-2000:]
  expected = _results(plugin / "straight")
  for phase, hook in (("last epoch's end", "AtLastEpochEnd"),
                      ("final evaluation", "AtFinalEvaluation")):
    workdir = plugin / phase.replace(" ", "_").replace("'", "")
    stopped = _run(plugin, workdir, f'--config.hooks=("signal_plugin:{hook}",)',
                   signal_name=name)
    assert stopped.returncode == 128 + getattr(signal, name), (phase, stopped.stderr[-2000:])
    assert "Traceback" not in stopped.stderr, phase
    assert checkpoint.list_steps(str(workdir))[-1] == expected["steps"]  # saved there
    assert not [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]
    resumed = _run(plugin, workdir, "--config.hooks=()")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = _results(workdir)
    assert again["resumed_from_step"] == expected["steps"]
    assert again["test_accuracy"] == expected["test_accuracy"], phase


def test_a_signal_during_start_up_stops_before_anything_is_written(plugin):
  workdir = plugin / "startup"
  stopped = _run(plugin, workdir, "--config.data.source=signal_plugin:digits_then_signal",
                 signal_name="SIGTERM")
  assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
  assert "before training started" in stopped.stderr and "Traceback" not in stopped.stderr
  assert not os.path.exists(workdir / "config.json")
  assert checkpoint.list_steps(str(workdir)) == []
