"""jcnn.data.toys: every problem against references written here (truth tables as literals, the documented formulas
evaluated by the test, least squares, radii), and the standardisation lesson of `scales` run as gradient descent."""
import numpy as np
import pytest

from jcnn.data import toys
from jcnn.errors import DataError

GATE_INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
GATE_OUTPUTS = {"and": [0, 0, 0, 1], "or": [0, 1, 1, 1], "nand": [1, 1, 1, 0], "nor": [1, 0, 0, 0],
                "xor": [0, 1, 1, 0]}
PLANE = ("moons", "circles", "spirals")


def _truth(name):
  if name == "not":
    return np.array([[0], [1]], np.float32), np.array([1, 0])
  return GATE_INPUTS, np.array(GATE_OUTPUTS[name])


def test_names_cover_the_problems():
  assert set(toys.NAMES) == {"and", "or", "nand", "nor", "xor", "not", "line", "sin", "poly", "surface", "scales",
                             "moons", "circles", "spirals", "separable"}
  assert toys.REGRESSION == {"line", "sin", "poly", "surface", "scales"}
  assert toys.is_regression("sin") and not toys.is_regression("xor") and not toys.is_regression("moons")
  assert all(isinstance(d, str) and d and "\n" not in d for d in toys.NAMES.values())


@pytest.mark.parametrize("name", list(toys.NAMES))
def test_shapes_and_dtypes(name):
  splits, k, names = toys.generate(name, 37, 11, 0.1, seed=3)
  assert set(splits) == {"train", "test"}
  for s, (x, y) in splits.items():
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:3] == (1, 1) and x.shape[3] == len(names)
    assert len(y) == len(x) and np.isfinite(x).all()
    if toys.is_regression(name):
      assert k == 0 and y.dtype == np.float32 and y.shape == (len(x), 1) and np.isfinite(y).all()
    else:
      assert k == 2 and y.dtype == np.int32 and y.shape == (len(x),) and set(np.unique(y)) <= {0, 1}
    if name not in toys.GATES:
      assert len(x) == {"train": 37, "test": 11}[s]


@pytest.mark.parametrize("name", ["and", "or", "nand", "nor", "xor", "not"])
def test_gates_are_their_truth_tables(name):
  table, out = _truth(name)
  rows = len(out)
  for noise in (0.0, 0.5):
    splits, k, names = toys.generate(name, 10, 99, noise, seed=1)
    assert k == 2 and len(names) == table.shape[1]
    np.testing.assert_array_equal(splits["test"][0][:, 0, 0], table)               # n_test ignored, never noisy
    np.testing.assert_array_equal(splits["test"][1], out)
    x, y = splits["train"]
    assert len(x) == 10
    np.testing.assert_array_equal(y, out[np.arange(10) % rows])
    if noise == 0:
      np.testing.assert_array_equal(x[:, 0, 0], table[np.arange(10) % rows])
    else:
      assert not np.array_equal(x[:, 0, 0], table[np.arange(10) % rows])
  x, y = toys.generate(name, 1, 1, 0.0)[0]["train"]                                  # at least the whole table
  np.testing.assert_array_equal(x[:, 0, 0], table)
  np.testing.assert_array_equal(y, out)


def test_gate_noisy_copies():
  x, y = toys.generate("xor", 4000, 4, 0.3, seed=5)[0]["train"]
  x = x[:, 0, 0].reshape(1000, 4, 2)                                                 # [copy, row, input]
  np.testing.assert_allclose(x.mean(0), GATE_INPUTS, atol=0.05)
  np.testing.assert_allclose((x - GATE_INPUTS).std(), 0.3, rtol=0.05)
  np.testing.assert_array_equal(y, np.tile(GATE_OUTPUTS["xor"], 1000))


