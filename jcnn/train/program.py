"""A program: the per-model functions of a run, bound to its hyperparameters and data, ready for the loop.

    fns = model_fns(config, ds)                  # init / step / evaluate / batches of one model, no variant axis
    program = single_program(config, ds, mesh)   # jitted, with the hyperparameters and data bound

A `Program` is four functions of one model or of a stack of V variants (a leading axis on every leaf): init, step,
evaluate, batches. jcnn.sweep lifts the same `model_fns` over a variant axis into a Program of its own; the loop
(jcnn.train.loop.run) cannot tell them apart.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from jcnn import config as config_lib, data as data_lib, models
from jcnn.parallel import mesh as mesh_lib
from jcnn.train import optim, step as step_lib


class RunState(struct.PyTreeNode):
  """What the loop carries from step to step (and checkpoints). Sweeps: every leaf has a leading axis V."""
  train: step_lib.TrainState
  failed_at: jax.Array   # int32: the step count at which the loss or parameters went non-finite; -1 while healthy
  acc: dict              # train metric sums since the epoch began ({'loss_sum', 'correct', 'count'})
  log_acc: dict          # `acc` at the last train row (a train row reports acc - log_acc)


class ModelFns(NamedTuple):
  """The per-model functions of a run, no variant axis. `h` holds one variant's hyperparameters as arrays
  (config.SWEEP_AXES and `seed`); only the axes named in `swept` are read from it, the rest are the config's."""
  init: Callable      # (h) -> RunState
  step: Callable      # (rs, h, images, labels, idx [B]) -> rs, one optimizer step on images[idx]
  evaluate: Callable  # (train_state, h, x, y, idx [steps, B], mask [steps, B]) -> metric sums
  batches: Callable   # (h, epoch) -> [steps, B] indices: the epoch's shuffled order


class Program(NamedTuple):
  """Functions the loop calls, with the hyperparameters and data bound. `variants` is None for a single run."""
  init: Callable[[], RunState]
  step: Callable[[RunState, jax.Array], RunState]         # (rs, epoch batches) -> rs
  evaluate: Callable[..., dict]                           # (train_state, x, y, idx, mask) -> sums
  batches: Callable[[int], jax.Array]                     # epoch -> batches
  variants: Sequence[dict] | None = None
  mesh: Any = None                                        # the jax.sharding.Mesh it runs on (None: default device)


def model_fns(config, ds: data_lib.Dataset, swept: Sequence[str] = (), mesh=None) -> ModelFns:
  """The per-model functions for `config` on `ds`. Keys: split(key(seed), 3) = init, data order, dropout; the epoch's
  order is fold_in(k_data, epoch), a step's dropout key fold_in(k_dropout, step), its augmentation key
  fold_in(k_dropout, -1 - step). With a mesh whose `data` axis is > 1, every batch is split over it (the step then
  runs each device's share whole, without micro-batch chunks)."""
  tc = config.train
  split = mesh_lib.axis(mesh, "data") > 1
  shard = (lambda b: jax.lax.with_sharding_constraint(b, mesh_lib.by_data(mesh))) if split else (lambda b: b)
  micro_batch = tc.batch_size if split else tc.micro_batch
  n = len(ds.train_y)
  steps_per_epoch = n // tc.batch_size
  data_lib.epoch_batches(jax.random.key(0), n, tc.batch_size)  # checks batch <= N
  tx = optim.make_optimizer(config.optim, steps_per_epoch * tc.epochs)
  axes = [a for a in config_lib.SWEEP_AXES if a.name in swept]
  sample = ds.train_x[:1]

  def model_for(h):  # swept model fields are traced values; the others keep their static config value
    return models.get(config.model, num_classes=ds.num_classes,
                      **{a.field: h[a.name] for a in axes if a.section == "model"})

  def keys_for(h):
    return jax.random.split(jax.random.key(h["seed"]), 3)   # k_init, k_data, k_dropout

  def init(h):
    state = step_lib.init_state(model_for(h), tx, keys_for(h)[0], sample, tc.dtype)
    opt_state = state.opt_state
    for a in axes:
      if a.section == "optim":   # injected hyperparameters (optax.inject_hyperparams) of the optimizer state
        opt_state = optim.set_hyperparam(opt_state, a.field, h[a.name])
    zero = step_lib.zero_metrics()
    return RunState(train=state.replace(opt_state=opt_state), failed_at=jnp.asarray(-1, jnp.int32), acc=zero,
                    log_acc=zero)

  def step(rs, h, images, labels, idx):
    k_dropout = keys_for(h)[2]
    loss_args = {a.field: h[a.name] if a in axes else config.train[a.field]
                 for a in config_lib.SWEEP_AXES if a.section == "train"}
    train_step = step_lib.make_train_step(model_for(h), tx, tc.loss, micro_batch=micro_batch, dtype=tc.dtype,
                                           **loss_args)
    old = rs.train
    x = data_lib.augment(jax.random.fold_in(k_dropout, -1 - old.step), shard(images[idx]), config.data.augment)
    new, m = train_step(old, x, shard(labels[idx]), k_dropout)
    finite = jnp.isfinite(m["loss_sum"]) & jnp.all(jnp.asarray([jnp.isfinite(p).all()
                                                                 for p in jax.tree.leaves(new.params)]))
    # (A float16 step skipped for overflowing gradients has a finite loss and its old parameters: not divergence.)
    ok = finite & (rs.failed_at < 0)
    # A diverged model keeps its last finite state and stops counting; its step counter still advances, so batch
    # indices (and a sweep's variants) stay in lockstep.
    kept = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old).replace(step=new.step)
    failed_at = jnp.where((rs.failed_at < 0) & ~finite, old.step + 1, rs.failed_at)
    acc = jax.tree.map(lambda s, v: s + jnp.where(ok, v, 0.0), rs.acc, m)
    return rs.replace(train=kept, failed_at=failed_at, acc=acc)

  def evaluate(state, h, x, y, idx, mask):
    eval_step = step_lib.make_eval_step(model_for(h), tc.loss, micro_batch, tc.dtype)
    return step_lib.eval_epoch(lambda s, xb, yb, m: eval_step(s, shard(xb), shard(yb), shard(m)), state, x, y, idx,
                                mask)

  def batches(h, epoch):
    return data_lib.epoch_batches(jax.random.fold_in(keys_for(h)[1], epoch), n, tc.batch_size)

  return ModelFns(init, step, evaluate, batches)


def single_program(config, ds: data_lib.Dataset, mesh=None) -> Program:
  """A program without a variant axis: the model and hyperparameters of `config`. On a mesh, its state is replicated
  and each batch split over the `data` axis."""
  fns = model_fns(config, ds, mesh=mesh)
  h = {k: v[0] for k, v in config_lib.variant_arrays([config_lib.variant_of(config)]).items()}
  out = {} if mesh is None else {"out_shardings": mesh_lib.replicated(mesh)}
  if mesh is not None:
    h = {k: mesh_lib.put(v, mesh_lib.replicated(mesh)) for k, v in h.items()}
  init = jax.jit(fns.init, **out)
  step = jax.jit(lambda rs, h, x, y, b: fns.step(rs, h, x, y, b[rs.train.step % b.shape[0]]), donate_argnums=0,
                 **out)
  evaluate = jax.jit(fns.evaluate, **out)
  batches = jax.jit(fns.batches, **out)
  return Program(init=lambda: init(h), step=lambda rs, b: step(rs, h, ds.train_x, ds.train_y, b),
                 evaluate=lambda st, *a: evaluate(st, h, *a), batches=lambda e: batches(h, e), mesh=mesh)
