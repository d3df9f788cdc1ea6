"""Sweeps: a grid becomes variants; variants that share parameter shapes train in one compiled program.

A sweep is `get_sweep()` next to an experiment's `get_config()` (defaults: `default_sweep`):
  seeds          number of seeds per grid point (seed = config.train.seed + i)
  dropout_rate, init_scale, activation, learning_rate, weight_decay, l2, label_smoothing, mixup_alpha, cutmix_alpha,
  clip_norm, ema_decay
                 tuples of values to try (empty = not swept): the rows of config.SWEEP_AXES. These keep parameter
                 shapes, so they are traced values: every variant of a group is a slice of one leading axis V on
                 parameters, optimizer state, BatchNorm statistics and metrics, and one jitted step trains all V.
  groups         config overrides that change shapes ("model.features=(16, 32, 32)", "model.name='mlp'"): each is a
                 separate compiled group, crossed with the grid.
  max_chunk      at most this many variants per program (0 = automatic, see `memory.chunk_size`).
  strategy       how the V variants run inside the program: auto (per backend) | vmap | map | unroll.
  search, rungs, eta, pbt_*
                 grid (every variant trains every epoch) | halving | pbt (jcnn.sweep.search).

  grid         get_sweep() -> variants (dicts of hyperparameters and a seed)
  memory       how many variants one program may hold
  cpu_chunk    the CPU cap on variants per program, measured once per machine
  search       searches that decide inside the program: successive halving, population-based training
  lift         the train program's per-model functions lifted over the variant axis; train_variants
  results      mean ± std over seeds, ranked; the markdown table

May import: jcnn.train, inspect and everything below them. The sequence that drives a sweep from its config is
jcnn.experiment.run_sweep, above this package.
"""
from jcnn.sweep.grid import AXES, default_sweep, swept_axes, variants_of
from jcnn.sweep.lift import GroupFns, default_strategy, make_group_fns, padded, per_device, program, train_variants
from jcnn.sweep.memory import bytes_per_variant, chunk_size, device_memory_budget, variants_per_program
from jcnn.sweep.results import METRICS, aggregate, markdown_table

__all__ = ["AXES", "default_sweep", "swept_axes", "variants_of", "GroupFns", "default_strategy",
           "make_group_fns", "padded", "per_device", "program", "train_variants", "bytes_per_variant", "chunk_size",
           "device_memory_budget", "variants_per_program", "METRICS", "aggregate", "markdown_table"]
