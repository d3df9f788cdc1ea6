"""Optimizers and schedules by name (config.optim). The learning rate (and adamw's weight decay) live in the optimizer
state as arrays (optax.inject_hyperparams), so a sweep can give each variant its own; the schedule is a multiplier
chained after.

May import: jcnn.config, jcnn.errors.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from jcnn.config import OPTIMIZERS, SCHEDULES, with_defaults
from jcnn.errors import ConfigError


def make_optimizer(cfg: Mapping[str, Any], total_steps: int = 1) -> optax.GradientTransformation:
  """config.optim (missing fields take the schema's defaults) -> the optimizer; total_steps sizes the schedule."""
  cfg = with_defaults("optim", cfg)
  name = cfg["name"]
  if name not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer {name!r}: set config.optim.name to one of {', '.join(OPTIMIZERS)}")
  momentum = cfg["momentum"]
  base = {
      "sgd": optax.sgd,
      "momentum": functools.partial(optax.sgd, momentum=momentum),
      "nesterov": functools.partial(optax.sgd, momentum=momentum, nesterov=True),
      # Keras' RMSprop: rho 0.9, epsilon 1e-7 (optax puts eps inside the sqrt; the difference is negligible here).
      "rmsprop": functools.partial(optax.rmsprop, decay=cfg["rho"], eps=1e-7),
      "adam": optax.adam,
      "adamw": optax.adamw,
  }[name]
  kwargs = {"learning_rate": cfg["learning_rate"]}
  if name == "adamw":
    kwargs["weight_decay"] = cfg["weight_decay"]
  tx = optax.inject_hyperparams(base)(**kwargs)
  schedule = cfg["schedule"]
  if schedule not in SCHEDULES:
    raise ConfigError(f"unknown schedule {schedule!r}: set config.optim.schedule to one of {', '.join(SCHEDULES)}")
  if schedule == "constant":
    return tx
  total_steps = max(int(total_steps), 1)
  if schedule == "cosine":
    mult = optax.cosine_decay_schedule(1.0, total_steps)
  elif schedule == "warmup_cosine":
    warmup = max(int(cfg["warmup_fraction"] * total_steps), 1)
    mult = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps)
  else:  # step: multiply by decay_factor at each boundary (fractions of training; He et al.'s 0.5 and 0.75)
    bounds = {int(b * total_steps): cfg["decay_factor"] for b in cfg["boundaries"]}
    mult = optax.piecewise_constant_schedule(1.0, bounds)
  return optax.chain(tx, optax.scale_by_schedule(mult))


def learning_rate_of(opt_state) -> jax.Array:
  """The injected base learning rate inside an optimizer state made by make_optimizer."""
  inner = opt_state[0] if isinstance(opt_state, tuple) and not hasattr(opt_state, "hyperparams") else opt_state
  return inner.hyperparams["learning_rate"]


def set_hyperparam(opt_state, name: str, value):
  """Returns opt_state with an injected hyperparameter (learning_rate, weight_decay) replaced."""
  if hasattr(opt_state, "hyperparams"):
    hp = dict(opt_state.hyperparams)
    hp[name] = jnp.asarray(value, jnp.asarray(hp[name]).dtype)
    return opt_state._replace(hyperparams=hp)
  return (set_hyperparam(opt_state[0], name, value),) + tuple(opt_state[1:])
