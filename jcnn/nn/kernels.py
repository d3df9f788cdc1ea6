"""Fixed 3x3 kernels (the image-processing filters a first conv layer often learns something like) and a frozen
convolution that applies them.

Kernels are cross-correlation kernels, as a conv layer applies them (no flip): out[i, j] = sum_{a,b} K[a, b] *
x[i + a, j + b], rows a top to bottom, columns b left to right. Sign conventions follow from that: sobel_x is positive
where the image gets brighter from left to right.

    y = FixedConv(("sobel_x", "sobel_y"))(x)     # x [B, H, W, C] -> [B, H, W, C * 2]; no parameters
"""
from __future__ import annotations

from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

KERNELS: dict[str, np.ndarray] = {
    # Leaves the image unchanged.
    "identity": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32),
    # The mean of the 3x3 neighbourhood: blurs, weights sum to 1 (keeps brightness).
    "box_blur": np.full((3, 3), 1 / 9, np.float32),
    # A 3x3 binomial approximation of a Gaussian (sigma ~ 0.85 px): outer product of [1, 2, 1] / 4 with itself.
    "gaussian_blur": np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16,
    # Identity plus a Laplacian: boosts the centre against its four neighbours; weights sum to 1.
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32),
    # Horizontal gradient (d/dx) smoothed vertically with [1, 2, 1]: responds to vertical edges.
    "sobel_x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32),
    # Vertical gradient (d/dy, y down) smoothed horizontally: responds to horizontal edges.
    "sobel_y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32),
    # Prewitt: bright-below-dark horizontal edges (unsmoothed rows); sums to 0, so flat regions give 0.
    "horizontal_edge": np.array([[-1, -1, -1], [0, 0, 0], [1, 1, 1]], np.float32),
    # Prewitt: dark-left / bright-right vertical edges.
    "vertical_edge": np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], np.float32),
    # A diagonal derivative plus the image: a relief lit from the top left; weights sum to 1.
    "emboss": np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32),
    # Centre-surround (on-centre / off-surround, a discrete Laplacian of Gaussian's cousin): the centre minus the mean
    # of its 8 neighbours, times 8. Zero on flat regions, strong on spots and outlines.
    "surround": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32),
}
NAMES = tuple(KERNELS)


def kernel(name: str) -> np.ndarray:
  """The [3, 3] array of a named kernel."""
  if name not in KERNELS:
    raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(NAMES)}")
  return KERNELS[name]


class FixedConv(nn.Module):
  """Applies fixed kernels to every input channel separately (depthwise): [B, H, W, C] -> [B, H', W', C * K], the K
  responses of channel c at c * K + k. The kernels are constants, not parameters: `init` returns no 'params', so
  training cannot change them and no optimizer state is kept for them.

  kernels: names from KERNELS, or [3, 3] (any [kh, kw]) arrays given as nested tuples.
  padding: 'SAME' (zero padding, output H x W) or 'VALID' (output (H - 2) x (W - 2)).
  """
  kernels: Sequence[Union[str, tuple]] = ("sobel_x",)
  padding: str = "SAME"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ks = np.stack([kernel(k) if isinstance(k, str) else np.asarray(k, np.float32) for k in self.kernels], -1)
    c = x.shape[-1]
    w = jnp.asarray(np.tile(ks[:, :, None, :], (1, 1, 1, c)), x.dtype)   # [kh, kw, 1, C * K], group c: its K kernels
    return lax.conv_general_dilated(x, w, (1, 1), self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=c)
