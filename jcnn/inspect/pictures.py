"""Pictures of small problems: what a model of one or two inputs learnt, drawn over its training data, in the data's
own units (inputs and targets transformed back).

  1 input, regression        the data and the fitted curve
  2 inputs, regression       the predicted surface as a heat map, the data on top
  1 or 2 inputs, classes     the decision regions (P(class 1) for two classes, else the argmax class), the data on top

    pictures.draw([("seed=0", model, variables, ds), ...], "runs/x/fit.png")   # one panel per model

A run draws one panel; a sweep one per variant (jcnn.experiment). Vector data only (CSV tables, toy:NAME).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.data import preprocess
from jcnn.train import tasks

MAX_PANELS = 48
GRID = 200   # points per axis of the drawn function


def drawable(ds) -> bool:
  """A dataset these pictures can show: feature vectors of 1 or 2 values, held in memory."""
  shape = tuple(ds.image_shape)
  return not ds.streamed and len(shape) == 3 and shape[:2] == (1, 1) and shape[2] <= 2


def name_for(ds) -> str:
  """The picture's file name: fit.png (1-input regression), surface.png, or boundary.png."""
  if ds.task == "regress":
    return "fit.png" if ds.image_shape[2] == 1 else "surface.png"
  return "boundary.png"


def data_points(ds) -> tuple[np.ndarray, np.ndarray]:
  """(inputs [N, D], targets [N, T] or labels [N]) of the training split, in the data's own units."""
  x = preprocess.inverse(np.asarray(ds.train_x, np.float32)[:, 0, 0, :], ds.stats)
  y = np.asarray(ds.train_y)
  if ds.task == "regress":
    y = preprocess.inverse(y, ds.target_stats)
  return x, y


def answer(model, variables, ds, x: np.ndarray) -> np.ndarray:
  """The model's answer for inputs [n, D] in the data's units: probabilities [n, K] or values [n, T]."""
  def f(x):
    z = preprocess.apply(x, ds.stats, xp=jnp)[:, None, None, :]     # [n, 1, 1, D] as in training
    return tasks.predictions(ds.task, model.apply(variables, z, train=False), ds.target_stats)
  return np.asarray(jax.jit(f)(jnp.asarray(x, jnp.float32)))


def draw(panels: Sequence[tuple[str, Any, dict, Any]], path: str) -> str:
  """One panel per (title, model, variables, dataset), in rows of up to 6; writes `path` (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = list(panels)[:MAX_PANELS]
  cols = min(len(panels), 6)
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
  pad = lambda lo, hi: (lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
  for ax, (title, model, variables, ds) in zip(axes.flat, panels):
    x, y = data_points(ds)
    dot = 40 if len(x) <= 64 else 6   # a truth table's 4 points, or a cloud
    lo0, hi0 = pad(x[:, 0].min(), x[:, 0].max())
    if x.shape[1] == 1:
      grid = np.linspace(lo0, hi0, GRID, dtype=np.float32)[:, None]          # [G, 1]
      out = answer(model, variables, ds, grid)
      if ds.task == "regress":
        ax.scatter(x[:, 0], y[:, 0], s=dot, alpha=0.5, color="tab:blue", label="data")
        ax.plot(grid[:, 0], out[:, 0], color="tab:red", lw=2, label="model")
      else:
        ax.plot(grid[:, 0], out[:, 1], color="tab:red", lw=2, label="P(class 1)")
        ax.scatter(x[:, 0], y, s=dot, c=y, cmap="coolwarm", edgecolors="k", linewidths=0.3)
    else:
      lo1, hi1 = pad(x[:, 1].min(), x[:, 1].max())
      g0, g1 = np.meshgrid(np.linspace(lo0, hi0, GRID), np.linspace(lo1, hi1, GRID))
      grid = np.stack([g0.ravel(), g1.ravel()], 1).astype(np.float32)       # [G*G, 2]
      out = answer(model, variables, ds, grid)
      if ds.task == "regress":
        field, cmap = out[:, 0], "viridis"
      else:
        field, cmap = (out[:, 1], "coolwarm") if out.shape[1] == 2 else (out.argmax(1), "tab10")
      ax.contourf(g0, g1, field.reshape(g0.shape), levels=20, cmap=cmap, alpha=0.8)
      if ds.task != "regress" and out.shape[1] == 2:
        ax.contour(g0, g1, field.reshape(g0.shape), levels=[0.5], colors="k", linewidths=1)
      colours = y[:, 0] if ds.task == "regress" else y
      ax.scatter(x[:, 0], x[:, 1], s=dot, c=colours, cmap=cmap, edgecolors="k", linewidths=0.3)
    ax.set_title(title, fontsize=8)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
