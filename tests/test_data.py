"""jcnn.data: the IDX reader, source resolution, preprocessing statistics, hold-out, batching and augmentation."""
import gzip
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import idx_bytes, write_idx

from jcnn import data
from jcnn.errors import DataError


# ----------------------------------------------------------------------------------------------------------------
# IDX reader.
@pytest.mark.parametrize("ext", ["", ".gz"])
def test_read_idx_roundtrip(tmp_path, ext):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  labels = np.array([7, 1], np.uint8)
  np.testing.assert_array_equal(data.read_idx(write_idx(str(tmp_path / f"img{ext}"), images)), images)
  np.testing.assert_array_equal(data.read_idx(write_idx(str(tmp_path / f"lab{ext}"), labels)), labels)
  floats = np.array([[1.5, -2.0], [0.25, 3.0]], ">f4")
  np.testing.assert_array_equal(data.read_idx(write_idx(str(tmp_path / f"f{ext}"), floats)), floats)


def test_read_idx_header_by_hand(tmp_path):
  # magic 0x00000803 (uint8, 3 dims), sizes 1, 2, 2, then 4 bytes.
  raw = bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 10, 20, 30, 40])
  assert raw == idx_bytes(np.array([[[10, 20], [30, 40]]], np.uint8))
  (tmp_path / "x").write_bytes(raw)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "x")), [[[10, 20], [30, 40]]])


