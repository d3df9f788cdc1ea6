"""Datasets by name, preprocessing, and device-resident batching.

`load(config.data)` resolves a name in this order:
  1. local IDX files (`train-images-idx3-ubyte[.gz]` & co.) in config.data.data_dir, $JCNN_DATA_DIR (or a sub-folder
     named after the dataset in either), or the Debian package's folder (/usr/share/datasets/fashion-mnist);
  2. tensorflow-datasets, imported only here (it pulls in TensorFlow), which reads its cache or downloads;
  3. otherwise a DataError whose one line says how to get the data.
`synthetic` makes a small learnable dataset in memory, for tests; `synthetic_text` the same as token ids (TextCNN).

The arrays are put on the device once. Shuffling and batching are index arrays made with jax.random: a training step
gathers its batch on the device (`images[idx]`), so there is no host loop or host->device copy per step.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.config import AUGMENTATIONS, PREPROCESS, with_defaults
from jcnn.errors import DataError

DEBIAN_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


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


# ----------------------------------------------------------------------------------------------------------------
# Sources. Each returns uint8 (or float) numpy arrays: (train_x [N,H,W,C], train_y, test_x, test_y, num_classes).
def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzipped): magic (0, 0, dtype, ndim), ndim big-endian uint32 sizes, then data."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read IDX file {path}: {e}; re-install or re-download it") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise DataError(f"{path} is not an IDX file (bad magic number); re-install or re-download it")
  dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
  if raw[2] not in dtypes:
    raise DataError(f"{path}: unknown IDX data type 0x{raw[2]:02x}; re-install or re-download it")
  ndim = raw[3]
  if len(raw) < 4 + 4 * ndim:
    raise DataError(f"{path} is truncated (header ends early); re-install or re-download it")
  shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
  data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise DataError(f"{path} is truncated ({data.size} of {int(np.prod(shape))} values); re-install or re-download it")
  return data.reshape(shape)


def _find(folder: str, stem: str) -> str | None:
  for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
    p = os.path.join(folder, name)
    if os.path.exists(p):
      return p
  return None


def idx_dirs(name: str, data_dir: str = "") -> list[str]:
  """Folders searched for `name`'s IDX files, in order."""
  out = []
  for base in (data_dir, os.environ.get("JCNN_DATA_DIR", "")):
    if base:
      out += [os.path.join(base, name), os.path.join(base, name.replace("_", "-")), base]
  if name in DEBIAN_DIRS:
    out.append(DEBIAN_DIRS[name])
  return out


def load_idx(folder: str):
  arrays = {}
  for split, (img, lab) in IDX_FILES.items():
    x, y = read_idx(_find(folder, img)), read_idx(_find(folder, lab))
    if x.shape[0] != y.shape[0]:
      raise DataError(f"{folder}: {split} has {x.shape[0]} images but {y.shape[0]} labels; re-install the files")
    arrays[split] = (x[..., None] if x.ndim == 3 else x, y.astype(np.int32))
  num_classes = int(max(arrays["train"][1].max(), arrays["test"][1].max())) + 1
  return arrays["train"] + arrays["test"] + (num_classes,)


