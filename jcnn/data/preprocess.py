"""Preprocessing with statistics from the training split only (after the validation hold-out): `fit` reads the
training examples once, in chunks (so a split larger than memory streams through it), and `apply` maps any batch of
examples with those statistics. Applied per example, so an in-memory split and a streamed one get the same bits.
Text tokenisation with the training split's vocabulary lives here too."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from jcnn.config import PREPROCESS
from jcnn.errors import DataError


def fit(chunks: Iterable[np.ndarray], method: str, dtype) -> dict[str, Any]:
  """Training-split statistics for `method`, per channel, from chunks of raw examples [n, ..., C] (as stored: uint8
  images are first scaled by 1/255). One pass: float64 sums, sums of squares, minima and maxima."""
  if method not in PREPROCESS:
    raise DataError(f"unknown preprocessing {method!r}: set config.data.preprocess to one of {', '.join(PREPROCESS)}")
  scale = 255.0 if np.dtype(dtype) == np.uint8 else 1.0
  stats: dict[str, Any] = {"method": method, "scale": scale}
  if method in ("scale", "none"):
    return stats
  n, s, ss, lo, hi = 0, 0.0, 0.0, np.inf, -np.inf
  for c in chunks:
    c = c.astype(np.float32) / np.float32(scale)
    flat = c.reshape(-1, c.shape[-1]).astype(np.float64)   # [n * H * W, C]
    n, s, ss = n + len(flat), s + flat.sum(0), ss + (flat * flat).sum(0)
    lo, hi = np.minimum(lo, flat.min(0)), np.maximum(hi, flat.max(0))
  mean = s / max(n, 1)
  if method == "center":
    shift, div = mean, np.ones_like(mean)
  elif method == "standardize":
    shift, div = mean, np.maximum(np.sqrt(np.maximum(ss / max(n, 1) - mean * mean, 0.0)), 1e-6)
  else:  # minmax
    shift, div = lo, np.maximum(hi - lo, 1e-6)
  stats.update(shift=shift.astype(np.float32).tolist(), div=div.astype(np.float32).tolist())
  return stats


def apply(x: np.ndarray, stats: dict) -> np.ndarray:
  """Examples as stored -> float32: x / scale, then (x - shift) / div per channel when the method has statistics.
  Elementwise, so a batch gets the same values whether it is mapped alone or inside its whole split."""
  out = x.astype(np.float32) / np.float32(stats["scale"])
  if "shift" in stats:
    out = (out - np.asarray(stats["shift"], np.float32)) / np.asarray(stats["div"], np.float32)
  return out


def preprocess(train: np.ndarray, others: list[np.ndarray], method: str):
  """Whole arrays: (train, others, stats), every array mapped with the training split's statistics."""
  stats = fit([train[i:i + 4096] for i in range(0, len(train), 4096)], method, train.dtype)
  return apply(train, stats), [apply(o, stats) for o in others], stats


def tokenize(texts, max_len: int = 400, vocab_size: int = 20000, vocab: dict | None = None):
  """Lower-cased word tokens (letters, digits, apostrophes; HTML `<br />` dropped) -> (ids [N, max_len] int32, vocab).

  Without `vocab`, the vocabulary is the vocab_size - 2 most frequent words of `texts` (ties by first appearance), with
  ids from 2; unknown words map to 1, and 0 pads. Texts longer than max_len keep their first max_len tokens.
  """
  import collections  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  words = [re.findall(r"[a-z0-9']+", (t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)).lower()
                      .replace("<br />", " ")) for t in texts]
  if vocab is None:
    counts = collections.Counter(w for ws in words for w in ws)
    vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(max(vocab_size - 2, 0)))}
  ids = np.zeros((len(words), max_len), np.int32)
  for i, ws in enumerate(words):
    row = [vocab.get(w, 1) for w in ws[:max_len]]
    ids[i, :len(row)] = row
  return ids, vocab
