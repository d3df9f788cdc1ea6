"""Searches that decide inside a sweep's program: successive halving and population-based training.

`sweep.search` picks one (jcnn.sweep.grid.default_sweep has the fields):
  grid     every variant trains every epoch (no decisions)
  halving  successive halving (Jamieson & Talwalkar 2016; Li et al. 2018's brackets): at each of `sweep.rungs`
           (epochs) the variants still training are ranked on the validation split and the best 1/`sweep.eta`
           (at least one) go on. A stopped variant takes no more steps (the step is a `lax.cond` on its `alive` flag,
           so a variant loop on CPU skips its work) and keeps its last state; its later rows repeat its last values.
  pbt      population-based training (Jaderberg et al. 2017): every `sweep.pbt_interval` steps (0 = each epoch) the
           variants are ranked on the validation split; each in the bottom `sweep.pbt_quantile` copies the whole
           state of one drawn from the top quantile (parameters, optimizer state with its injected learning rate,
           BatchNorm statistics, loss scale), keeps its own seed (dropout and data order), and explores: each of
           `sweep.pbt_axes` is resampled from the grid's values with probability `sweep.pbt_resample`, else
           multiplied by 0.8 or 1.2, then clipped to the axis's range (jcnn.config.SWEEP_AXES). Swept axes it does
           not explore stay the target's own (the optimizer's injected copies included); a diverged variant is never
           a source; no decision follows the last step. Ranking, copying and perturbing run in one jitted function
           over the variant axis: parameters never visit the host.

The search's state lives in the RunState (`search`: 'alive' or 'hp'), so it is checkpointed with the parameters;
its events (who stopped, who copied whom) go to the checkpoint's metadata and to `lineage.jsonl`. Its random draws
come from fold_in(key(train.seed), step): a resumed search draws what the uninterrupted one drew. Decisions read the
validation split only: the loop evaluates the test split once, after the last epoch (tests/test_search.py).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jcnn import config as config_lib
from jcnn.errors import ConfigError
from jcnn.parallel import mesh as mesh_lib
from jcnn.train import optim, tasks

SEARCHES = ("grid", "halving", "pbt")
PERTURB = (0.8, 1.2)   # explore: a perturbed value is the source's times one of these (Jaderberg et al.)
_AXES = {a.name: a for a in config_lib.SWEEP_AXES}


class Search(NamedTuple):
  """A sweep's decisions, bound to its config and variants. The loop calls `decide` after the step `due` names."""
  kind: str
  start: Callable[[Any, dict], Any]   # (initial RunState [V], hp) -> with the search's state
  due: Callable[[int, bool, int], bool]   # (step, at an epoch's end, epoch) -> a decision after this step
  decide: Callable                    # (rs, step, epoch, val sums [V]) -> (rs, events: list of dicts)
  variants: int                       # the real variants (a mesh's padding copies never rank and never train on)


def check(config, sweep, n_variants: int, swept: Sequence[str], groups: Sequence[str]) -> None:
  """The search's fields against the config and the grid, before any file is written: one line naming the fix."""
  kind = sweep.search
  if kind not in SEARCHES:
    raise ConfigError(f"sweep.search={kind!r}: must be one of {', '.join(SEARCHES)}")
  if kind == "grid":
    return
  if not config_lib.may_have_val(config.data):
    raise ConfigError(f"sweep.search={kind} ranks variants on the validation split: set config.data.val_size (e.g. "
                      f"--config.data.val_size=5000)")
  if n_variants < 2:
    raise ConfigError(f"sweep.search={kind} needs at least 2 variants to choose between; the grid has {n_variants}: "
                      f"sweep more values or seeds")
  if list(groups) not in ([], [""]):
    raise ConfigError(f"sweep.search={kind} decides among the variants of one program; sweep.groups change shapes: "
                      f"run each group as its own sweep")
  if kind == "halving":
    rungs = tuple(sweep.rungs)
    if not rungs or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rungs) or \
        any(a >= b for a, b in zip(rungs, rungs[1:])):
      raise ConfigError(f"sweep.rungs={rungs!r}: must be increasing epochs >= 1, e.g. (1, 3, 9)")
    if rungs[-1] > config.train.epochs:
      raise ConfigError(f"sweep.rungs={rungs!r}: rung {rungs[-1]} is beyond config.train.epochs="
                        f"{config.train.epochs}; lower the rung or raise train.epochs")
    if isinstance(sweep.eta, bool) or not isinstance(sweep.eta, (int, float)) or sweep.eta < 2:
      raise ConfigError(f"sweep.eta={sweep.eta!r}: must be >= 2 (the best 1/eta go on at each rung; 3 is usual)")
    return
  q = sweep.pbt_quantile
  if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 0.5:
    raise ConfigError(f"sweep.pbt_quantile={q!r}: must be in (0, 0.5] (the bottom share copies the top share)")
  p = sweep.pbt_resample
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
    raise ConfigError(f"sweep.pbt_resample={p!r}: must be a probability in [0, 1]")
  if isinstance(sweep.pbt_interval, bool) or not isinstance(sweep.pbt_interval, int) or sweep.pbt_interval < 0:
    raise ConfigError(f"sweep.pbt_interval={sweep.pbt_interval!r}: must be an integer >= 0 steps (0 = each epoch)")
  for name in tuple(sweep.pbt_axes):
    if name not in _AXES:
      raise ConfigError(f"sweep.pbt_axes: {name!r} is not a sweep axis; pick from {', '.join(_AXES)}")
    if name not in swept:
      raise ConfigError(f"sweep.pbt_axes: {name} is not swept; give sweep.{name} a tuple of values (the population "
                        f"starts from them)")
    if _AXES[name].perturb == "none":
      raise ConfigError(f"sweep.pbt_axes: {name} acts only when the parameters are initialised, so changing it later "
                        f"changes nothing: leave it out of sweep.pbt_axes")
    if _AXES[name].perturb == "resample" and p == 0:
      raise ConfigError(f"sweep.pbt_axes: {name} cannot be perturbed (x0.8 / x1.2 means nothing for it), only "
                        f"resampled: set sweep.pbt_resample > 0 or leave {name} out of sweep.pbt_axes")
  if not pbt_axes(sweep, swept):
    raise ConfigError("sweep.search=pbt explores swept hyperparameters, but none can be perturbed: sweep one of "
                      + ", ".join(a for a, ax in _AXES.items() if ax.perturb == "scale"))