def test_read_idx_corrupt_files(tmp_path):
  good = idx_bytes(np.zeros((3, 4, 4), np.uint8))
  cases = {
      "truncated_data": (good[:-5], "truncated"),
      "truncated_header": (good[:9], "header ends early"),         # magic says 3 sizes, the file ends inside the second
      "bad_magic": (b"\x08\x03" + good[2:], "bad magic"),
      "bad_dtype": (good[:2] + b"\x07" + good[3:], "unknown IDX data type"),
      "empty": (b"", "bad magic"),
  }
  for name, (raw, msg) in cases.items():
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(DataError, match=msg):
      data.read_idx(str(tmp_path / name))
  (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:20])     # a gzip stream cut short
  with pytest.raises(DataError, match="cut.gz"):
    data.read_idx(str(tmp_path / "cut.gz"))
  (tmp_path / "notgz.gz").write_bytes(good)                        # not gzip at all
  with pytest.raises(DataError, match="re-download"):
    data.read_idx(str(tmp_path / "notgz.gz"))
  with pytest.raises(DataError, match="cannot read"):
    data.read_idx(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------------------------------------------
# Sources and resolution.
def _tiny(n_train=20, n_test=6, shape=(4, 4), classes=3, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8), (np.arange(n_train) % classes).astype(np.uint8),
          rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8), (np.arange(n_test) % classes).astype(np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_folder(tmp_path, idx_dataset, gz):
  trx, tr_y, tex, tey = _tiny()
  idx_dataset(tmp_path / "d", trx, tr_y, tex, tey, gz=gz)
  ds = data.load({"name": "whatever", "data_dir": str(tmp_path / "d"), "preprocess": "scale"})
  assert ds.image_shape == (4, 4, 1) and ds.num_classes == 3
  np.testing.assert_allclose(ds.train_x[..., 0], trx / 255.0, rtol=1e-6)
  np.testing.assert_allclose(ds.test_x[..., 0], tex / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(ds.train_y, tr_y)
  assert ds.train_y.dtype == jnp.int32 and ds.val_x is None


def test_label_count_mismatch(tmp_path, idx_dataset):
  trx, tr_y, tex, tey = _tiny()
  idx_dataset(tmp_path, trx, tr_y[:-1], tex, tey)
  with pytest.raises(DataError, match="19 labels"):
    data.load({"name": "x", "data_dir": str(tmp_path)})


def test_data_dir_resolution(tmp_path, idx_dataset, monkeypatch):
  monkeypatch.setitem(data.DEBIAN_DIRS, "fashion_mnist", str(tmp_path / "no_debian"))
  env = tmp_path / "env"
  monkeypatch.setenv("JCNN_DATA_DIR", str(env))
  assert data.idx_dirs("fashion_mnist", "/cfg") == ["/cfg/fashion_mnist", "/cfg/fashion-mnist", "/cfg",
                                                    f"{env}/fashion_mnist", f"{env}/fashion-mnist", str(env),
                                                    str(tmp_path / "no_debian")]
  a, b = _tiny(seed=1), _tiny(seed=2)
  idx_dataset(env / "fashion-mnist", *a)                  # $JCNN_DATA_DIR/<name with dashes>
  ds = data.load({"name": "fashion_mnist"})
  np.testing.assert_allclose(ds.train_x[..., 0], a[0] / 255.0, rtol=1e-6)
  idx_dataset(tmp_path / "cfg" / "fashion_mnist", *b)     # config.data.data_dir wins over the environment
  ds = data.load({"name": "fashion_mnist", "data_dir": str(tmp_path / "cfg")})
  np.testing.assert_allclose(ds.train_x[..., 0], b[0] / 255.0, rtol=1e-6)


@pytest.fixture
def no_local_mnist(tmp_path, monkeypatch):
  monkeypatch.setenv("JCNN_DATA_DIR", str(tmp_path / "empty"))
  monkeypatch.setitem(data.DEBIAN_DIRS, "mnist", str(tmp_path / "no_debian"))


def test_missing_dataset_without_tfds(no_local_mnist, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)    # `import tensorflow_datasets` raises ImportError
  with pytest.raises(DataError) as e:
    data.load({"name": "mnist"})
  msg = str(e.value)
  assert "'mnist' is not on disk" in msg and "pip install tensorflow-datasets" in msg and "$JCNN_DATA_DIR/mnist" in msg
  assert "\n" not in msg


def test_missing_dataset_tfds_cannot_download(no_local_mnist, monkeypatch):
  def builder(name, **kw):
    raise ConnectionError(f"could not reach storage.googleapis.com for {name}\nsecond line of traceback")

  monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(builder=builder))
  with pytest.raises(DataError) as e:
    data.load({"name": "mnist"})
  msg = str(e.value)
  assert "could not reach storage.googleapis.com for mnist" in msg and "second line" not in msg
  assert "run once with a network" in msg and "$JCNN_DATA_DIR/mnist" in msg and "\n" not in msg


def test_unknown_dataset(no_local_mnist):
  with pytest.raises(DataError, match="unknown dataset 'imagenet7'.*synthetic"):
    data.load({"name": "imagenet7"})


def test_synthetic():
  ds = data.load({"name": "synthetic", "synthetic_shape": (8, 8, 3), "synthetic_size": (40, 10)})
  assert ds.train_x.shape == (40, 8, 8, 3) and ds.test_x.shape == (10, 8, 8, 3) and ds.num_classes == 10
  assert float(ds.train_x.min()) >= 0 and float(ds.train_x.max()) <= 1
  again = data.load({"name": "synthetic", "synthetic_shape": (8, 8, 3), "synthetic_size": (40, 10)})
  np.testing.assert_array_equal(ds.train_x, again.train_x)
  # Learnable: nearest class mean (from the 40 training images) classifies 200 test images well above chance (0.1),
  # while the same classifier fit on shuffled training labels does not.
  ds = data.load({"name": "synthetic", "synthetic_shape": (8, 8, 3), "synthetic_size": (40, 200)})
  trx, try_ = np.asarray(ds.train_x).reshape(40, -1), np.asarray(ds.train_y)
  tex, tey = np.asarray(ds.test_x).reshape(200, -1), np.asarray(ds.test_y)

  def nearest_mean_accuracy(labels):
    present = [c for c in range(10) if (labels == c).any()]
    means = np.stack([trx[labels == c].mean(0) for c in present])                 # [classes seen, 192]
    pred = np.asarray(present)[((tex[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    return (pred == tey).mean()

  assert nearest_mean_accuracy(try_) >= 0.9
  assert nearest_mean_accuracy(np.random.default_rng(0).permutation(try_)) <= 0.5


def test_synthetic_text_tokens_are_learnable():
  cfg = {"name": "synthetic_text", "max_len": 24, "vocab_size": 50, "synthetic_size": (200, 200), "val_size": 20,
         "preprocess": "standardize"}                  # preprocessing does not apply to token ids
  ds = data.load(cfg)
  assert ds.train_x.shape == (180, 24) and ds.val_x.shape == (20, 24) and ds.test_x.shape == (200, 24)
  assert ds.train_x.dtype == jnp.int32 and ds.num_classes == 2 and ds.image_shape == (24,)
  x = np.asarray(ds.train_x)
  assert x.min() == 0 and x.max() < 50 and not (x == 1).any()        # 0 pads, 1 (unknown) is never drawn
  lengths = (x != 0).sum(1)
  assert lengths.min() >= 12 and (x[np.arange(24)[None] >= lengths[:, None]] == 0).all()   # padding only at the end
  np.testing.assert_array_equal(data.load(cfg).train_x, ds.train_x)   # deterministic
  assert np.bincount(np.asarray(ds.train_y), minlength=2).min() >= 60

  # Learnable: bag-of-words nearest class mean (fit on train) classifies the test split well above chance (0.5).
  def bags(ids):                                       # [N, vocab] word frequencies, padding dropped
    counts = np.stack([np.bincount(row, minlength=50) for row in np.asarray(ids)])[:, 2:].astype(float)
    return counts / counts.sum(1, keepdims=True)

  trb, teb, tey = bags(ds.train_x), bags(ds.test_x), np.asarray(ds.test_y)

  def nearest_mean_accuracy(labels):
    means = np.stack([trb[labels == c].mean(0) for c in (0, 1)])
    return (((teb[:, None] - means[None]) ** 2).sum(-1).argmin(1) == tey).mean()

  assert nearest_mean_accuracy(np.asarray(ds.train_y)) >= 0.9
  with pytest.raises(DataError, match="vocab_size >= 6"):
    data.load({"name": "synthetic_text", "vocab_size": 5})


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing statistics come from the training split only, after the validation hold-out.
def _id_dataset(tmp_path, idx_dataset, n_train=50, n_test=10):
  """Image i of the training split is constant, with value v_c(i) per channel; its label is i (so splits are
  traceable). The test split has very different values, so test statistics would give different numbers."""
  ids = np.arange(n_train)
  per_channel = np.stack([ids * 2, 255 - ids * 3, (ids * 7) % 256], -1).astype(np.uint8)     # [N, 3]
  trx = np.broadcast_to(per_channel[:, None, None, :], (n_train, 2, 2, 3)).copy()
  tex = np.full((n_test, 2, 2, 3), 200, np.uint8)
  tex[:, 0, 0, :] = 10
  idx_dataset(tmp_path, trx, ids.astype(np.uint8), tex, np.zeros(n_test, np.uint8))
  return per_channel.astype(np.float64) / 255.0, tex.astype(np.float64) / 255.0


@pytest.mark.parametrize("val_size", [0, 15])
def test_standardize_uses_train_split_only(tmp_path, idx_dataset, val_size):
  values, test_raw = _id_dataset(tmp_path, idx_dataset)
  ds = data.load({"name": "ids", "data_dir": str(tmp_path), "preprocess": "standardize", "val_size": val_size})
  train_ids = np.asarray(ds.train_y)
  assert len(train_ids) == 50 - val_size
  mean, std = values[train_ids].mean(0), values[train_ids].std(0)     # per channel (each image is constant)
  np.testing.assert_allclose(ds.stats["shift"], mean, rtol=1e-5)
  np.testing.assert_allclose(ds.stats["div"], std, rtol=1e-5)
  if val_size:
    assert not np.allclose(mean, values.mean(0), rtol=1e-3)          # the hold-out changes the statistics
    val_ids = np.asarray(ds.val_y)
    np.testing.assert_allclose(ds.val_x[:, 0, 0, :], (values[val_ids] - mean) / std, rtol=1e-4, atol=1e-5)
  tx = np.asarray(ds.train_x)
  np.testing.assert_allclose(tx.mean((0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(tx.std((0, 1, 2)), 1, rtol=1e-4)
  np.testing.assert_allclose(ds.test_x, (test_raw - mean) / std, rtol=1e-4, atol=1e-5)
  assert abs(float(ds.test_x.mean())) > 1                              # test is not standardised by its own stats


def test_minmax_and_center(tmp_path, idx_dataset):
  values, test_raw = _id_dataset(tmp_path, idx_dataset)
  ds = data.load({"name": "ids", "data_dir": str(tmp_path), "preprocess": "minmax"})
  lo, hi = values.min(0), values.max(0)
  np.testing.assert_allclose(ds.train_x.min((0, 1, 2)), 0, atol=1e-6)
  np.testing.assert_allclose(ds.train_x.max((0, 1, 2)), 1, rtol=1e-6)
  np.testing.assert_allclose(ds.test_x, (test_raw - lo) / (hi - lo), rtol=1e-4, atol=1e-5)
  ds = data.load({"name": "ids", "data_dir": str(tmp_path), "preprocess": "center"})
  np.testing.assert_allclose(ds.stats["shift"], values.mean(0), rtol=1e-5)
  np.testing.assert_allclose(ds.stats["div"], 1.0)
  np.testing.assert_allclose(ds.test_x, test_raw - values.mean(0), rtol=1e-4, atol=1e-5)
  ds = data.load({"name": "ids", "data_dir": str(tmp_path), "preprocess": "none"})
  np.testing.assert_allclose(ds.test_x, test_raw, rtol=1e-6)
  with pytest.raises(DataError, match="unknown preprocessing"):
    data.load({"name": "ids", "data_dir": str(tmp_path), "preprocess": "whiten"})


def test_val_holdout_sizes_and_limits(tmp_path, idx_dataset):
  _id_dataset(tmp_path, idx_dataset)
  ds = data.load({"name": "ids", "data_dir": str(tmp_path), "val_size": 12}, seed=3)
  tr, va = np.asarray(ds.train_y), np.asarray(ds.val_y)
  assert len(tr) == 38 and len(va) == 12 and ds.val_x.shape == (12, 2, 2, 3)
  assert sorted(np.concatenate([tr, va]).tolist()) == list(range(50))    # disjoint, and nothing lost
  assert sorted(va.tolist()) != list(range(12))                          # a random hold-out, not the first 12
  ds = data.load({"name": "ids", "data_dir": str(tmp_path), "train_limit": 7, "test_limit": 4, "pad": 2})
  assert ds.train_x.shape == (7, 6, 6, 3) and ds.test_x.shape == (4, 6, 6, 3)
  assert float(jnp.abs(ds.train_x[:, 0]).max()) == 0.0                    # the padding is zeros
  for bad in (50, 60):
    with pytest.raises(DataError, match="val_size"):
      data.load({"name": "ids", "data_dir": str(tmp_path), "val_size": bad})


# ----------------------------------------------------------------------------------------------------------------
# Batching.
def test_epoch_batches_is_a_permutation():
  b = np.asarray(data.epoch_batches(jax.random.key(0), 103, 10))
  assert b.shape == (10, 10)
  flat = b.ravel()
  assert len(set(flat.tolist())) == 100 and flat.min() >= 0 and flat.max() < 103      # no repeats, in range
  full = np.asarray(data.epoch_batches(jax.random.key(0), 40, 8)).ravel()
  assert sorted(full.tolist()) == list(range(40)) and full.tolist() != list(range(40))
  other = np.asarray(data.epoch_batches(jax.random.key(1), 40, 8)).ravel()
  assert other.tolist() != full.tolist()
  with pytest.raises(DataError, match="batch size"):
    data.epoch_batches(jax.random.key(0), 5, 8)


@pytest.mark.parametrize("n,bs,steps", [(10, 4, 3), (12, 4, 3), (3, 8, 1), (1, 1, 1)])
def test_eval_batches_cover_each_index_once(n, bs, steps):
  idx, mask = data.eval_batches(n, bs)
  assert idx.shape == mask.shape and idx.shape[0] == steps
  assert sorted(idx[mask].tolist()) == list(range(n))
  assert mask.sum() == n and idx.max() < n
  assert mask.ravel().tolist() == [True] * n + [False] * (idx.size - n)    # the padding is the tail only


# ----------------------------------------------------------------------------------------------------------------
# Augmentation.
def test_augment_flip_mirrors():
  x = jax.random.normal(jax.random.key(0), (64, 5, 6, 2))
  y = np.asarray(data.augment(jax.random.key(1), x, "flip"))
  xs, mirrored = np.asarray(x), np.asarray(x)[:, :, ::-1, :]
  flipped = [np.array_equal(y[i], mirrored[i]) for i in range(64)]
  same = [np.array_equal(y[i], xs[i]) for i in range(64)]
  assert all(f != s for f, s in zip(flipped, same))     # each example is exactly itself or its mirror image
  assert 10 < sum(flipped) < 54                          # both happen (Binomial(64, 0.5))
  np.testing.assert_array_equal(data.augment(jax.random.key(1), x, "none"), x)


def test_augment_crop():
  x = jax.random.normal(jax.random.key(0), (16, 5, 6, 2)) + 10.0    # no real zeros
  y = np.asarray(data.augment(jax.random.key(2), x, "crop", crop_pad=2))
  assert y.shape == x.shape
  padded = np.pad(np.asarray(x), [(0, 0), (2, 2), (2, 2), (0, 0)])
  offsets = []
  for i in range(16):
    hits = [(a, b) for a in range(5) for b in range(5) if np.array_equal(padded[i, a:a + 5, b:b + 6], y[i])]
    assert len(hits) == 1, i                             # every output is one window of the zero-padded image
    offsets.append(hits[0])
  assert len(set(offsets)) > 3                           # offsets vary per example
  z = data.augment(jax.random.key(3), x, "flip_crop", crop_pad=1)
  assert z.shape == x.shape
  with pytest.raises(DataError, match="unknown augmentation"):
    data.augment(jax.random.key(0), x, "rotate")
