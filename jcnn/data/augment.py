"""Augmentation on the device, inside the jitted train step. Per-example randomness from one key."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jcnn.config import AUGMENTATIONS
from jcnn.errors import DataError


def augment(key: jax.Array, x: jax.Array, kind: str = "none", crop_pad: int = 4) -> jax.Array:
  """x: [B, H, W, C]. 'flip': random horizontal flips; 'crop': pad by crop_pad (zeros) and take a random HxW crop;
  'flip_crop': both (the standard CIFAR augmentation of He et al. 2016)."""
  if kind == "none":
    return x
  if kind not in AUGMENTATIONS:
    raise DataError(f"unknown augmentation {kind!r}: set config.data.augment to one of {', '.join(AUGMENTATIONS)}")
  k_flip, k_crop = jax.random.split(key)
  b, h, w, _ = x.shape
  if "crop" in kind:
    padded = jnp.pad(x, [(0, 0), (crop_pad, crop_pad), (crop_pad, crop_pad), (0, 0)])
    offs = jax.random.randint(k_crop, (b, 2), 0, 2 * crop_pad + 1)
    x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, im.shape[-1])))(padded, offs)
  if "flip" in kind:
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
  return x
