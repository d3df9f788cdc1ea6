"""Data sources: each returns host arrays (train_x [N, H, W, C] (or token ids [N, T]), train_y, test_x, test_y,
num_classes), uint8 images as they are stored.

`load_raw(name)` resolves an image dataset's name in this order:
  1. local IDX files (`train-images-idx3-ubyte[.gz]` & co.) in config.data.data_dir, $JCNN_DATA_DIR (or a sub-folder
     named after the dataset in either), or the Debian package's folder (/usr/share/datasets/fashion-mnist);
  2. tensorflow-datasets, imported only here (it pulls in TensorFlow), which reads its cache or downloads;
  3. otherwise a DataError whose one line says how to get the data.
`synthetic` makes a small learnable dataset in memory, for tests; `synthetic_text` the same as token ids (TextCNN).
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from jcnn.errors import DataError

DEBIAN_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}
# Class names of the built-in datasets, by label (a folder's names are its sub-folders).
CLASS_NAMES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "mnist": tuple(str(d) for d in range(10)),
    "imdb_reviews": ("negative", "positive"),
}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


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
