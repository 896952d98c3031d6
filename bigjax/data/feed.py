"""The host input path (config.data.placement="host"): batches read on the host from
(possibly memory-mapped) splits and copied to the device by a background thread, so reading
batch t+1 overlaps computing batch t. The device path (the default) needs none of this: it
keeps each split in device memory and gathers batches there."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import jax
import numpy as np

from bigjax.registry import ConfigError


def host_shard(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous share of a global batch's indices: each host reads only its
  own examples, and together the hosts read the batch exactly once."""
  if len(indices) % process_count:
    raise ConfigError(f"The global batch of {len(indices)} does not split over "
                      f"{process_count} host processes; use a multiple of {process_count}.")
  share = len(indices) // process_count
  return indices[process_index * share:(process_index + 1) * share]


def host_batches(images, labels: np.ndarray, order: np.ndarray, batch_size: int, start: int,
                 end: int, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Batches start..end-1 of an epoch's `order`, read on the host (this process's share)."""
  for i in range(start, end):
    local = host_shard(order[i * batch_size:(i + 1) * batch_size], process_index,
                       process_count)
    yield {"image": images[local], "label": labels[local]}


class Prefetch:
  """Iterates `batches` with up to `depth` of them already read and sent to the device by a
  background thread. Close it (or exhaust it) to stop the thread."""

  _DONE = object()

  def __init__(self, batches: Iterator[dict], depth: int = 2, put=jax.device_put):
    self._put = put  # host batch -> device batch (e.g. split over a mesh)
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(batches,), daemon=True)
    self._thread.start()

  def _fill(self, batches: Iterator[dict]) -> None:
    try:
      for batch in batches:
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

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    item = self._queue.get()
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