def test_line_least_squares():
  assert (toys.LINE_W, toys.LINE_B) == (2.0, -1.0)
  for s in ("train", "test"):
    x, y = toys.generate("line", 200, 100, 0.0, seed=2)[0][s]
    a = np.c_[x[:, 0, 0, 0].astype(np.float64), np.ones(len(x))]
    (w, b), *_ = np.linalg.lstsq(a, y[:, 0].astype(np.float64), rcond=None)
    assert abs(w - 2.0) < 1e-6 and abs(b + 1.0) < 1e-6
    assert x.min() >= -1 and x.max() <= 1
  x, y = toys.generate("line", 20000, 1, 0.1, seed=2)[0]["train"]
  np.testing.assert_allclose((y[:, 0] - (2.0 * x[:, 0, 0, 0] - 1.0)).std(), 0.1, rtol=0.03)


@pytest.mark.parametrize("name, lo, hi, formula", [
    ("sin", -1.0, 1.0, lambda x: np.sin(np.pi * x[:, 0])),
    ("poly", -1.5, 1.5, lambda x: x[:, 0]**3 - x[:, 0]),
    ("surface", -1.0, 1.0, lambda x: np.sin(np.pi * x[:, 0]) * np.cos(np.pi * x[:, 1])),
])
def test_regression_formulas(name, lo, hi, formula):
  splits, _, _ = toys.generate(name, 500, 100, 0.0, seed=4)
  for x, y in splits.values():
    x = x[:, 0, 0].astype(np.float64)
    assert x.min() >= lo and x.max() <= hi and x.min() < lo + 0.1 and x.max() > hi - 0.1
    np.testing.assert_allclose(y[:, 0], formula(x), atol=1e-6)
  noisy = toys.generate(name, 500, 100, 0.2, seed=4)[0]["train"]
  x, y = noisy[0][:, 0, 0].astype(np.float64), noisy[1][:, 0]
  assert 0.15 < (y - formula(x)).std() < 0.25


def _gd_rmse(x, y, steps, lr=0.01):
  """Plain full-batch gradient descent on the MSE of y ~ x w + b from zeros -> the RMSE after each step."""
  a = np.c_[x, np.ones(len(x))]
  theta, out = np.zeros(a.shape[1]), []
  with np.errstate(over="ignore", invalid="ignore"):
    for _ in range(steps):
      theta = theta - lr * 2 * a.T @ (a @ theta - y) / len(y)
      out.append(np.sqrt(np.mean((a @ theta - y)**2)))
  return np.array(out)


def test_scales_needs_standardisation():
  x, y = toys.generate("scales", 256, 64, 0.05, seed=0)[0]["train"]
  x, y = x[:, 0, 0].astype(np.float64), y[:, 0].astype(np.float64)
  lo, hi = x.min(0), x.max(0)                                                         # the documented ranges
  assert lo[0] >= 0 and hi[0] <= 1 and lo[1] >= 0 and hi[1] <= 100 and lo[2] >= 1000 and hi[2] <= 5000
  assert hi[2] > 4000 and 300 < y.min() and y.max() < 850 and y.mean() > 400             # targets in the hundreds
  clean = toys.generate("scales", 256, 64, 0.0, seed=0)[0]["train"]
  xc = clean[0][:, 0, 0].astype(np.float64)
  np.testing.assert_allclose(clean[1][:, 0], 300 + 40 * xc[:, 0] + 2 * xc[:, 1] + 0.05 * xc[:, 2], rtol=1e-6)
  raw = _gd_rmse(x, y, 100)
  assert not np.isfinite(raw[-1]) or raw[-1] > 1e10                                  # raw features: diverges
  z = (x - x.mean(0)) / x.std(0)
  scaled = _gd_rmse(z, y, 1000)
  noise = 0.05 * toys.SCALES_STD                                                     # 4.1, the floor
  assert np.isfinite(scaled).all() and scaled[-1] < 1.2 * noise and scaled[-1] < scaled[0] / 50


