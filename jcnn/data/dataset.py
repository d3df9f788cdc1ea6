"""A Dataset: the splits of one configured dataset, preprocessed, on the device or streamed.

`load(config.data, task=config.train.task)` = a source (`open_source`: built-in, folder, arrays, csv, tfds:NAME,
toy:NAME) -> labels checked for the task (`targets`) -> the validation hold-out and limits as row numbers ->
preprocessing statistics from the training split only (one pass; regression targets too, data.target_preprocess) ->
each split either decoded whole and put on the device once, or kept as Rows (jcnn.data.rows) that a streamed run reads
batch by batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jcnn.config import with_defaults
from jcnn.data import arrays, folder, preprocess, sources, tables, toys
from jcnn.data.preprocess import tokenize
from jcnn.data.rows import Rows
from jcnn.errors import DataError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Arrays on the device. Images [N, H, W, C] float32 after preprocessing (vectors: [N, 1, 1, D]); labels [N] int32,
  or for task 'regress' targets [N, T] float32 after data.target_preprocess."""
  name: str
  train_x: jax.Array
  train_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array
  val_x: jax.Array | None
  val_y: jax.Array | None
  num_classes: int
  stats: dict  # preprocessing statistics (from the training split only), for the record and for inference
  classes: tuple = ()      # class names (a folder's sub-folders), for predict
  streamed: bool = False   # True: the x fields are jcnn.data.rows.Rows on the host, read batch by batch (grain)
  task: str = "classify"   # config.train.task: classify | binary | regress
  target_stats: dict | None = None   # regress: data.target_preprocess's statistics and the targets' mean ('center')
  features: tuple = ()     # vector data: the feature (column) names

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train_x.shape[1:])

  @property
  def outputs(self) -> int:
    """Units of the model's last layer: the classes, 1 (binary), or the target's values (regress)."""
    return {"classify": self.num_classes, "binary": 1}.get(self.task) or int(self.train_y.shape[-1])


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


def open_source(cfg: Mapping[str, Any]):
  """config.data -> ({'train' | 'test' [| 'val']: (images [N, H, W, C] random access, labels [N] (or targets
  [N, T]) as stored)}, num_classes (0: not class numbers), class names, feature names). One dispatch on data.name;
  nothing is decoded yet."""
  name, path = cfg["name"], cfg["path"]
  if name in ("folder", "arrays", "csv") and not path:
    raise DataError(f"config.data.name={name} reads config.data.path: set --config.data.path=...")
  if name == "folder":
    splits, classes = folder.open_folder(path, tuple(cfg["image_size"]), cfg["channels"], cfg["test_fraction"])
    return splits, len(classes), tuple(classes), ()
  if name == "arrays":
    return (*arrays.open_arrays(path), ())
  if name == "csv":
    splits, num_classes, features = tables.open_table(path, cfg["target"], cfg["test_fraction"])
    return splits, num_classes, (), tuple(features)
  if name.startswith("toy:"):
    n_train, n_test = cfg["synthetic_size"][0], cfg["synthetic_size"][-1]
    splits, num_classes, features = toys.generate(name[len("toy:"):], n_train, n_test, cfg["noise"])
    return splits, num_classes, (), tuple(features)
  if name.startswith("tfds:"):
    from jcnn.data import tfds_source  # pylint: disable=g-import-not-at-top  (imports tensorflow_datasets)
    return (*tfds_source.open_prepared(name[len("tfds:"):], cfg["data_dir"]), ())
  trx, try_, tex, tey, num_classes = sources.load_raw(name, cfg["data_dir"], cfg["synthetic_shape"],
                                                       cfg["synthetic_size"])
  if trx.ndim == 3:
    trx, tex = trx[..., None], tex[..., None]
  return {"train": (trx, try_), "test": (tex, tey)}, num_classes, sources.CLASS_NAMES.get(name, ()), ()


def targets(splits: dict, num_classes: int, task: str, what: str) -> tuple[dict, int]:
  """Each split's labels as the task reads them: class numbers int32 [N] (classify; binary: 0 and 1 only), or
  float32 targets [N, T] (regress). -> (splits, num_classes; 0 for regress)."""
  if task == "regress":
    out = {}
    for s, (x, y) in splits.items():
      y = np.asarray(y)
      if y.dtype.kind not in "fiub":
        raise DataError(f"{what}: the {s} targets are {y.dtype} values; regression targets are numbers")
      out[s] = (x, y.reshape(len(y), -1).astype(np.float32))   # [N, T]
    return out, 0
  out = {s: (x, arrays.labels(np.asarray(y), f"{what}: y_{s}")) for s, (x, y) in splits.items()}
  k = max(num_classes, arrays.class_count([y for _, y in out.values()]))
  if task == "binary" and k > 2:
    raise DataError(f"config.train.task=binary needs the classes 0 and 1, but {what} has {k} classes; set "
                    f"config.train.task=classify")
  return out, k


