"""Preprocessing on the host, once: image scaling and normalisation with statistics from the training split only
(after the validation hold-out), and text tokenisation with the training split's vocabulary."""
from __future__ import annotations

from typing import Any

import numpy as np

from jcnn.config import PREPROCESS
from jcnn.errors import DataError


def preprocess(train: np.ndarray, others: list[np.ndarray], method: str):
  """Returns (train, others, stats): float32 arrays in [0, 1]-scale then `method`, per channel."""
  if method not in PREPROCESS:
    raise DataError(f"unknown preprocessing {method!r}: set config.data.preprocess to one of {', '.join(PREPROCESS)}")
  scale = 255.0 if train.dtype == np.uint8 else 1.0
  train = train.astype(np.float32) / scale
  others = [o.astype(np.float32) / scale for o in others]
  axes = tuple(range(train.ndim - 1))  # every axis but channels
  stats: dict[str, Any] = {"method": method, "scale": scale}
  if method in ("scale", "none"):
    return train, others, stats
  mean = train.mean(axes, dtype=np.float64).astype(np.float32)
  if method == "center":
    shift, div = mean, np.ones_like(mean)
  elif method == "standardize":
    shift, div = mean, np.maximum(train.std(axes, dtype=np.float64).astype(np.float32), 1e-6)
  else:  # minmax
    lo, hi = train.min(axes), train.max(axes)
    shift, div = lo, np.maximum(hi - lo, 1e-6)
  stats.update(shift=shift.tolist(), div=div.tolist())
  return (train - shift) / div, [(o - shift) / div for o in others], stats


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
