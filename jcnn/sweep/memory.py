"""How many variants one program may hold: a rule of thumb for a variant's bytes against half the free memory."""
from __future__ import annotations

import ast
import os

import jax
import numpy as np

from jcnn import data as data_lib, models
from jcnn.inspect import summary


def device_memory_budget() -> int:
  """Half of the free memory of the devices a program spreads over (GPU/TPU: memory_stats of this process's first
  device, times the device count, since a sweep's variants split over them; CPU: available RAM, which forced host
  devices share)."""
  dev = jax.local_devices()[0]
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(0.5 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))) * jax.device_count()
  try:
    return int(0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError):
    return 4 << 30


def bytes_per_variant(model, image_shape, batch_size: int, n_params: int) -> int:
  """Rule of thumb: float32 params x 4 (params, grads, two optimizer slots) + every layer's output kept for the
  backward pass x 3 (activation, its gradient, and im2col patches or masks) per example in the batch."""
  rows = summary.layer_rows(model, image_shape, depth=1)
  act = sum(int(np.prod(ast.literal_eval(r["output_shape"]))) for r in rows
            if r["output_shape"].startswith("(") and r["output_shape"].count("(") == 1)
  return 4 * (4 * n_params + 3 * batch_size * act)


def variants_per_program(config, ds: data_lib.Dataset, n_variants: int, max_chunk: int = 0,
                         budget: int | None = None) -> tuple[int, int]:
  """(variants per program, estimated bytes per variant) for config's model on ds."""
  model = models.get(config.model, num_classes=ds.outputs)
  n_params = summary.count_params(jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x), ds.train_x[:1])["params"])
  per = bytes_per_variant(model, ds.image_shape, config.train.batch_size, n_params)
  return chunk_size(n_variants, per, budget if budget is not None else device_memory_budget(), max_chunk), per


def chunk_size(n_variants: int, per_variant: int, budget: int, max_chunk: int = 0) -> int:
  """Variants per program: as many as fit in `budget` bytes, at most max_chunk (if set), at least 1."""
  k = max(1, min(n_variants, budget // max(per_variant, 1)))
  return min(k, max_chunk) if max_chunk else k
