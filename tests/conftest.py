"""Shared test set-up: the repo root on sys.path, quiet TensorFlow, and a writer for tiny IDX datasets."""
import gzip
import importlib
import os
import struct
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)   # `import jcnn` and `import experiments` without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests do not share compiled programs through ~/.cache (hermetic); tests/test_launch.py checks the cache itself.
os.environ["JCNN_COMPILATION_CACHE"] = "0"
# Nor do they measure the machine or write its per-machine choices (jcnn.parallel.machine): the chunk size is the fixed default.
os.environ["JCNN_MACHINE_CACHE"] = "0"
os.environ.pop("JCNN_MICRO_BATCH_CPU", None)
os.environ.pop("JCNN_VARIANT_CHUNK_CPU", None)   # nor a user's cap on variants per CPU program (jcnn.sweep.cpu_chunk)
# The oneDNN convolution (jcnn.nn.onednn) is compiled once per test session into a folder of its own, shared with the
# tests' subprocesses through the environment; ~/.cache is left alone.
if "JCNN_ONEDNN_CACHE" not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ["JCNN_ONEDNN_CACHE"] = tempfile.mkdtemp(prefix="jcnn-onednn-")

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
  """The IDX encoding, written independently of jcnn.data: magic (0, 0, dtype code, ndim), big-endian sizes, data."""
  a = np.asarray(a)
  if a.dtype.kind in "if" and a.dtype.itemsize > 1:
    a = a.astype(a.dtype.newbyteorder(">"))
  return bytes([0, 0, IDX_CODES[a.dtype], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx(path: str, a: np.ndarray) -> str:
  data = idx_bytes(a)
  if path.endswith(".gz"):
    with gzip.open(path, "wb") as f:
      f.write(data)
  else:
    with open(path, "wb") as f:
      f.write(data)
  return path


def write_idx_dataset(folder, train_x, train_y, test_x, test_y, gz: bool = True) -> str:
  """A dataset folder in the MNIST file layout (train-images-idx3-ubyte[.gz] & co.)."""
  os.makedirs(folder, exist_ok=True)
  ext = ".gz" if gz else ""
  for stem, a in (("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y),
                  ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)):
    write_idx(os.path.join(str(folder), stem + ext), np.asarray(a))
  return str(folder)


def small_sweep_config(epochs: int = 3, val_size: int = 16):
  """The ablation_dropout experiment shrunk for checkpoint and search tests: synthetic 20x20x1 images (96 for training
  less `val_size` held out, 40 for test), batches of 16, ConvNet(8, 8, 8; dense 16), train metrics every 2 steps."""
  from experiments import ablation_dropout  # pylint: disable=g-import-not-at-top
  c = ablation_dropout.get_config()
  c.data.name = "synthetic"
  c.data.synthetic_shape = (20, 20, 1)
  c.data.synthetic_size = (96, 40)
  c.data.train_limit = 0
  c.data.val_size = val_size
  c.train.epochs = epochs
  c.train.batch_size = 16
  c.train.eval_batch_size = 16
  c.train.log_every = 2
  c.model.features = (8, 8, 8)
  c.model.dense = 16
  return c


def require(module: str, extra: str):
  """An optional dependency (torch for the cross-checks, onnxruntime for exported files). Without it the test skips,
  unless JCNN_REQUIRE_TORCH=1 (set by `make test` and `.ci/run`, whose set-up installs every extra): then it is a
  failure of the set-up, reported as one, not a silent skip."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    error = str(e)
  if os.environ.get("JCNN_REQUIRE_TORCH") == "1":
    pytest.fail(f"JCNN_REQUIRE_TORCH=1 but {module} cannot be imported ({error}): pip install -e '.[dev]' (it includes "
                f"[{extra}])", pytrace=False)
  pytest.skip(f"{module} is not installed: pip install -e '.[{extra}]' (JCNN_REQUIRE_TORCH=1 makes this a failure)")


def require_torch():
  return require("torch", "bench")


def require_onnxruntime():
  return require("onnxruntime", "export")


@pytest.fixture
def idx_dataset():
  return write_idx_dataset


@pytest.fixture
def repo_root():
  return ROOT
