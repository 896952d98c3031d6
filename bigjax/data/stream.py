"""Reading host batches, in the prefetch thread or in grain's worker processes.

No jax here: grain starts its workers as fresh processes, which import only what the
pickled reader needs (a records folder's or a TFDS data source's images, the labels, and
this module), so a worker is ready in a fraction of a second.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from bigjax.data.records import BadRecordError

SKIPPED = "_skipped"  # a host batch's count of unreadable examples replaced (popped on put)


def read_batch(images, labels: np.ndarray | None, rows: np.ndarray, mask=None,
               skip_bad: bool = False) -> dict:
  """One host batch: examples `rows` of a split (with `mask` for evaluation). A record that
  cannot be read stops the run with its index, or (skip_bad) is replaced by a readable
  example of the same batch, image and label together (labels never shift), and counted."""
  batch = {}
  try:
    batch["image"] = images[rows]
  except BadRecordError as e:
    if not skip_bad:
      raise BadRecordError(f"{e} Fix or remove it, or set config.data.skip_bad_records=True "
                           "to train on (and count) the rest.") from None
    rows = np.array(rows)
    good, bad = [], []
    for j, i in enumerate(rows):
      try:
        good.append((j, images[np.asarray([i])][0]))
      except BadRecordError:
        bad.append(j)
    if not good:
      raise BadRecordError(f"No example of a batch can be read ({e}).") from None
    pixels = {j: image for j, image in good}
    for k, j in enumerate(bad):  # the k-th bad one borrows the k-th good one's example
      donor = good[k % len(good)][0]
      rows[j], pixels[j] = rows[donor], pixels[donor]
    batch["image"] = np.stack([pixels[j] for j in range(len(rows))])
    batch[SKIPPED] = len(bad)
  if labels is not None:
    batch["label"] = labels[rows]
  if mask is not None:
    batch["mask"] = mask
  return batch


class _ReadBatch:
  """read_batch for one (rows, mask) element: what grain's worker processes run (picklable:
  the split's images reopen their files in each worker)."""

  def __init__(self, images, labels, skip_bad: bool):
    self.images, self.labels, self.skip_bad = images, labels, skip_bad

  def __call__(self, element):
    rows, mask = element
    return read_batch(self.images, self.labels, rows, None if mask is None else mask,
                      self.skip_bad)


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Run in each grain worker as it starts: end it when the training process is gone. A
  parent killed with kill -9 cannot stop its workers, which would otherwise live on
  (holding memory, and the parent's stdout) until someone kills them by hand."""
  import os
  import threading
  import time
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(0)

  threading.Thread(target=watch, name="bigjax-parent-watch", daemon=True).start()


class _Elements:
  """(rows, mask) pairs by index: the grain data source of a list of batches."""

  def __init__(self, rows: np.ndarray, mask: np.ndarray | None):
    self.rows, self.mask = rows, mask

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, i):
    return self.rows[i], None if self.mask is None else self.mask[i]


def worker_batches(images, labels, rows: np.ndarray, mask: np.ndarray | None = None,
                   workers: int = 1, skip_bad: bool = False) -> Iterator[dict]:
  """read_batch over each row of `rows` [num_batches, B] in `workers` grain worker
  processes (batch k by worker k % workers), yielded in order. Memory is bounded: each
  worker holds at most 3 batches (reading one, two buffered)."""
  import grain
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain reads its absl flags; a library caller (a test,
    flags.FLAGS.mark_as_parsed()   # a notebook) parsed none: their defaults, then
  dataset = (grain.MapDataset.source(_Elements(rows, mask))
             .map(_ReadBatch(images, labels, skip_bad))
             .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
             .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                       per_worker_buffer_size=2),
                          worker_init_fn=_exit_with_parent))
  iterator = iter(dataset)
  batch = None
  try:
    for batch in iterator:
      # Batches arrive in grain's shared memory (29 ms with this copy for a 19.3 MB batch,
      # a pipe 55 ms; bench/streaming.py): copied out so that the block is freed now.
      yield {key: np.array(value) for key, value in batch.items()}
      batch = None
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
    del batch
    _free_shared_memory_now()


def _free_shared_memory_now() -> None:
  """Wait for grain's background thread to free the blocks already let go. Otherwise the
  last few outlive a run that ends soon after: the resource tracker frees them at exit,
  with a warning that looks like a leak. (grain has no public call for this; without the
  attribute, the warning is all that is lost.)"""
  try:
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
    pool = SharedMemoryArray._del_thread_pool
  except (ImportError, AttributeError):
    return
  if pool is not None:
    SharedMemoryArray._disable_async_del()  # the next iterator starts a new one
    pool.close()
    pool.join()
