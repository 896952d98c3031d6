"""kill -9 at random moments (start-up, training, mid-save, the final evaluation), again and
again, then a resume: the run ends bit-identical to one never killed, in every array of its
checkpoints, its metrics rows and its results."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bigjax.training import checkpoint
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

KILLS = 8
ARGS = ["--config=configs/digits.py", "--config.train.num_epochs=4",
        "--config.report.plots=False", "--config.report.html=False",
        "--config.report.tensorboard=False", "--config.checkpoint.min_interval_seconds=0",
        "--config.checkpoint.every_steps=5"]  # 32 saves in about 4 s: many kills land mid-save
CLOCK_WORDS = ("second", "time", "resumed", "startup", "environment", "per_second",
               "compilations")


def _start(workdir):
  log = open(os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".log"), "a")
  return subprocess.Popen([sys.executable, "run.py", f"--workdir={workdir}", *ARGS],
                          cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT), log


def _finish(workdir) -> None:
  process, log = _start(workdir)
  assert process.wait(timeout=300) == 0, open(log.name).read()[-3000:]


def _without_clocks(value):
  if isinstance(value, dict):
    return {k: _without_clocks(v) for k, v in value.items()
            if not any(word in k for word in CLOCK_WORDS)}
  return value


def _record(workdir) -> dict:
  """Everything a run leaves that must not depend on kills: results, metrics rows, config."""
  with open(os.path.join(workdir, "results.json")) as f:
    results = _without_clocks(json.load(f))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [_without_clocks(json.loads(line)) for line in f]
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  return {"results": results, "rows": rows, "config": config}


def _arrays(workdir, kind) -> dict:
  step = checkpoint.list_steps(workdir, kind)[-1]
  state, meta, _ = checkpoint.read(workdir, step, kind=kind)
  return {"step": step, "state": jax.device_get(state), "meta": _without_clocks(meta)}


def test_random_kill_9s_then_a_resume_end_bit_identical_to_a_run_never_killed(tmp_path):
  never_killed = str(tmp_path / "never_killed")
  t0 = time.monotonic()
  _finish(never_killed)
  whole = time.monotonic() - t0
  expected = _record(never_killed)
  arrays = {kind: _arrays(never_killed, kind) for kind in (checkpoint.LATEST, checkpoint.BEST)}

  rng = random.Random(0)  # the moments vary with the machine's speed; the count does not
  kills, lives = 0, 0
  while kills < KILLS:  # each life: kills until a run outlives its moment, then compared
    lives += 1
    killed, moments = str(tmp_path / f"life_{lives}"), []
    while True:
      process, log = _start(killed)
      delay = rng.uniform(0.5, whole)
      try:
        process.wait(timeout=delay)
        assert process.returncode == 0, open(log.name).read()[-3000:]
        break
      except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        last = [line for line in open(log.name).read().splitlines() if line.strip()][-1:]
        moments.append(f"{delay:.1f} s: {last[0][:90] if last else '(no output yet)'}")
    assert _record(killed) == expected, moments
    for kind in (checkpoint.LATEST, checkpoint.BEST):
      found = _arrays(killed, kind)
      assert found["step"] == arrays[kind]["step"], (kind, moments)
      assert found["meta"] == arrays[kind]["meta"], (kind, moments)
      jax.tree.map(np.testing.assert_array_equal, found["state"], arrays[kind]["state"])
      leftovers = [p for p in os.listdir(os.path.join(killed, kind)) if "tmp" in p]
      assert not leftovers, (leftovers, moments)
    print(f"life {lives}:", *moments, sep="\n  ")
