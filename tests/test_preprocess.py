"""jcnn.data.preprocess: the nine methods against hand-written numpy formulas, their inverses, numpy vs jax.numpy
(also under jit), chunked fitting, log's refusal of values <= 0 and the unknown-method error.

References are independent: each formula is written here in float64 numpy from the training array itself.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.config import PREPROCESS
from jcnn.data.preprocess import apply, fit, inverse
from jcnn.errors import DataError

METHODS = ("scale", "none", "minmax", "mean_norm", "standardize", "center", "log", "arctan", "ratio")


def images(rng, positive=False):
  """Float images [5, 2, 2, 3] with channels on different scales; positive ones for log."""
  x = rng.normal(size=(5, 2, 2, 3)) * np.array([1.0, 4.0, 0.3]) + np.array([0.0, -2.0, 1.0])
  return np.abs(x) + 0.1 if positive else x


def targets(rng, positive=False):
  """A regression target [N, T] with T=2."""
  y = rng.normal(size=(7, 2)) * np.array([2.0, 0.5]) + np.array([3.0, -1.0])
  return np.abs(y) + 0.2 if positive else y


def reference(method, train, x, scale=1.0):
  """The method written by hand: float64 per-channel statistics of train / scale, applied to x / scale."""
  t = train.reshape(-1, train.shape[-1]).astype(np.float64) / scale   # [n, C]
  x = x.astype(np.float64) / scale
  lo, hi, mean = t.min(0), t.max(0), t.mean(0)
  return {"scale": lambda: x, "none": lambda: x, "minmax": lambda: (x - lo) / (hi - lo),
          "mean_norm": lambda: (x - mean) / (hi - lo), "standardize": lambda: (x - mean) / t.std(0),
          "center": lambda: x - mean, "log": lambda: np.log(x), "arctan": lambda: np.arctan(x) * 2 / np.pi,
          "ratio": lambda: x / np.abs(t).max(0)}[method]()


def fit_whole(x, method, **kw):
  return fit([x], method, x.dtype, **kw)


def test_config_lists_every_method():
  assert set(PREPROCESS) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make", [images, targets])
def test_each_method_matches_its_formula(method, make):
  rng = np.random.default_rng(0)
  train, test = make(rng, positive=method == "log"), make(rng, positive=method == "log")
  stats = fit_whole(train, method)
  for x in (train, test):
    out = apply(x, stats)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, reference(method, train, x), rtol=1e-5, atol=1e-6)


def test_ranges_on_the_training_split():
  train = images(np.random.default_rng(1))
  per_channel = lambda out: out.reshape(-1, 3)
  out = per_channel(apply(train, fit_whole(train, "minmax")))
  np.testing.assert_allclose(out.min(0), 0, atol=1e-6)
  np.testing.assert_allclose(out.max(0), 1, rtol=1e-6)
  out = per_channel(apply(train, fit_whole(train, "mean_norm")))
  assert (out >= -1).all() and (out <= 1).all()
  np.testing.assert_allclose(out.max(0) - out.min(0), 1, rtol=1e-6)
  out = per_channel(apply(train, fit_whole(train, "ratio")))
  np.testing.assert_allclose(np.abs(out).max(0), 1, rtol=1e-6)               # the largest magnitude becomes 1
  out = apply(train * 1e3, fit_whole(train, "arctan"))
  assert (np.abs(out) < 1).all()


@pytest.mark.parametrize("method", METHODS)
def test_uint8_is_divided_by_255_first(method):
  rng = np.random.default_rng(2)
  lo = 1 if method == "log" else 0
  train = rng.integers(lo, 256, (5, 2, 2, 3)).astype(np.uint8)
  test = rng.integers(lo, 256, (4, 2, 2, 3)).astype(np.uint8)
  stats = fit_whole(train, method)
  assert stats["scale"] == 255.0
  np.testing.assert_allclose(apply(test, stats), reference(method, train, test, 255.0), rtol=1e-5,
                             atol=1e-6)
  back = inverse(apply(test, stats), stats)          # back in stored units: 0..255
  np.testing.assert_allclose(back, test, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make", [images, targets])
def test_inverse_round_trips(method, make):
  rng = np.random.default_rng(3)
  train, test = make(rng, positive=method == "log"), make(rng, positive=method == "log")
  stats = fit_whole(train, method)
  for x in (train, test):
    back = inverse(apply(x, stats), stats)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_jax_numpy_matches_numpy_and_jits(method):
  rng = np.random.default_rng(4)
  train, test = images(rng, positive=method == "log"), images(rng, positive=method == "log")
  stats = fit_whole(train, method)
  want = apply(test, stats)
  x = jnp.asarray(test, jnp.float32)
  np.testing.assert_allclose(np.asarray(apply(x, stats, xp=jnp)), want, rtol=1e-6, atol=1e-6)
  jitted = jax.jit(lambda v: apply(v, stats, xp=jnp))
  np.testing.assert_allclose(np.asarray(jitted(x)), want, rtol=1e-6, atol=1e-6)
  back = jax.jit(lambda v: inverse(v, stats, xp=jnp))(jnp.asarray(want))
  np.testing.assert_allclose(np.asarray(back), inverse(want, stats), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(back), test, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_fit_over_chunks_equals_fit_over_the_whole_array(method):
  rng = np.random.default_rng(5)
  train = rng.integers(1, 256, (50, 4, 4, 3)).astype(np.uint8)
  whole = fit_whole(train, method)
  chunked = fit((train[i:i + 7] for i in range(0, 50, 7)), method, train.dtype)
  assert chunked.keys() == whole.keys()
  for k in whole:
    np.testing.assert_allclose(chunked[k], whole[k], rtol=1e-6) if k in ("shift", "div") else \
        np.testing.assert_equal(chunked[k], whole[k])


def test_a_batch_maps_the_same_alone_or_in_its_split():
  rng = np.random.default_rng(6)
  train = images(rng)
  for method in METHODS:
    data = np.abs(train) + 0.1 if method == "log" else train
    stats = fit_whole(data, method)
    np.testing.assert_array_equal(apply(data, stats)[1:3], apply(data[1:3], stats))


def test_statistics_are_json_with_the_existing_keys():
  import json  # pylint: disable=g-import-not-at-top
  train = images(np.random.default_rng(7))
  for method in METHODS:
    stats = fit_whole(np.abs(train) + 0.1 if method == "log" else train, method)
    assert json.loads(json.dumps(stats)) == stats
    with_stats = method in ("minmax", "mean_norm", "standardize", "center", "ratio")
    assert set(stats) == {"method", "scale"} | ({"shift", "div"} if with_stats else set())
    if with_stats:
      assert all(type(v) is float for v in stats["shift"] + stats["div"]) and len(stats["div"]) == 3


def test_log_refuses_non_positive_values():
  rng = np.random.default_rng(8)
  train = targets(rng, positive=True)
  train[3, 1] = 0.0
  with pytest.raises(DataError, match=r"config\.data\.target_preprocess=log needs values > 0.*channel 1") as e:
    fit([train[:4], train[4:]], "log", train.dtype, field="config.data.target_preprocess")
  assert "\n" not in str(e.value) and "choose another transform" in str(e.value)
  stats = fit_whole(np.abs(train) + 0.1, "log")
  test = targets(rng, positive=True)
  test[0, 0] = -3.0
  with pytest.raises(DataError, match=r"config\.data\.preprocess=log .* minimum of -3 \(channel 0\)"):
    apply(test, stats)
  with pytest.raises(DataError, match=r"config\.data\.target_preprocess=log"):
    apply(test, stats, field="config.data.target_preprocess")
  u8 = np.ones((2, 2, 2, 3), np.uint8)
  u8[1, 0, 0, 2] = 0
  with pytest.raises(DataError, match=r"minimum of 0 \(channel 2\)"):
    fit_whole(u8, "log")


def test_unknown_method_names_the_allowed_ones():
  x = images(np.random.default_rng(9))
  with pytest.raises(DataError, match=r"unknown preprocessing 'whiten': set config\.data\.target_preprocess to one "
                                      r"of scale, standardize, minmax, mean_norm, center, log, arctan, ratio, none"):
    fit_whole(x, "whiten", field="config.data.target_preprocess")
  with pytest.raises(DataError, match=r"unknown preprocessing 'whiten': set config\.data\.preprocess"):
    apply(x, {"method": "whiten", "scale": 1.0})
