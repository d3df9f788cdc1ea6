"""Preprocessing with statistics from the training split only (after the validation hold-out): `fit` reads the
training examples once, in chunks (so a split larger than memory streams through it), `apply` maps any batch of
examples with those statistics, and `inverse` maps model-side values back to the data's stored units. Elementwise per
channel (the last axis), so an in-memory split and a streamed one get the same bits. Text tokenisation with the
training split's vocabulary lives here too.

Every method is apply(x) = g((x / scale - shift) / div), per channel, with scale = 255 for uint8 data (else 1):

    method       shift   div                  g
    scale, none  -       -                    identity
    minmax       min     max - min            identity   -> [0, 1]
    mean_norm    mean    max - min            identity   -> within [-1, 1]
    standardize  mean    std                  identity   (z-score)
    center       mean    1                    identity
    log          -       -                    ln         (values must be > 0)
    arctan       -       -                    arctan * 2 / pi -> (-1, 1)
    ratio        0       max |x|              identity   -> within [-1, 1]

The statistics record is JSON: {"method", "scale"} plus "shift" and "div" (per-channel float32 values as Python
floats; divisors floored at 1e-6) for the methods that have them.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from jcnn.config import PREPROCESS
from jcnn.errors import DataError

FIELD = "config.data.preprocess"
_HALF_PI = np.float32(np.pi / 2)


def _check_method(method: str, field: str):
  if method not in PREPROCESS:
    raise DataError(f"unknown preprocessing {method!r}: set {field} to one of {', '.join(PREPROCESS)}")


def _refuse_non_positive(lo: np.ndarray, field: str):
  """lo [C]: per-channel minima in the data's stored units; log needs every one > 0."""
  bad = np.flatnonzero(~(lo > 0))
  if len(bad):
    c = int(bad[0])
    raise DataError(f"{field}=log needs values > 0, but the data has a minimum of {float(lo[c]):g} (channel {c}); "
                    f"shift the data or choose another transform (standardize, minmax, arctan, ...)")


def _moments(chunks: Iterable[np.ndarray], scale: float):
  """One pass over raw chunks [n, ..., C] -> (count, float64 per-channel sum, sum of squares, min, max) of x / scale."""
  n, s, ss, lo, hi = 0, 0.0, 0.0, np.inf, -np.inf
  for c in chunks:
    c = c.astype(np.float32) / np.float32(scale)
    flat = c.reshape(-1, c.shape[-1]).astype(np.float64)   # [n * H * W, C]
    n, s, ss = n + len(flat), s + flat.sum(0), ss + (flat * flat).sum(0)
    lo, hi = np.minimum(lo, flat.min(0)), np.maximum(hi, flat.max(0))
  return n, np.asarray(s), np.asarray(ss), np.asarray(lo), np.asarray(hi)


def fit(chunks: Iterable[np.ndarray], method: str, dtype, field: str = FIELD) -> dict[str, Any]:
  """Training-split statistics for `method`, per channel, from chunks of raw examples [n, ..., C] (as stored: uint8
  images are first scaled by 1/255). One pass: float64 sums, sums of squares, minima and maxima (max |x| is
  max(|min|, |max|)). `field` names the config field in messages (e.g. config.data.target_preprocess)."""
  _check_method(method, field)
  scale = 255.0 if np.dtype(dtype) == np.uint8 else 1.0
  stats: dict[str, Any] = {"method": method, "scale": scale}
  if method in ("scale", "none", "arctan"):
    return stats
  n, s, ss, lo, hi = _moments(chunks, scale)
  if method == "log":
    _refuse_non_positive(lo * scale, field)
    return stats
  mean = s / max(n, 1)
  if method == "center":
    shift, div = mean, np.ones_like(mean)
  elif method == "standardize":
    shift, div = mean, np.maximum(np.sqrt(np.maximum(ss / max(n, 1) - mean * mean, 0.0)), 1e-6)
  elif method == "minmax":
    shift, div = lo, np.maximum(hi - lo, 1e-6)
  elif method == "mean_norm":
    shift, div = mean, np.maximum(hi - lo, 1e-6)
  else:  # ratio
    shift, div = np.zeros_like(mean), np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1e-6)
  stats.update(shift=shift.astype(np.float32).tolist(), div=div.astype(np.float32).tolist())
  return stats


def apply(x, stats: dict, xp=np, field: str = FIELD):
  """Examples as stored [..., C] -> float32 g((x / scale - shift) / div), per channel. `xp` is numpy (host arrays;
  log refuses values <= 0 here) or jax.numpy (traceable: no host checks). Elementwise, so a batch gets the same values
  whether it is mapped alone or inside its whole split."""
  method = stats["method"]
  _check_method(method, field)
  out = xp.asarray(x).astype(xp.float32)
  if stats["scale"] != 1:
    out = out / np.float32(stats["scale"])
  if "shift" in stats:
    out = (out - xp.asarray(stats["shift"], xp.float32)) / xp.asarray(stats["div"], xp.float32)
  if method == "log":
    if xp is np and out.size:
      _refuse_non_positive(out.reshape(-1, out.shape[-1]).min(0) * np.float32(stats["scale"]), field)
    out = xp.log(out)
  elif method == "arctan":
    out = xp.arctan(out) / _HALF_PI
  return out


def inverse(y, stats: dict, xp=np):
  """The exact inverse of `apply`: model-side values [..., C] -> float32 values in the data's stored units
  (x = (g^-1(y) * div + shift) * scale). Traceable with xp=jax.numpy."""
  method = stats["method"]
  _check_method(method, FIELD)
  out = xp.asarray(y).astype(xp.float32)
  if method == "log":
    out = xp.exp(out)
  elif method == "arctan":
    out = xp.tan(out * _HALF_PI)
  if "shift" in stats:
    out = out * xp.asarray(stats["div"], xp.float32) + xp.asarray(stats["shift"], xp.float32)
  if stats["scale"] != 1:
    out = out * np.float32(stats["scale"])
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
