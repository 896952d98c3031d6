"""What a person reads: JSON-lines metrics and progress lines with an honest ETA."""

from __future__ import annotations

import datetime
import json
import logging as py_logging
import os
import time
from typing import Any, Mapping

import numpy as np

logging = py_logging.getLogger(__name__)


def to_jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  return x


def write_text(path: str, text: str) -> None:
  """Writes atomically: readers never see half a file, a crash never leaves one."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


class MetricsLog:
  """Appends one JSON object per line to `metrics.jsonl`. A run killed during an append
  leaves a partial last line: it is cut off when the log is next opened."""

  def __init__(self, path: str | None):
    self.path = path
    if path is not None and os.path.exists(path):
      _trim_partial_line(path)

  def drop_after(self, step: int) -> None:
    """Forgets rows after `step`, and the final evaluation's rows at `step` (the rows without
    an epoch): a run resumed from `step` writes them again."""
    if self.path is None or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    rows = [json.loads(line) for line in lines]
    kept = [line for line, row in zip(lines, rows) if row.get("step", 0) < step or (
        row.get("step", 0) == step and "epoch" in row)]
    if len(kept) != len(lines):
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)

  def write(self, row: Mapping[str, Any]) -> None:
    if self.path is None:  # not the writing process
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(to_jsonable(row), sort_keys=True) + "\n")


def _trim_partial_line(path: str) -> None:
  with open(path, "rb") as f:
    data = f.read()
  whole = data[:data.rfind(b"\n") + 1]
  if len(whole) != len(data):
    logging.warning("%s ended in a partial line (a kill during a write); removed it", path)
    with open(path, "r+b") as f:
      f.truncate(len(whole))


class Progress:
  """Steady-state rate and ETA. The clock starts after the first (compiling) step."""

  def __init__(self, total_steps: int, batch_size: int, tokens_per_example: int | None = None):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.tokens_per_example = tokens_per_example  # language models: also report tokens/s
    self._start_time: float | None = None
    self._start_step = 0
    self._paused_at: float | None = None

  @property
  def started(self) -> bool:
    return self._start_time is not None

  def start(self, step: int) -> None:
    self._start_time, self._start_step = time.perf_counter(), step

  def pause(self) -> None:
    """Evaluation time is not training time: it does not count towards the rate."""
    self._paused_at = time.perf_counter()

  def resume(self) -> None:
    if self._paused_at is not None and self._start_time is not None:
      self._start_time += time.perf_counter() - self._paused_at
    self._paused_at = None

  def steps_per_second(self, step: int) -> float:
    if self._start_time is None or step <= self._start_step:
      return float("nan")
    now = self._paused_at if self._paused_at is not None else time.perf_counter()
    return (step - self._start_step) / max(now - self._start_time, 1e-9)

  def bar(self, step: int, width: int = 20) -> str:
    """[#####---------------] 25%"""
    fraction = min(max(step / max(self.total_steps, 1), 0.0), 1.0)
    filled = int(round(fraction * width))
    return f"[{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%}"

  def line(self, step: int) -> str:
    rate = self.steps_per_second(step)
    if not np.isfinite(rate):
      return f"{self.bar(step)} | ETA --"
    eta = datetime.timedelta(seconds=round((self.total_steps - step) / rate))
    speed = f"{rate * self.batch_size:,.0f} ex/s"
    if self.tokens_per_example:
      speed += f" {rate * self.batch_size * self.tokens_per_example:,.0f} tokens/s"
    return f"{self.bar(step)} | {speed} | ETA {eta}"