def pbt_axes(sweep, swept: Sequence[str]) -> list[str]:
  """The axes PBT explores: sweep.pbt_axes, or every swept axis it can perturb (or resample, when pbt_resample > 0)."""
  if tuple(sweep.pbt_axes):
    return list(sweep.pbt_axes)
  return [a for a in swept if _AXES[a].perturb == "scale" or (_AXES[a].perturb == "resample" and sweep.pbt_resample > 0)]


def make(config, sweep, variants: Sequence[dict], swept: Sequence[str], steps_per_epoch: int, metric: str,
         mesh=None) -> Search | None:
  """The search of `sweep` over `variants` (None for a grid). `metric`: 'accuracy' (higher is better) or 'rmse'."""
  if sweep.search == "grid":
    return None
  n = len(variants)
  place = (lambda a: jnp.asarray(a)) if mesh is None else (lambda a: mesh_lib.put(a, mesh_lib.by_variant(mesh)))
  if sweep.search == "halving":
    return _halving(config, sweep, n, metric, place)
  return _pbt(config, sweep, variants, swept, steps_per_epoch, metric, place)


def score(sums: dict, metric: str) -> jax.Array:
  """Metric sums [V] -> a score [V] where higher is better: accuracy, or -RMSE. Traceable."""
  count = jnp.maximum(sums["count"], 1)
  if metric == "accuracy":
    return sums["correct"] / count
  return -jnp.sqrt(sums["sq_err"] / (count * sums["y_sum"].shape[-1]))


