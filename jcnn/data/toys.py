"""Toys: the course's first problems, generated in memory (a neuron, logic gates, regression, 2-D classification),
before any convolution. Examples are feature vectors stored as [N, 1, 1, D] float32, like jcnn.data.tables, so every
model that flattens (the zoo's `mlp`) takes them.

    generate(name, n_train, n_test, noise, seed) -> ({"train": (x, y), "test": (x, y)}, num_classes, feature names)

Classification: y int32 [N] in 0..K-1, num_classes = K. Regression (REGRESSION): y float32 [N, 1], num_classes = 0.
Deterministic given the seed: train draws from default_rng([seed, 0]), test from default_rng([seed, 1]) (independent
draws of the same distribution). `noise` is the std of Gaussian noise, in the problem's own units unless said.

Logic gates (inputs a, b in {0, 1}; class = the gate's output):
  and, or, nand, nor, xor   test = the truth table, rows (a, b) = 00, 01, 10, 11 (n_test is ignored); train = the
                            table repeated, row i = table[i % 4], max(n_train, 4) rows, plus N(0, noise^2) on the
                            inputs (the noisy copies; noise 0: the exact table). The test split is never noisy.
  not                       the same with one input a: table rows 0, 1, class = 1 - a.
Regression (x ~ U(lo, hi) per feature, y = f(x) + N(0, noise^2)):
  line      y = LINE_W * x + LINE_B = 2 x - 1                               x ~ U(-1, 1)
  sin       y = sin(pi x)                                                   x ~ U(-1, 1)
  poly      y = x^3 - x                                                     x ~ U(-1.5, 1.5)
  surface   y = sin(pi x1) cos(pi x2)                                       (x1, x2) ~ U(-1, 1)^2
  scales    y = SCALES_B + SCALES_W . x = 300 + 40 x1 + 2 x2 + 0.05 x3      x1 ~ U(0, 1) quality, x2 ~ U(0, 100)
            area, x3 ~ U(1000, 5000) distance: features of very different scales and targets in the hundreds (350 to
            790). Its noise is relative: std noise * SCALES_STD, the noise-free target's std. The standardisation
            lesson: plain gradient descent on the MSE at lr 0.01 diverges on the raw features and converges on
            z-scored ones (tests/test_toys.py checks both).
Classification in the plane (2 classes, sizes n // 2 and n - n // 2, rows shuffled; N(0, noise^2) on each coordinate):
  moons     class 0: (cos t, sin t), class 1: (1 - cos t, 1/2 - sin t), t ~ U(0, pi): two interleaving half circles
  circles   class 0: radius 1 (the outer circle), class 1: radius CIRCLES_FACTOR = 0.5, angle ~ U(0, 2 pi)
  spirals   u ~ U(0, 1), angle = 2 pi SPIRALS_TURNS u (1.5 turns), class 0: u (cos angle, sin angle), class 1: the
            same turned by half a turn, -u (cos angle, sin angle): the classic two spirals, inside the unit disc
  separable class 1 where x1 + x2 > 0: s = x1 + x2 ~ U(SEPARABLE_MARGIN, 2) (class 0: its negative) and
            x1 - x2 ~ U(-1, 1): linearly separable with a margin of SEPARABLE_MARGIN (no noise is added: it would
            break that), for logistic regression

May import: numpy, jcnn.errors.
"""
from __future__ import annotations

import math

import numpy as np

from jcnn.errors import DataError

LINE_W, LINE_B = 2.0, -1.0
SCALES_W = (40.0, 2.0, 0.05)
SCALES_B = 300.0
SCALES_RANGES = ((0.0, 1.0), (0.0, 100.0), (1000.0, 5000.0))
# The std of SCALES_B + SCALES_W . x over the uniform features: sqrt(sum_i (w_i (hi_i - lo_i))^2 / 12) = 82.46.
SCALES_STD = math.sqrt(sum((w * (hi - lo))**2 / 12 for w, (lo, hi) in zip(SCALES_W, SCALES_RANGES)))
CIRCLES_FACTOR = 0.5
SPIRALS_TURNS = 1.5
SEPARABLE_MARGIN = 0.25

# Truth tables: rows (a, b) in the order 00, 01, 10, 11 (`not`: 0, 1) -> the output.
GATES = {
    "and": (0, 0, 0, 1),
    "or": (0, 1, 1, 1),
    "nand": (1, 1, 1, 0),
    "nor": (1, 0, 0, 0),
    "xor": (0, 1, 1, 0),
    "not": (1, 0),
}

NAMES = {
    "and": "logic gate a AND b: the truth table (test), noisy copies of it (train)",
    "or": "logic gate a OR b",
    "nand": "logic gate NOT (a AND b)",
    "nor": "logic gate NOT (a OR b)",
    "xor": "logic gate a XOR b: not linearly separable, needs a hidden layer",
    "not": "logic gate NOT a (one input)",
    "line": "regression y = 2 x - 1 + noise, x ~ U(-1, 1)",
    "sin": "regression y = sin(pi x) + noise, x ~ U(-1, 1)",
    "poly": "regression y = x^3 - x + noise, x ~ U(-1.5, 1.5)",
    "surface": "regression y = sin(pi x1) cos(pi x2) + noise, x ~ U(-1, 1)^2",
    "scales": "regression y = 300 + 40 x1 + 2 x2 + 0.05 x3 on features of scales 1, 100, 5000: standardise them",
    "moons": "2 classes: two interleaving half circles + noise",
    "circles": "2 classes: two concentric circles, radii 1 and 0.5, + noise",
    "spirals": "2 classes: two interleaved spirals + noise",
    "separable": "2 classes on either side of x1 + x2 = 0 with a margin: logistic regression's problem",
}
REGRESSION = frozenset({"line", "sin", "poly", "surface", "scales"})


