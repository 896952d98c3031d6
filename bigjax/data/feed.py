"""The host input path (config.data.placement="host"): batches read on the host from
(possibly memory-mapped) splits and copied to the device by a background thread, so reading
batch t+1 overlaps computing batch t. The device path (the default) needs none of this: it
keeps each split in device memory and gathers batches there."""

from __future__ import annotations

import logging as py_logging
import os
import queue
import threading
import time
from typing import Iterator

import jax
import numpy as np

from bigjax.data.stream import read_batch
from bigjax.data.stream import SKIPPED
from bigjax.data.stream import worker_batches  # noqa: F401  (part of this module's API)
from bigjax.registry import ConfigError

logging = py_logging.getLogger("bigjax.train")


def host_shard(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous share of a global batch's indices: each host reads only its
  own examples, and together the hosts read the batch exactly once."""
  if len(indices) % process_count:
    raise ConfigError(f"The global batch of {len(indices)} does not split over "
                      f"{process_count} host processes; use a multiple of {process_count}.")
  share = len(indices) // process_count
  return indices[process_index * share:(process_index + 1) * share]


def epoch_rows(order: np.ndarray, batch_size: int, start: int, end: int,
               process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This process's share [end - start, B / processes] of batches start..end-1 of an
  epoch's `order`."""
  return np.stack([host_shard(order[i * batch_size:(i + 1) * batch_size], process_index,
                              process_count) for i in range(start, end)]) \
      if end > start else np.zeros((0, batch_size // process_count), np.int32)


def host_batches(images, labels: np.ndarray, order: np.ndarray, batch_size: int, start: int,
                 end: int, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Batches start..end-1 of an epoch's `order`, read on the host (this process's share)."""
  for rows in epoch_rows(order, batch_size, start, end, process_index, process_count):
    yield read_batch(images, labels, rows)


def is_streamed(images) -> bool:
  """Whether a split's images are read from disk as batches need them (a records folder,
  a TFDS data source, memory-mapped .npy), where worker processes can share the reading;
  an in-memory array would be copied to every worker instead."""
  from bigjax.data.pipeline import LazyImages
  raw = images.raw if isinstance(images, LazyImages) else images
  return not isinstance(raw, np.ndarray) or isinstance(raw, np.memmap)


def worker_count(asked: int) -> int:
  """config.data.worker_count, clamped to this machine's CPUs (said once, in the log)."""
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if asked > (cpus or 1):
    logging.warning("config.data.worker_count=%d is more than this machine's %d CPUs; "
                    "using %d worker processes", asked, cpus, cpus)
    return int(cpus or 1)
  if asked < 0:
    raise ConfigError(f"config.data.worker_count={asked}: give 0 (read in a background "
                      "thread) or a number of worker processes.")
  return asked


class Prefetch:
  """Iterates `batches` with up to `depth` of them already read and sent to the device by a
  background thread. Close it (or exhaust it) to stop the thread."""

  _DONE = object()

  def __init__(self, batches: Iterator[dict], depth: int = 2, put=jax.device_put):
    self._put = put  # host batch -> device batch (e.g. split over a mesh)
    self.skipped = 0  # unreadable examples replaced so far (config.data.skip_bad_records)
    self.waited = 0.0  # seconds the consumer waited for a batch (the input's bottleneck)
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(batches,), daemon=True)
    self._thread.start()

  def _fill(self, batches: Iterator[dict]) -> None:
    try:
      for batch in batches:
        skipped = batch.pop(SKIPPED, 0) if isinstance(batch, dict) else 0  # (or one array)
        if skipped:
          self.skipped += skipped
          logging.warning("skipped %d unreadable example(s) in a batch (%d so far; "
                          "config.data.skip_bad_records): each replaced by a readable one "
                          "of its batch, image and label together", skipped, self.skipped)
        item = self._put(batch)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put(self._DONE)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      self._queue.put(e)
    finally:  # (a generator over grain's workers stops them when closed)
      close = getattr(batches, "close", None)
      if close is not None:
        close()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    t0 = time.perf_counter()
    item = self._queue.get()
    self.waited += time.perf_counter() - t0
    if item is self._DONE:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    while self._thread.is_alive():
      try:
        self._queue.get_nowait()
      except queue.Empty:
        self._thread.join(timeout=0.1)