def network_available(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
  """Can we reach TFDS's download mirror? Checked first so an offline machine fails in seconds, not after TFDS's
  minutes of retries."""
  import socket  # pylint: disable=g-import-not-at-top
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def load_tfds(name: str, data_dir: str = ""):
  """tensorflow-datasets, imported lazily (it pulls in TensorFlow). Downloads on first use where a network exists."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError(f"dataset {name!r} is not on disk and tensorflow-datasets is not installed: "
                    f"`pip install tensorflow-datasets tensorflow-cpu`, or put IDX files in $JCNN_DATA_DIR/{name}") \
      from None
  kw = {"data_dir": data_dir} if data_dir else {}
  hint = (f"or, offline, `apt-get install dataset-fashion-mnist` or put its IDX files in $JCNN_DATA_DIR/{name}"
          if name == "fashion_mnist" else
          f"or, offline, put its IDX files in $JCNN_DATA_DIR/{name}" if name == "mnist" else
          "then copy ~/tensorflow_datasets to this machine")
  try:
    builder = tfds.builder(TFDS_NAMES[name], **kw)
    if not builder.is_prepared() and not network_available():
      raise DataError(f"dataset {name!r} is not on disk and there is no network to download it; run once with a "
                      f"network, {hint}")
    builder.download_and_prepare()
    splits = [tfds.as_numpy(builder.as_dataset(split=s, batch_size=-1, as_supervised=True)) for s in ("train", "test")]
    num_classes = builder.info.features["label"].num_classes
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (network, checksum and TF errors all mean "not available")
    reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    raise DataError(f"dataset {name!r} is not on disk and tensorflow-datasets could not get it ({reason}); "
                    f"run once with a network, {hint}") from None
  (trx, try_), (tex, tey) = splits
  return trx, try_.astype(np.int32), tex, tey.astype(np.int32), num_classes


# Text: token ids [N, T] int32 (0 = padding, 1 = out of vocabulary), for TextCNN. TFDS reads or downloads the texts.
TEXT_DATASETS = ("imdb_reviews",)
TFDS_NAMES.update({n: n for n in TEXT_DATASETS})


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


def synthetic_text(max_len: int = 400, vocab_size: int = 20000, num_classes: int = 2, n_train: int = 2048,
                   n_test: int = 512, seed: int = 0):
  """A learnable toy text problem, already as token ids [N, max_len] int32 in [0, vocab_size) (0 pads, as tokenize's).

  Each example has a random length in [max_len // 2, max_len] of random word ids (>= 2); a quarter of its words
  (at least one) are replaced by words of its class's own set (disjoint sets of up to 8 ids), so the presence of a
  class's words (what TextCNN's max over time detects) gives the label."""
  per_class = min(8, (vocab_size - 2) // (2 * num_classes))
  if per_class < 1:
    raise DataError(f"synthetic_text needs config.data.vocab_size >= {2 + 2 * num_classes} "
                    f"(got {vocab_size}): each class gets its own words")
  rng = np.random.default_rng(seed)
  class_words = 2 + rng.permutation(vocab_size - 2)[:num_classes * per_class].reshape(num_classes, per_class)

  def make(n):
    y = rng.integers(0, num_classes, size=n).astype(np.int32)
    x = rng.integers(2, vocab_size, size=(n, max_len)).astype(np.int32)
    lengths = rng.integers(max(max_len // 2, 1), max_len + 1, size=n)
    for i in range(n):
      x[i, lengths[i]:] = 0
      where = rng.choice(lengths[i], size=max(1, lengths[i] // 4), replace=False)
      x[i, where] = rng.choice(class_words[y[i]], size=where.size)
    return x, y

  return make(n_train) + make(n_test) + (num_classes,)


def load_text(cfg: Mapping[str, Any], seed: int = 0, put: Callable = jax.device_put) -> "Dataset":
  """config.data (name, max_len, vocab_size, val_size, train_limit, test_limit) -> Dataset of token ids on the device.
  The vocabulary comes from the training split (after the validation hold-out). `synthetic_text` makes the ids
  directly (synthetic_size examples of max_len tokens below vocab_size), with no tokenizer."""
  max_len, vocab_size = int(cfg["max_len"]), int(cfg["vocab_size"])
  is_synthetic = cfg["name"] == "synthetic_text"
  if is_synthetic:
    trx, try_, tex, tey, num_classes = synthetic_text(max_len, vocab_size, n_train=cfg["synthetic_size"][0],
                                                      n_test=cfg["synthetic_size"][-1])
  else:
    trx, try_, tex, tey, num_classes = load_tfds(cfg["name"], cfg["data_dir"])
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


def synthetic(shape=(28, 28, 1), num_classes=10, n_train=2048, n_test=512, seed=0):
  """A learnable toy problem: each class is a fixed random template plus noise. uint8, like real images."""
  rng = np.random.default_rng(seed)
  templates = rng.uniform(0, 255, size=(num_classes,) + tuple(shape))

  def make(n):
    y = rng.integers(0, num_classes, size=n).astype(np.int32)
    x = 0.6 * templates[y] + 0.4 * rng.uniform(0, 255, size=(n,) + tuple(shape))
    return x.astype(np.uint8), y

  return make(n_train) + make(n_test) + (num_classes,)


def load_raw(name: str, data_dir: str = "", synthetic_shape=(28, 28, 1), synthetic_size=(2048, 512)):
  if name == "synthetic":
    return synthetic(tuple(synthetic_shape), n_train=synthetic_size[0], n_test=synthetic_size[1])
  for folder in idx_dirs(name, data_dir):
    if _find(folder, IDX_FILES["train"][0]):
      return load_idx(folder)
  if name not in TFDS_NAMES:
    raise DataError(f"unknown dataset {name!r}: set config.data.name to one of "
                    f"{', '.join(sorted(TFDS_NAMES) + ['synthetic', 'synthetic_text'])}")
  return load_tfds(name, data_dir)


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing. Statistics come from the training split only (after the validation hold-out).
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


def load(cfg: Mapping[str, Any], seed: int = 0, put: Callable = jax.device_put) -> Dataset:
  """config.data (missing fields take jcnn/config.py's defaults) -> Dataset on the device. `put` places each host
  array (jcnn.mesh.load passes one that keeps numpy arrays, to shard them over a mesh)."""
  cfg = with_defaults("data", cfg)
  if cfg["name"] in TEXT_DATASETS or cfg["name"] == "synthetic_text":
    return load_text(cfg, seed, put)
  trx, try_, tex, tey, num_classes = load_raw(cfg["name"], cfg["data_dir"], cfg["synthetic_shape"],
                                               cfg["synthetic_size"])
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


# ----------------------------------------------------------------------------------------------------------------
# Augmentation, on the device, inside the jitted train step. Per-example randomness from one key.

def augment(key: jax.Array, x: jax.Array, kind: str = "none", crop_pad: int = 4) -> jax.Array:
  """x: [B, H, W, C]. 'flip': random horizontal flips; 'crop': pad by crop_pad (zeros) and take a random HxW crop;
  'flip_crop': both (the standard CIFAR augmentation of He et al. 2016)."""
  if kind == "none":
    return x
  if kind not in AUGMENTATIONS:
    raise DataError(f"unknown augmentation {kind!r}: set config.data.augment to one of {', '.join(AUGMENTATIONS)}")
  k_flip, k_crop = jax.random.split(key)
  b, h, w, _ = x.shape
  if "crop" in kind:
    padded = jnp.pad(x, [(0, 0), (crop_pad, crop_pad), (crop_pad, crop_pad), (0, 0)])
    offs = jax.random.randint(k_crop, (b, 2), 0, 2 * crop_pad + 1)
    x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, im.shape[-1])))(padded, offs)
  if "flip" in kind:
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
  return x


# ----------------------------------------------------------------------------------------------------------------
# Batching on the device.
def epoch_batches(key: jax.Array, n: int, batch_size: int) -> jax.Array:
  """A shuffled epoch as indices [steps, batch_size] (the last partial batch is dropped, as Keras' shuffle does not
  but every compiled step then has one shape)."""
  steps = n // batch_size
  if steps == 0:
    raise DataError(f"batch size {batch_size} is larger than the {n} training images; lower config.train.batch_size")
  return jax.random.permutation(key, n)[:steps * batch_size].reshape(steps, batch_size)


def eval_batches(n: int, batch_size: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """All n examples in order as indices [steps, batch_size] with a mask [steps, batch_size] for the padded tail. The
  batch is rounded up to a multiple of `multiple` (the devices it is split over; the extra rows are masked)."""
  batch_size = -(-min(batch_size, n) // multiple) * multiple
  steps = -(-n // batch_size)
  idx = np.arange(steps * batch_size)
  return np.minimum(idx, n - 1).reshape(steps, -1), (idx < n).reshape(steps, -1)
