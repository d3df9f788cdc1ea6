"""A Dataset: the splits of one configured dataset, preprocessed, on the device.

`load(config.data)` = a source (jcnn.data.sources) -> the validation hold-out and limits -> preprocessing
(jcnn.data.preprocess, statistics from the training split only) -> arrays put on the device once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jcnn.config import with_defaults
from jcnn.data import sources
from jcnn.data.preprocess import preprocess, tokenize
from jcnn.errors import DataError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Arrays on the device. Images [N, H, W, C] float32 after preprocessing; labels [N] int32."""
  name: str
  train_x: jax.Array
  train_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array
  val_x: jax.Array | None
  val_y: jax.Array | None
  num_classes: int
  stats: dict  # preprocessing statistics (from the training split only), for the record and for inference

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train_x.shape[1:])


def load_text(cfg: Mapping[str, Any], seed: int = 0, put: Callable = jax.device_put) -> "Dataset":
  """config.data (name, max_len, vocab_size, val_size, train_limit, test_limit) -> Dataset of token ids on the device.
  The vocabulary comes from the training split (after the validation hold-out). `synthetic_text` makes the ids
  directly (synthetic_size examples of max_len tokens below vocab_size), with no tokenizer."""
  max_len, vocab_size = int(cfg["max_len"]), int(cfg["vocab_size"])
  is_synthetic = cfg["name"] == "synthetic_text"
  if is_synthetic:
    trx, try_, tex, tey, num_classes = sources.synthetic_text(
        max_len, vocab_size, n_train=cfg["synthetic_size"][0], n_test=cfg["synthetic_size"][-1])
  else:
    trx, try_, tex, tey, num_classes = sources.load_tfds(cfg["name"], cfg["data_dir"])
  val_size = int(cfg["val_size"])
  vax = vay = None
  if val_size:
    if not 0 < val_size < len(trx):
      raise DataError(f"config.data.val_size={val_size} must be between 0 and the {len(trx)} training examples")
    perm = np.random.default_rng(seed).permutation(len(trx))
    vax, vay, trx, try_ = trx[perm[:val_size]], try_[perm[:val_size]], trx[perm[val_size:]], try_[perm[val_size:]]
  if cfg["train_limit"]:
    trx, try_ = trx[:cfg["train_limit"]], try_[:cfg["train_limit"]]
  if cfg["test_limit"]:
    tex, tey = tex[:cfg["test_limit"]], tey[:cfg["test_limit"]]
  if not is_synthetic:
    trx, vocab = tokenize(trx, max_len, vocab_size)
    tex = tokenize(tex, max_len, vocab=vocab)[0]
    vax = tokenize(vax, max_len, vocab=vocab)[0] if vax is not None else None
  return Dataset(cfg["name"], put(trx), put(try_), put(tex), put(tey), put(vax) if vax is not None else None,
                 put(vay) if vay is not None else None, num_classes,
                 {"method": "tokens", "max_len": max_len, "vocab_size": vocab_size})


def load(cfg: Mapping[str, Any], seed: int = 0, put: Callable = jax.device_put) -> Dataset:
  """config.data (missing fields take jcnn/config.py's defaults) -> Dataset on the device. `put` places each host
  array (jcnn.parallel.mesh.load passes one that keeps numpy arrays, to shard them over a mesh)."""
  cfg = with_defaults("data", cfg)
  if cfg["name"] in sources.TEXT_DATASETS or cfg["name"] == "synthetic_text":
    return load_text(cfg, seed, put)
  trx, try_, tex, tey, num_classes = sources.load_raw(cfg["name"], cfg["data_dir"],
                                                       cfg["synthetic_shape"], cfg["synthetic_size"])
  if trx.ndim == 3:
    trx, tex = trx[..., None], tex[..., None]
  pad = int(cfg["pad"])
  if pad:  # zero-pad every side, e.g. 28x28 -> 32x32 for LeNet-5's input
    trx, tex = (np.pad(a, [(0, 0), (pad, pad), (pad, pad), (0, 0)]) for a in (trx, tex))
  val_size = int(cfg["val_size"])
  vax = vay = None
  if val_size:
    if not 0 < val_size < len(trx):
      raise DataError(f"config.data.val_size={val_size} must be between 0 and the {len(trx)} training images")
    perm = np.random.default_rng(seed).permutation(len(trx))
    vax, vay = trx[perm[:val_size]], try_[perm[:val_size]]
    trx, try_ = trx[perm[val_size:]], try_[perm[val_size:]]
  if cfg["train_limit"]:
    trx, try_ = trx[:cfg["train_limit"]], try_[:cfg["train_limit"]]
  if cfg["test_limit"]:
    tex, tey = tex[:cfg["test_limit"]], tey[:cfg["test_limit"]]
  others = [tex] + ([vax] if vax is not None else [])
  trx, others, stats = preprocess(trx, others, cfg["preprocess"])
  return Dataset(cfg["name"], put(trx), put(try_), put(others[0]), put(tey),
                 put(others[1]) if vax is not None else None, put(vay) if vay is not None else None,
                 num_classes, stats)