# ----------------------------------------------------------------------------------------------------------------
# Successive halving.
def _halving(config, sweep, n: int, metric: str, place) -> Search:
  rungs = tuple(r for r in sweep.rungs if r < config.train.epochs)   # the last epoch ranks for the results only
  eta = sweep.eta

  def start(rs, hp):
    alive = np.arange(len(hp["seed"])) < n   # a mesh's padding copies never train
    return rs.replace(search={"alive": place(alive)})

  def decide(rs, step, epoch, val_sums):
    alive = np.asarray(mesh_lib.host(rs.search["alive"]))[:n]
    s = np.asarray(mesh_lib.host(score(val_sums, metric)))[:n]
    s = np.where(np.asarray(mesh_lib.host(rs.failed_at))[:n] >= 0, np.nan, s)   # a diverged variant ranks last
    ranked = sorted(np.flatnonzero(alive), key=lambda v: (-s[v] if np.isfinite(s[v]) else np.inf, v))
    keep = ranked[:max(1, int(len(ranked) // eta))]
    new = np.zeros(len(mesh_lib.host(rs.search["alive"])), bool)
    new[keep] = True
    value = lambda v: float(s[v] if metric == "accuracy" else -s[v])
    event = {"event": "halving", "step": step, "epoch": epoch, "rung": rungs.index(epoch) + 1,
             "kept": [int(v) for v in keep], "stopped": [int(v) for v in ranked if v not in keep],
             f"val_{metric}": [[int(v), value(v)] for v in ranked]}   # the ranking: [variant, value], best first
    return rs.replace(search={"alive": place(new)}), [event]

  return Search("halving", start, lambda step, epoch_end, epoch: epoch_end and epoch in rungs, decide, n)


# ----------------------------------------------------------------------------------------------------------------
# Population-based training.
def _pbt(config, sweep, variants, swept, steps_per_epoch: int, metric: str, place) -> Search:
  n = len(variants)
  axes = pbt_axes(sweep, swept)
  interval = sweep.pbt_interval or steps_per_epoch
  q = max(1, int(sweep.pbt_quantile * n))
  grid_values = {a: jnp.asarray(sorted({_AXES[a].encode(v[a]) for v in variants}), _AXES[a].dtype) for a in axes}
  # Swept optimizer hyperparameters PBT does not explore: the copied optimizer state carries the source's injected
  # values, so each target gets its own back (as every other unexplored axis stays its own).
  own = {a: [_AXES[a].encode(v[a]) for v in variants] for a in swept if a not in axes and _AXES[a].section == "optim"}
  resample_p = float(sweep.pbt_resample)
  root = jax.random.fold_in(jax.random.key(config.train.seed), 0x5EA)

  def start(rs, hp):
    return rs.replace(search={"hp": {a: hp[a] for a in axes}})

  @jax.jit
  def exploit_explore(rs, fitness, key):
    V = fitness.shape[0]
    f = jnp.where(jnp.arange(V) < n, fitness, -jnp.inf)        # padding copies rank last and are never drawn
    f = jnp.where(jnp.isnan(f) | (rs.failed_at >= 0), -jnp.inf, f)   # a diverged variant is never a source
    order = jnp.argsort(-f, stable=True)                       # best first; ties: the lower index first
    top, bottom = order[:q], order[n - q:n]                    # [q] each
    k_src, k_how, k_factor, k_value = jax.random.split(key, 4)
    src = jnp.arange(V).at[bottom].set(top[jax.random.randint(k_src, (q,), 0, q)])   # [V]
    moved = jnp.zeros(V, bool).at[bottom].set(True)
    train = jax.tree.map(lambda a: a[src], rs.train)           # the whole state: params, opt state, stats, loss scale
    old = rs.search["hp"]
    new = {}
    for i, a in enumerate(axes):
      ax = _AXES[a]
      resample = jax.random.bernoulli(jax.random.fold_in(k_how, i), resample_p, (V,))
      if ax.perturb == "resample":
        resample = jnp.ones(V, bool)
      drawn = grid_values[a][jax.random.randint(jax.random.fold_in(k_value, i), (V,), 0, len(grid_values[a]))]
      factor = jnp.asarray(PERTURB, jnp.float32)[jax.random.randint(jax.random.fold_in(k_factor, i), (V,), 0, 2)]
      scaled = jnp.clip(old[a][src] * factor, ax.lo, ax.hi).astype(old[a].dtype)
      new[a] = jnp.where(moved, jnp.where(resample, drawn, scaled), old[a])
      if ax.section == "optim":   # the optimizer reads its injected copy
        train = train.replace(opt_state=optim.set_hyperparam(train.opt_state, ax.field, new[a]))
    for a, values in own.items():
      values = jnp.asarray(values + values[-1:] * (V - n), _AXES[a].dtype)   # [V] (padding copies: the last's)
      train = train.replace(opt_state=optim.set_hyperparam(train.opt_state, _AXES[a].field, values))
    train = train.replace(step=rs.train.step)                  # (the same in lockstep; kept explicit)
    rs = rs.replace(train=train, failed_at=rs.failed_at[src], search={"hp": new})
    return rs, src, moved, old, new

  def decide(rs, step, epoch, val_sums):
    rs, src, moved, old, new = exploit_explore(rs, score(val_sums, metric), jax.random.fold_in(root, step))
    src, moved = np.asarray(mesh_lib.host(src)), np.asarray(mesh_lib.host(moved))
    old, new = mesh_lib.host(old), mesh_lib.host(new)
    fitness = np.asarray(mesh_lib.host(score(val_sums, metric)))
    value = lambda v: float(fitness[v] if metric == "accuracy" else -fitness[v])
    events = [{"event": "exploit", "step": step, "epoch": epoch, "target": int(v), "source": int(src[v]),
               f"target_val_{metric}": value(v), f"source_val_{metric}": value(src[v]),
               "before": {a: _plain(old[a][v]) for a in axes}, "after": {a: _plain(new[a][v]) for a in axes}}
              for v in np.flatnonzero(moved[:n])]
    return rs, events

  last = config.train.epochs * steps_per_epoch   # no decision after the last step: the results are the trained state
  return Search("pbt", start, lambda step, epoch_end, epoch: step % interval == 0 and step < last, decide, n)


def _plain(x) -> float | int:
  """A traced value for JSON: an int, or a float32 written as its shortest decimal (0.0012, not 0.00120000005)."""
  x = np.asarray(x)
  return int(x) if np.issubdtype(x.dtype, np.integer) else float(str(x.astype(np.float32)))


def hyperparameters_over_time(variants: Sequence[dict], events: Sequence[dict], axes: Sequence[str]) -> list[dict]:
  """Each variant's schedule from the lineage: [{'variant', 'schedule': [(step, {axis: value}), ...]}]."""
  out = [{"variant": v, "schedule": [(0, {a: variants[v][a] for a in axes})]} for v in range(len(variants))]
  for e in events:
    if e["event"] == "exploit":
      out[e["target"]]["schedule"].append((e["step"], {a: named(a, x, variants) for a, x in e["after"].items()}))
  return out


def named(axis: str, x, variants: Sequence[dict]):
  """A searched value as the grid writes it: an activation index back to its name (other values unchanged)."""
  if isinstance(x, int) and not isinstance(x, bool):
    return next((v[axis] for v in variants if _AXES[axis].encode(v[axis]) == x), x)
  return x


def ancestry(best: int, events: Sequence[dict]) -> list[tuple[int, int]]:
  """The best variant's line back to step 0: [(from step, variant whose weights it carried), ...], oldest first."""
  line, v = [], best
  for e in sorted((e for e in events if e["event"] == "exploit"), key=lambda e: -e["step"]):
    if e["target"] == v:
      line.append((e["step"], v))
      v = e["source"]
  line.append((0, v))
  return line[::-1]


def schedule_along(line: Sequence[tuple[int, int]], schedules: Sequence[dict]) -> list[tuple[int, dict]]:
  """The hyperparameters the best variant's weights trained with, along its ancestry `line`: [(step, {axis: value})]
  at each change, oldest first."""
  value_at = lambda sch, t: [h for s, h in sch if s <= t][-1]
  out = []
  ends = [s for s, _ in line[1:]] + [math.inf]
  for (start, v), end in zip(line, ends):
    sch = schedules[v]["schedule"]
    for at, h in [(start, value_at(sch, start))] + [(s, h) for s, h in sch if start < s < end]:
      if not out or out[-1][1] != h:
        out.append((at, h))
  return out


def plot(schedules: Sequence[dict], line: Sequence[tuple[int, int]], axes: Sequence[str], path: str) -> str:
  """pbt.png: one panel per explored hyperparameter, each variant's schedule (thin) and the best variant's, along
  its ancestry (thick, black)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  last = max([s for sch in schedules for s, _ in sch["schedule"]] + [1])
  fig, panels = plt.subplots(len(axes), 1, figsize=(8, 2.6 * len(axes)), squeeze=False)
  best = schedule_along(line, schedules)
  for ax_name, (panel,) in zip(axes, panels):
    numeric = lambda x: float(x) if not isinstance(x, str) else float(_AXES[ax_name].encode(x))
    for sch in schedules:
      steps = [s for s, _ in sch["schedule"]] + [last]
      values = [numeric(h[ax_name]) for _, h in sch["schedule"]]
      panel.step(steps, values + values[-1:], where="post", lw=0.8, alpha=0.5)
    steps = [s for s, _ in best] + [last]
    values = [numeric(h[ax_name]) for _, h in best]
    panel.step(steps, values + values[-1:], where="post", lw=2.5, color="black",
               label=f"best (variant {line[-1][1]}), along its ancestry " + " → ".join(str(v) for _, v in line))
    if _AXES[ax_name].perturb == "scale" and all(numeric(h[ax_name]) > 0 for sch in schedules
                                                   for _, h in sch["schedule"]):
      panel.set_yscale("log")
    panel.set_ylabel(ax_name)
    panel.legend(fontsize=7, loc="best")
  panels[-1][0].set_xlabel("step")
  fig.suptitle("Population-based training: each variant's hyperparameters over training")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def rung_reached(variant: int, events: Sequence[dict], epochs: int) -> int:
  """Halving: the epoch a variant trained to (the rung where it stopped, or the last epoch)."""
  for e in events:
    if e["event"] == "halving" and variant in e["stopped"]:
      return e["epoch"]
  return epochs


def epochs_trained(events: Sequence[dict], n: int, epochs: int) -> int:
  """Halving: variant-epochs trained by the whole population (the grid trains n * epochs)."""
  return sum(rung_reached(v, events, epochs) for v in range(n))


__all__ = ["SEARCHES", "Search", "check", "make", "pbt_axes", "score", "hyperparameters_over_time", "ancestry",
           "schedule_along", "plot", "rung_reached", "epochs_trained", "named"]