def load(cfg: Mapping[str, Any], seed: int = 0, put: Callable = jax.device_put, task: str = "classify") -> Dataset:
  """config.data (missing fields take jcnn/config.py's defaults) -> Dataset: on the device, or as Rows to stream
  (data.stream). `put` places each host array (jcnn.parallel.mesh.load passes one that keeps numpy arrays, to shard
  them over a mesh). `task`: config.train.task, which says how to read the labels."""
  cfg = with_defaults("data", cfg)
  if cfg["name"] in sources.TEXT_DATASETS or cfg["name"] == "synthetic_text":
    if cfg["stream"] == "on":
      raise DataError(f"config.data.stream=on: {cfg['name']} is tokenised in memory and cannot stream; set "
                      f"config.data.stream=off (or auto)")
    return dataclasses.replace(load_text(cfg, seed, put), task=task)
  splits, num_classes, classes, features = open_source(cfg)
  splits, num_classes = targets(splits, num_classes, task, cfg["path"] or cfg["name"])
  (trx, try_), (tex, tey) = splits["train"], splits["test"]
  train, test = np.arange(len(trx)), np.arange(len(tex))
  val_size = int(cfg["val_size"])
  vax = vay = val = None
  if "val" in splits:
    if val_size:
      raise DataError(f"config.data.val_size={val_size}: {cfg['path']} has its own validation split; set "
                      f"config.data.val_size=0")
    vax, vay = splits["val"]
    val = np.arange(len(vax))
  elif val_size:
    if not 0 < val_size < len(trx):
      raise DataError(f"config.data.val_size={val_size} must be between 0 and the {len(trx)} training images")
    perm = np.random.default_rng(seed).permutation(len(trx))
    vax, vay, val, train = trx, try_, perm[:val_size], perm[val_size:]
  if cfg["train_limit"]:
    train = train[:cfg["train_limit"]]
  if cfg["test_limit"]:
    test = test[:cfg["test_limit"]]
  pad = int(cfg["pad"])   # zero-pad every side, e.g. 28x28 -> 32x32 for LeNet-5's input
  rows = {"train": Rows(trx, train, pad), "test": Rows(tex, test, pad)}
  labels = {"train": try_[train], "test": tey[test]}
  if val is not None:
    rows["val"], labels["val"] = Rows(vax, val, pad), vay[val]
  stats = preprocess.fit(rows["train"].chunks(), cfg["preprocess"], rows["train"].dtype)
  raw = preprocess.fit([], "none", rows["train"].dtype)   # data.preprocess_test=none: val / test only scaled
  rows = {s: r.with_stats(stats if s == "train" or cfg["preprocess_test"] == "train_stats" else raw)
          for s, r in rows.items()}
  target_stats = None
  if task == "regress":
    field = "config.data.target_preprocess"
    target_stats = preprocess.fit([labels["train"]], cfg["target_preprocess"], np.float32, field=field)
    target_stats["center"] = labels["train"].astype(np.float64).mean(0).tolist()   # R²'s float32 sums (train.tasks)
    labels = {s: preprocess.apply(y, target_stats, field=field) for s, y in labels.items()}
  stream = streams(cfg, rows["train"])
  place = (lambda r: r) if stream else (lambda r: put(r.materialize()))
  return Dataset(cfg["name"], place(rows["train"]), put(labels["train"]), place(rows["test"]), put(labels["test"]),
                 place(rows["val"]) if "val" in rows else None, put(labels["val"]) if "val" in labels else None,
                 num_classes, stats, classes=tuple(classes), streamed=stream, task=task, target_stats=target_stats,
                 features=tuple(features))


def streams(cfg: Mapping[str, Any], train: Rows) -> bool:
  """data.stream: 'on', 'off', or 'auto' = stream when the decoded training split exceeds data.stream_above_mb."""
  if cfg["stream"] == "auto":
    stream = train.nbytes > cfg["stream_above_mb"] * 2**20
    if stream:
      print(f"streaming the training split: {train.nbytes / 2**20:.0f} MiB decoded > config.data.stream_above_mb="
            f"{cfg['stream_above_mb']}", flush=True)
    return stream
  return cfg["stream"] == "on"
