"""Rows: one split of an image dataset as random access, preprocessed on read.

    rows = Rows(source, index, pad, stats)    # source: anything with source[int array] -> [n, H, W, C] and len()
    rows[np.array([3, 1, 4])]                 # float32 [3, H', W', C], padded and preprocessed
    rows.materialize()                        # the whole split as one array (the in-memory path)

A source is a numpy array (a built-in dataset), a memory-mapped .npy (jcnn.data.arrays), a folder of image files
(jcnn.data.folder) or a prepared TFDS dataset (jcnn.data.tfds_source). `index` selects the split's rows in the source
(after the validation hold-out and limits), so no example is copied until it is read. In-memory and streamed runs read
through the same `Rows.__getitem__`, which is how they see the same bits.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jcnn.data import preprocess as preprocess_lib

CHUNK_BYTES = 4 * 2**20   # raw bytes per read when a split is materialised or its statistics fitted (bounds memory)


class Rows:
  """One split: `source` rows `index` [N], zero-padded by `pad` on each image side, then preprocessed by `stats`
  (None: raw, as stored)."""

  def __init__(self, source: Any, index: np.ndarray, pad: int = 0, stats: dict | None = None):
    self.source, self.index, self.pad, self.stats = source, np.asarray(index, np.int64), int(pad), stats
    h, w, c = source.shape[1:]
    self.shape = (len(self.index), h + 2 * self.pad, w + 2 * self.pad, c)
    self.dtype = np.dtype(np.float32) if stats is not None else np.dtype(source.dtype)

  def __len__(self) -> int:
    return len(self.index)

  def with_stats(self, stats: dict) -> "Rows":
    return Rows(self.source, self.index, self.pad, stats)

  def raw(self, i) -> np.ndarray:
    """The rows `i` (an int array or slice of this split) as stored, padded: [n, H', W', C]."""
    x = np.asarray(self.source[self.index[i]])
    if self.pad:
      x = np.pad(x, [(0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0)])
    return x

  def __getitem__(self, i) -> np.ndarray:
    x = self.raw(i)
    return x if self.stats is None else preprocess_lib.apply(x, self.stats)

  @property
  def chunk(self) -> int:
    """Examples per read in a pass over the split: CHUNK_BYTES of raw data."""
    return max(1, CHUNK_BYTES // max(1, int(np.prod(self.shape[1:])) * np.dtype(self.source.dtype).itemsize))

  def chunks(self):
    """The split in order, a chunk of raw rows at a time (for fitting statistics in one pass)."""
    for s in range(0, len(self), self.chunk):
      yield self.raw(slice(s, s + self.chunk))

  def materialize(self) -> np.ndarray:
    """The whole split, preprocessed, as one array (filled chunk by chunk: no second copy of the raw split)."""
    out = np.empty(self.shape, self.dtype)
    for s in range(0, len(self), self.chunk):
      out[s:s + self.chunk] = self[slice(s, s + self.chunk)]
    return out

  @property
  def nbytes(self) -> int:
    """Bytes of the split once decoded and preprocessed (float32): what keeping it in memory costs."""
    return int(np.prod(self.shape)) * 4
