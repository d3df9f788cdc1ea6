"""The grid: `get_sweep()` (defaults in `default_sweep`) -> a list of variants, each a dict of hyperparameter values
and a seed (the rows of jcnn.config.SWEEP_AXES that a sweep varies, seeds varying fastest)."""
from __future__ import annotations

import itertools

import ml_collections

from jcnn import config as config_lib
from jcnn.errors import ConfigError

AXES = tuple(a.name for a in config_lib.SWEEP_AXES)


def default_sweep() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.seeds = 3
  for axis in AXES:
    s[axis] = ()
  s.groups = ()
  s.max_chunk = 0
  s.strategy = "auto"   # auto (per backend and V) | vmap | map | unroll
  s.tolerance = 0.0     # > 0: the table adds the steps until the ranking metric (RMSE / accuracy) reached it
  # Searches that decide inside the program (jcnn.sweep.search): grid | halving | pbt.
  s.search = "grid"
  s.rungs = (1, 3, 9)   # halving: epochs at which the variants still training are ranked on the validation split
  s.eta = 3             # halving: the best 1/eta go on at each rung
  s.pbt_interval = 0    # pbt: steps between decisions (0 = each epoch)
  s.pbt_quantile = 0.25   # pbt: the bottom share copies the top share
  s.pbt_resample = 0.25   # pbt: probability of resampling a hyperparameter from the grid instead of x0.8 / x1.2
  s.pbt_axes = ()       # pbt: the swept axes it explores (() = every swept axis it can)
  return s


def variants_of(config, sweep) -> list[dict]:
  """Every variant of the grid: dicts of hyperparameter values (the config's value where an axis is not swept) and
  the seed, seeds varying fastest. Every value is checked by its config field's schema row."""
  if isinstance(sweep.seeds, bool) or not isinstance(sweep.seeds, int) or sweep.seeds < 1:
    raise ConfigError(f"sweep.seeds={sweep.seeds!r}: must be an integer >= 1")
  swept = swept_axes(sweep)
  if "weight_decay" in swept and config.optim.name != "adamw":
    raise ConfigError("sweep.weight_decay needs config.optim.name='adamw' (or sweep l2, the loss penalty, instead)")
  by_name = {a.name: a for a in config_lib.SWEEP_AXES}
  for name in swept:
    for value in sweep[name]:
      msg = config_lib.check_value(by_name[name].key, value)
      if msg:
        raise ConfigError(f"sweep.{name} value {value!r}: {msg.split(': ', 1)[1]}")
  out = []
  for values in itertools.product(*[tuple(sweep[a]) for a in swept]):
    for s in range(sweep.seeds):
      out.append(config_lib.variant_of(config, **dict(zip(swept, values)), seed=config.train.seed + s))
  return out


def swept_axes(sweep) -> list[str]:
  return [a for a in AXES if tuple(sweep[a])]
