"""Batches as index arrays on the device: a step gathers its batch there (`images[idx]`), so there is no host loop
or host->device copy per step."""
from __future__ import annotations

import jax
import numpy as np

from jcnn.errors import DataError


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> jax.Array:
  """A shuffled epoch as indices [steps, batch_size] (the last partial batch is dropped, as Keras' shuffle does not
  but every compiled step then has one shape)."""
  steps = n // batch_size
  if steps == 0:
    raise DataError(f"batch size {batch_size} is larger than the {n} training images; lower config.train.batch_size")
  return jax.random.permutation(key, n)[:steps * batch_size].reshape(steps, batch_size)


def eval_batches(n: int, batch_size: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """All n examples in order as indices [steps, batch_size] with a mask [steps, batch_size] for the padded tail. The
  batch is rounded up to a multiple of `multiple` (the devices it is split over; the extra rows are masked)."""
  batch_size = -(-min(batch_size, n) // multiple) * multiple
  steps = -(-n // batch_size)
  idx = np.arange(steps * batch_size)
  return np.minimum(idx, n - 1).reshape(steps, -1), (idx < n).reshape(steps, -1)
