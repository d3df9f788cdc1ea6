"""Single runs that decide from their epoch rows: early stopping, reduce-on-plateau, the best checkpoint.

Every decision is a pure function of `history` (the epoch rows, which every checkpoint's meta holds), so a resumed run
decides exactly as an uninterrupted one would; the one thing a decision changes, the learning rate, lives in the
checkpointed optimizer state. The rules are Keras' (EarlyStopping, ReduceLROnPlateau with cooldown 0, min_delta
strict): a value improves on the best so far when it is better by more than min_delta; the best so far moves only on
an improvement; `patience` epochs in a row without one trigger.

    stop_epoch(history, config)        the epoch at which early stopping fired, or None
    reduce_now(history, config)        True when the plateau rule fires at the newest row
    reduced(train_state, history, config)   the train state with the learning rate a firing plateau rule asks for
    is_new_best(history, metric)       True when the newest row is the best so far (the best checkpoint saves)
    summary(history, config)           what results.json says: stopped_early_at, best_epoch and its value

The loop (jcnn.train.loop.run) calls these for single runs; config.check_decisions refuses a metric the rows lack.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.config import LOWER_IS_BETTER, with_defaults
from jcnn.parallel import mesh as mesh_lib
from jcnn.train import optim


def lower_is_better(metric: str) -> bool:
  """val_loss, train_rmse, val_mae improve downwards; accuracy and r2 upwards."""
  return metric.rpartition("_")[2] in LOWER_IS_BETTER


def improves(metric: str, value, best, min_delta: float = 0.0) -> bool:
  """Whether `value` is better than `best` by more than min_delta (a change of exactly min_delta is not). A NaN
  value never improves; anything improves on a best of None."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return False
  if best is None:
    return True
  return value < best - min_delta if lower_is_better(metric) else value > best + min_delta


def waits(history: list[dict], metric: str, min_delta: float = 0.0, patience: int | None = None) -> list[int]:
  """For each row, the epochs in a row without an improvement up to and including it (0 on an improvement). With
  `patience`, the count starts again from 0 after reaching it (a plateau rule that fired waits a new window)."""
  out, best, wait = [], None, 0
  for row in history:
    value = row.get(metric)
    if improves(metric, value, best, min_delta):
      best, wait = value, 0
    else:
      wait = wait + 1 if patience is None or wait < patience else 1
    out.append(wait)
  return out


def stop_epoch(history: list[dict], config) -> int | None:
  """The epoch of the first row after which config.stop.metric had not improved for stop.patience epochs; None
  when early stopping is off or has not fired."""
  cfg = with_defaults("stop", config.get("stop"))
  if not cfg["metric"]:
    return None
  for row, wait in zip(history, waits(history, cfg["metric"], cfg["min_delta"])):
    if wait >= cfg["patience"]:
      return row["epoch"]
  return None


def stop_line(history: list[dict], config) -> str:
  """What the loop prints when early stopping ends training."""
  cfg = with_defaults("stop", config.get("stop"))
  return (f"early stopping: {cfg['metric']} has not improved for {cfg['patience']} epochs (after epoch "
          f"{stop_epoch(history, config)})")


def plateau_epochs(history: list[dict], config) -> list[int]:
  """The epochs at which the plateau rule fires: stop.plateau_metric without an improvement for plateau_patience
  epochs, each firing followed by a new window of plateau_patience epochs."""
  cfg = with_defaults("stop", config.get("stop"))
  if not cfg["plateau_metric"]:
    return []
  patience = cfg["plateau_patience"]
  counts = waits(history, cfg["plateau_metric"], cfg["min_delta"], patience)
  return [row["epoch"] for row, wait in zip(history, counts) if wait == patience]


def reduce_now(history: list[dict], config) -> bool:
  """Whether the plateau rule fires at the newest row."""
  return bool(history) and history[-1]["epoch"] in plateau_epochs(history, config)


def next_learning_rate(lr: float, config) -> float:
  """The learning rate after a plateau: lr * plateau_factor, never below min_learning_rate (a rate already at or
  below it stays)."""
  cfg = with_defaults("stop", config.get("stop"))
  floor = cfg["min_learning_rate"]
  return lr if lr <= floor else max(lr * cfg["plateau_factor"], floor)


def reduced(train_state, history: list[dict], config):
  """The train state with its injected learning rate multiplied when the plateau rule fires at the newest row
  (jcnn.train.optim); the same state otherwise."""
  if not reduce_now(history, config):
    return train_state
  old = optim.learning_rate_of(train_state.opt_state)
  lr = float(np.asarray(mesh_lib.host(old)))
  new = next_learning_rate(lr, config)
  if new == lr:   # at the floor already
    return train_state
  cfg = with_defaults("stop", config.get("stop"))
  print(f"epoch {history[-1]['epoch']}: {cfg['plateau_metric']} has not improved for {cfg['plateau_patience']} "
        f"epochs; learning rate {lr:.3g} -> {new:.3g}", flush=True)
  value = jax.device_put(jnp.asarray(new, old.dtype), old.sharding)   # where the old one lived (a mesh: replicated)
  return train_state.replace(opt_state=optim.set_hyperparam(train_state.opt_state, "learning_rate", value))


def best_epoch(history: list[dict], metric: str) -> tuple[int, float] | None:
  """(epoch, value) of the best row by `metric` (the first of equal ones); None when no row has a value."""
  best = None
  for row in history:
    if improves(metric, row.get(metric), None if best is None else best[1]):
      best = (row["epoch"], row[metric])
  return best


def is_new_best(history: list[dict], metric: str) -> bool:
  """Whether the newest row is the best so far by `metric` (strictly better than every row before it)."""
  found = best_epoch(history, metric) if history else None
  return found is not None and found[0] == history[-1]["epoch"]


def summary(history: list[dict], config) -> dict:
  """results.json's share: 'stopped_early_at' (the epoch training ended at, when early stopping ended it before
  train.epochs) and, with checkpoint.best, 'best_epoch' and 'best' ({metric: value})."""
  out = {}
  stopped = stop_epoch(history, config)
  if stopped is not None and stopped < config.train.epochs:
    out["stopped_early_at"] = stopped
  metric = with_defaults("checkpoint", config.get("checkpoint"))["best"]
  found = best_epoch(history, metric) if metric else None
  if found is not None:
    out["best_epoch"], out["best"] = found[0], {metric: found[1]}
  return out
