"""Streaming with grain: batches fetched from a split's rows in a given order, in this process or in worker processes.

    for x, y in stream.batches(rows, labels, order, workers=2):   # order [steps, B] or [steps, V, B] row numbers
      ...                                                          # x [B, ...] ([V * B, ...]) float32, y int32

Worker processes are started with multiprocessing's spawn method: a script that streams with data.workers > 0 needs
the usual `if __name__ == "__main__":` guard (launch.py has it).

The order is the one the in-memory run gathers on the device (jcnn.data.batches.epoch_batches), so a streamed run
reads the same examples in the same order, preprocessed by the same `Rows.__getitem__`. A batch is one grain element:
`MapDataset.source(order).map(fetch)` reads its rows: in `workers` processes when > 0 (decoding image files in
parallel, a few batches ahead), else in this process when the loop asks for the next batch, which is while the device
runs the step before it (JAX dispatches asynchronously). Reading in this process is what keeps the convnet at 1.00x
its in-memory rate from an .npz and 0.77-0.92x from PNGs on 2 cores, where reader threads competed with XLA's
(benchmarks/streaming.py). Evaluation streams through the same function
with the evaluation batches' indices.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from jcnn.errors import DataError

PREFETCH = 4   # batches read ahead per worker process
WORKERS_FROM = 20_000   # images from which data.workers=-1 decodes image files in worker processes


class Fetch:
  """order row [B] (or [V, B]) -> (x [B * V, ...] preprocessed, y [B * V] int32). Picklable for worker processes."""

  def __init__(self, rows, labels: np.ndarray):
    self.rows, self.labels = rows, np.asarray(labels)

  def __call__(self, idx: np.ndarray):
    flat = np.asarray(idx).reshape(-1)
    return self.rows[flat], self.labels[flat]


def default_workers(rows) -> int:
  """Worker processes when config.data.workers = -1. Image files (a folder, TFDS records) decode in processes, half
  the cores this process may use (at most 8), once the split is large (>= WORKERS_FROM images): a pipeline of
  processes starts once per epoch and per evaluation, which costs seconds (each imports jcnn) and pays only when
  decoding takes longer. Arrays, in memory or on disk, and small folders are read in this process."""
  if not getattr(rows.source, "decodes", False) or len(rows) < WORKERS_FROM:
    return 0
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  return max(1, min(8, cores // 2))


def batches(rows, labels: np.ndarray, order: np.ndarray, workers: int = -1) -> Iterator:
  """(x, y) numpy batches of `rows` in `order` ([steps, ...] row numbers; one batch per leading entry)."""
  import grain  # pylint: disable=g-import-not-at-top
  if len(order) == 0:
    return iter(())
  workers = default_workers(rows) if workers < 0 else workers
  ds = grain.MapDataset.source(np.asarray(order)).map(Fetch(rows, labels))
  # No reader threads: in this process a batch is read when the loop asks for it (see the module docstring).
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if workers > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():   # grain reads its absl flags; a library caller may have parsed none
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=PREFETCH))
  return _checked(iter(it))


def _checked(it) -> Iterator:
  """grain's iterator, with a worker's failure as one DataError line (the run then stops like any bad input)."""
  while True:
    try:
      item = next(it)
    except StopIteration:
      return
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (a worker process killed, or its error re-raised here)
      cause = e
      while cause.__cause__ is not None and not isinstance(cause, DataError):
        cause = cause.__cause__
      if isinstance(cause, DataError):
        raise DataError(str(cause)) from None
      msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise DataError(f"a data-loading worker failed ({type(e).__name__}: {msg}); the last checkpoint is kept: run "
                      f"the same command again to resume, or set config.data.workers=0 to read in this process"
                      ) from None
    yield item