@pytest.mark.parametrize("name", PLANE)
def test_plane_balanced_deterministic(name):
  a, k, names = toys.generate(name, 101, 40, 0.1, seed=7)
  b, _, _ = toys.generate(name, 101, 40, 0.1, seed=7)
  c, _, _ = toys.generate(name, 101, 40, 0.1, seed=8)
  assert k == 2 and names == ("x1", "x2")
  for s in ("train", "test"):
    np.testing.assert_array_equal(a[s][0], b[s][0])
    np.testing.assert_array_equal(a[s][1], b[s][1])
    assert not np.array_equal(a[s][0], c[s][0])
    counts = np.bincount(a[s][1], minlength=2)
    assert abs(counts[0] - counts[1]) <= 1
  assert not np.array_equal(a["train"][0][:40], a["test"][0])
  assert 0 < a["train"][1][:50].sum() < 50                                             # rows are shuffled


def test_circles_radii():
  x, y = toys.generate("circles", 300, 10, 0.0, seed=0)[0]["train"]
  r = np.hypot(x[:, 0, 0, 0], x[:, 0, 0, 1])
  np.testing.assert_allclose(r[y == 0], 1.0, atol=1e-6)
  np.testing.assert_allclose(r[y == 1], 0.5, atol=1e-6)
  x, y = toys.generate("circles", 300, 10, 0.05, seed=0)[0]["train"]
  r = np.hypot(x[:, 0, 0, 0], x[:, 0, 0, 1])
  assert abs(r[y == 0].mean() - 1.0) < 0.02 and abs(r[y == 1].mean() - 0.5) < 0.02


def test_separable_has_its_margin():
  x, y = toys.generate("separable", 500, 10, 0.3, seed=0)[0]["train"]
  s = x[:, 0, 0, 0].astype(np.float64) + x[:, 0, 0, 1]           # x1 + x2, the separating direction
  assert np.all(s[y == 1] >= 0.25 - 1e-6) and np.all(s[y == 0] <= -0.25 + 1e-6)   # noise is not added
  assert np.sum(y == 0) == 250 and np.all(np.abs(x) <= 1.5)


def test_moons_half_circles():
  x, y = toys.generate("moons", 400, 10, 0.0, seed=0)[0]["train"]
  x = x[:, 0, 0].astype(np.float64)
  np.testing.assert_allclose(np.hypot(x[y == 0, 0], x[y == 0, 1]), 1.0, atol=1e-6)       # upper: centre (0, 0)
  assert (x[y == 0, 1] >= -1e-7).all()
  np.testing.assert_allclose(np.hypot(x[y == 1, 0] - 1, x[y == 1, 1] - 0.5), 1.0, atol=1e-6)  # lower: centre (1, 0.5)
  assert (x[y == 1, 1] <= 0.5 + 1e-7).all()


def test_spirals_interleave():
  x, y = toys.generate("spirals", 400, 10, 0.0, seed=0)[0]["train"]
  x = x[:, 0, 0].astype(np.float64)
  r, a = np.hypot(x[:, 0], x[:, 1]), np.arctan2(x[:, 1], x[:, 0])
  assert r.max() <= 1 + 1e-6
  # class 0 at radius r sits at angle 2 pi 1.5 r; class 1 half a turn further.
  turn = 2 * np.pi * 1.5 * r + np.where(y == 0, 0.0, np.pi)
  np.testing.assert_allclose(np.angle(np.exp(1j * (a - turn))), 0.0, atol=1e-4)


def test_unknown_name_and_bad_arguments():
  with pytest.raises(DataError, match=r"unknown toy problem 'xro'.*toy:NAME.*and, or, nand.*spirals") as e:
    toys.generate("xro", 10, 10, 0.0)
  assert "\n" not in str(e.value)
  with pytest.raises(DataError, match="noise"):
    toys.generate("line", 10, 10, -0.1)
  with pytest.raises(DataError, match="n_test"):
    toys.generate("moons", 10, 0, 0.1)
