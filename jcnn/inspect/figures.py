"""Figures of what is inside a model: image grids (feature maps, filters, saliency, retrieval) and gradient-flow
curves, as PNG files (matplotlib, Agg backend: no display needed). Imports nothing of jcnn."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def image_grid(images, out_path: str, titles=None, cols: int = 8, cmap: str = "gray", size: float = 1.2,
               suptitle: str | None = None, symmetric: bool = False, dpi: int = 80) -> str:
  """A grid of [N, H, W] or [N, H, W, 3] images, each scaled to its own range (symmetric: a diverging colour map
  centred on 0, for signed kernels and responses). Saves a PNG; returns its path."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  images = np.asarray(images)
  n = len(images)
  cols = min(cols, n)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.4 if suptitle else 0)), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for i, im in enumerate(images):
    ax = axes.ravel()[i]
    if symmetric:
      m = float(np.abs(im).max()) or 1.0
      ax.imshow(im, cmap="RdBu_r", vmin=-m, vmax=m)
    else:
      ax.imshow(im, cmap=cmap if im.ndim == 2 else None)
    if titles is not None:
      ax.set_title(str(titles[i]), fontsize=7)
  if suptitle:
    fig.suptitle(suptitle, fontsize=9)
  fig.tight_layout()
  fig.savefig(out_path, dpi=dpi)
  plt.close(fig)
  return out_path


def plot_gradient_flow(left: dict, right: dict, out_path: str) -> str:
  """Two panels of per-layer gradient norms, log scale: {label: [steps + 1, depth]} each. Solid: at initialisation;
  dashed: after the last step."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, series, title in ((axes[0], left, "activations (dense stack)"), (axes[1], right, "plain vs residual (conv)")):
    for i, (label, norms) in enumerate(series.items()):
      norms = np.asarray(norms)
      layers_ = np.arange(1, norms.shape[1] + 1)
      ax.semilogy(layers_, norms[0], "-o", color=f"C{i}", ms=3, label=f"{label}, init")
      ax.semilogy(layers_, norms[-1], "--", color=f"C{i}", label=f"{label}, step {norms.shape[0] - 1}")
    ax.set_xlabel("layer (1 = next to the input)")
    ax.set_ylabel("|grad of kernel|")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_path, dpi=80)
  plt.close(fig)
  return out_path
