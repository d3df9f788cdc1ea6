"""Tables: CSV files of numeric feature columns and one target column (config.data.target), read whole (a table is
small next to images). Examples are feature vectors, stored as [N, 1, 1, D] float32 so that every model that flattens
(the zoo's `mlp`) takes them, and per-channel preprocessing is per-feature.

    data.path=FILE.csv                    one table, split by data.test_fraction (a fixed shuffle, the same per seed)
    data.path=DIR                         DIR/train.csv and DIR/test.csv (optionally DIR/val.csv)

`data.target` names one column, or several comma-separated (a regression target of several values). Classification
targets are integers 0, 1, ... (jcnn.data.dataset.targets checks them for the task).
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np

from jcnn.data.arrays import class_count
from jcnn.errors import DataError


def read_features(path: str) -> tuple[np.ndarray, list[str]]:
  """Every column of a CSV as float32 [N, D], with the header's names (inputs for a trained model's predict)."""
  values, header = _numbers(path)
  return values.astype(np.float32), header


def read_table(path: str, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """-> (features [N, D] float32, target [N] float64 ([N, T] for T comma-separated target columns), feature names).
  A missing column, a non-numeric or empty cell is named by file, row (1 = the header) and column."""
  values, header = _numbers(path, [t.strip() for t in target.split(",")])
  t = [header.index(name) for name in [t.strip() for t in target.split(",")]]
  features = np.delete(values, t, axis=1).astype(np.float32)
  return features, values[:, t[0]] if len(t) == 1 else values[:, t], [h for i, h in enumerate(header) if i not in t]


def _numbers(path: str, wanted: tuple | list = ()) -> tuple[np.ndarray, list[str]]:
  """A CSV's cells as float64 [N, columns] and its header; `wanted` columns must be there."""
  try:
    with open(path, newline="") as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read {path} ({e}); point config.data.path at a CSV file") from None
  if not rows:
    raise DataError(f"{path} is empty: the first row names the columns")
  header = [h.strip() for h in rows[0]]
  for name in wanted:
    if name not in header:
      raise DataError(f"{path} has no column {name!r} (columns: {', '.join(header)}): set config.data.target to the "
                      f"target column's name")
  values = np.empty((len(rows) - 1, len(header)), np.float64)
  for r, row in enumerate(rows[1:], start=2):
    if len(row) != len(header):
      raise DataError(f"{path} row {r} has {len(row)} cells but the header has {len(header)}; fix that row")
    for c, cell in enumerate(row):
      cell = cell.strip()
      if not cell:
        raise DataError(f"{path} row {r}, column {header[c]!r} is empty; fill it or drop the row")
      try:
        v = float(cell)
      except ValueError:
        fix = ("targets are numbers: encode classes as 0, 1, ... (config.train.task=classify), or give real values "
               "to regress" if header[c] in wanted else "encode it as numbers or drop the column")
        raise DataError(f"{path} row {r}, column {header[c]!r} is {cell!r}, not a number; {fix}") from None
      if not math.isfinite(v):
        raise DataError(f"{path} row {r}, column {header[c]!r} is {cell!r}; give a finite number")
      values[r - 2, c] = v
  if len(values) == 0:
    raise DataError(f"{path} has a header but no rows")
  return values, header


def open_table(path: str, target: str, test_fraction: float = 0.2):
  """-> ({'train' | 'test' | 'val': (features [N, 1, 1, D] float32, targets [N] or [N, T] float64)}, num_classes
  (max + 1 of integer targets, else 0), feature names)."""
  if os.path.isdir(path):
    files = {s: os.path.join(path, f"{s}.csv") for s in ("train", "test", "val")}
    for s in ("train", "test"):
      if not os.path.isfile(files[s]):
        raise DataError(f"{path} has no {s}.csv: give DIR/train.csv and DIR/test.csv, or point config.data.path "
                        f"at one CSV file")
    tables = {s: read_table(f, target) for s, f in files.items() if os.path.isfile(f)}
    names = tables["train"][2]
    for s, (_, _, n) in tables.items():
      if n != names:
        raise DataError(f"{files[s]} has columns {n} but {files['train']} has {names}; give every split the same")
    splits = {s: (x, y) for s, (x, y, _) in tables.items()}
  elif os.path.isfile(path):
    x, y, names = read_table(path, target)
    if not 0 < test_fraction < 1:
      raise DataError(f"config.data.test_fraction={test_fraction} must be in (0, 1) to split one table")
    perm = np.random.default_rng(0).permutation(len(x))
    k = int(round(test_fraction * len(x)))
    if k == 0 or k == len(x):
      raise DataError(f"{path} has {len(x)} rows: too few to split by test_fraction={test_fraction}")
    splits = {"train": (x[perm[k:]], y[perm[k:]]), "test": (x[perm[:k]], y[perm[:k]])}
  else:
    raise DataError(f"config.data.path={path!r} is neither a CSV file nor a folder with train.csv and test.csv")
  out = {s: (x[:, None, None, :], y) for s, (x, y) in splits.items()}
  return out, class_count([y for _, y in out.values()]), names