def is_regression(name: str) -> bool:
  return name in REGRESSION


def _check(name: str, n_train: int, n_test: int, noise: float):
  if name not in NAMES:
    raise DataError(f"unknown toy problem {name!r}: set config.data.name to toy:NAME with NAME one of "
                    f"{', '.join(NAMES)}")
  for what, n in (("n_train", n_train), ("n_test", n_test)):
    if int(n) != n or n < 1:
      raise DataError(f"toy problem {name!r}: {what}={n} must be a positive integer")
  if not (math.isfinite(noise) and noise >= 0):
    raise DataError(f"toy problem {name!r}: noise={noise} must be a finite number >= 0 (the std of Gaussian noise)")


def _gate(name: str, n_train: int, noise: float, rng: np.random.Generator):
  out = np.array(GATES[name], np.int32)                                            # [R]
  d = 1 if len(out) == 2 else 2
  table = np.array([[(r >> (d - 1 - j)) & 1 for j in range(d)] for r in range(len(out))], np.float64)  # [R, D]
  idx = np.arange(max(n_train, len(out))) % len(out)                               # [N]
  x = table[idx]                                                                   # [N, D]
  if noise > 0:
    x = x + rng.normal(0.0, noise, x.shape)
  return (x, out[idx]), (table, out), (("a",) if d == 1 else ("a", "b"))


def _uniform(rng, n: int, ranges) -> np.ndarray:
  """[n, D] float32 (the features as stored; targets are computed from these very values)."""
  lo, hi = np.array(ranges, np.float64).T
  return rng.uniform(lo, hi, (n, len(lo))).astype(np.float32)


def _regression(name: str, n: int, noise: float, rng: np.random.Generator):
  """-> (x [n, D] float32, y [n, 1] float32)."""
  if name == "scales":
    x = _uniform(rng, n, SCALES_RANGES)                                            # [n, 3]
    y = SCALES_B + x.astype(np.float64) @ np.array(SCALES_W)                       # [n]
    noise = noise * SCALES_STD
  elif name == "surface":
    x = _uniform(rng, n, ((-1, 1), (-1, 1)))                                       # [n, 2]
    x64 = x.astype(np.float64)
    y = np.sin(np.pi * x64[:, 0]) * np.cos(np.pi * x64[:, 1])
  else:
    x = _uniform(rng, n, ((-1.5, 1.5),) if name == "poly" else ((-1, 1),))         # [n, 1]
    t = x[:, 0].astype(np.float64)
    y = {"line": lambda: LINE_W * t + LINE_B, "sin": lambda: np.sin(np.pi * t), "poly": lambda: t**3 - t}[name]()
  if noise > 0:
    y = y + rng.normal(0.0, noise, y.shape)
  return x, y[:, None].astype(np.float32)


def _plane(name: str, n: int, noise: float, rng: np.random.Generator):
  """-> (x [n, 2] float32, y [n] int32): n // 2 points of class 0, the rest class 1, in a random order."""
  y = np.zeros(n, np.int32)
  y[n // 2:] = 1
  y = rng.permutation(y)                                                           # [n]
  if name == "moons":
    t = rng.uniform(0.0, np.pi, n)
    c, s = np.cos(t), np.sin(t)
    x = np.where(y[:, None] == 0, np.stack([c, s], 1), np.stack([1 - c, 0.5 - s], 1))   # [n, 2]
  elif name == "circles":
    a = rng.uniform(0.0, 2 * np.pi, n)
    x = np.where(y == 0, 1.0, CIRCLES_FACTOR)[:, None] * np.stack([np.cos(a), np.sin(a)], 1)
  elif name == "separable":
    side = np.where(y == 0, -1.0, 1.0) * rng.uniform(SEPARABLE_MARGIN, 2.0, n)   # x1 + x2
    along = rng.uniform(-1.0, 1.0, n)                                               # x1 - x2
    return (np.stack([side + along, side - along], 1) / 2).astype(np.float32), y
  else:
    u = rng.uniform(0.0, 1.0, n)
    a = 2 * np.pi * SPIRALS_TURNS * u
    x = np.where(y == 0, 1.0, -1.0)[:, None] * u[:, None] * np.stack([np.cos(a), np.sin(a)], 1)
  if noise > 0:
    x = x + rng.normal(0.0, noise, x.shape)
  return x.astype(np.float32), y


def generate(name: str, n_train: int, n_test: int, noise: float, seed: int = 0):
  """-> ({'train': (x [N, 1, 1, D] float32, y), 'test': (x, y)}, num_classes, feature names).

  y is int32 [N] for classification (num_classes = K), float32 [N, 1] for regression (num_classes = 0). See the
  module docstring for each problem."""
  _check(name, n_train, n_test, noise)
  rngs = {"train": np.random.default_rng([seed, 0]), "test": np.random.default_rng([seed, 1])}
  if name in GATES:
    train, test, names = _gate(name, n_train, noise, rngs["train"])
    splits, num_classes = {"train": train, "test": test}, 2
  elif name in REGRESSION:
    splits = {s: _regression(name, n, noise, rngs[s]) for s, n in (("train", n_train), ("test", n_test))}
    num_classes = 0
    names = {"scales": ("quality", "area", "distance"), "surface": ("x1", "x2")}.get(name, ("x",))
  else:
    splits = {s: _plane(name, n, noise, rngs[s]) for s, n in (("train", n_train), ("test", n_test))}
    num_classes, names = 2, ("x1", "x2")
  out = {s: (np.asarray(x, np.float32)[:, None, None, :], y) for s, (x, y) in splits.items()}
  return out, num_classes, names
