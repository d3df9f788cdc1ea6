"""A program: the per-model functions of a run, bound to its hyperparameters and data, ready for the loop.

    fns = model_fns(config, ds)                  # init / step / evaluate / batches of one model, no variant axis
    program = single_program(config, ds, mesh)   # jitted, with the hyperparameters and data bound

A `Program` is four functions of one model or of a stack of V variants (a leading axis on every leaf): init, step,
evaluate, batches. jcnn.sweep lifts the same `model_fns` over a variant axis into a Program of its own; the loop
(jcnn.train.loop.run) cannot tell them apart.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jcnn import config as config_lib, data as data_lib, models
from jcnn.data import stream
from jcnn.errors import DataError
from jcnn.parallel import mesh as mesh_lib
from jcnn.train import optim, step as step_lib, tasks


class RunState(struct.PyTreeNode):
  """What the loop carries from step to step (and checkpoints). Sweeps: every leaf has a leading axis V."""
  train: step_lib.TrainState
  failed_at: jax.Array   # int32: the step count at which the loss or parameters went non-finite; -1 while healthy
  acc: dict              # train metric sums since the epoch began (jcnn.train.tasks: {'loss_sum', 'correct', ...})
  log_acc: dict          # `acc` at the last train row (a train row reports acc - log_acc)
  search: dict = struct.field(default_factory=dict)
  # ^ a sweep's search state (jcnn.sweep.search), {} otherwise (no leaves): 'alive' [V] bool (successive halving: a
  #   stopped variant takes no step and keeps its last state), 'hp' {axis: [V]} (population-based training: the
  #   hyperparameters the search moves, read by the step in place of the program's)


class ModelFns(NamedTuple):
  """The per-model functions of a run, no variant axis. `h` holds one variant's hyperparameters as arrays
  (config.SWEEP_AXES and `seed`); only the axes named in `swept` are read from it, the rest are the config's."""
  init: Callable      # (h) -> RunState
  step: Callable      # (rs, h, images, labels, idx [B]) -> rs, one optimizer step on images[idx]
  evaluate: Callable  # (train_state, h, x, y, idx [steps, B], mask [steps, B]) -> metric sums
  batches: Callable   # (h, epoch) -> [steps, B] indices: the epoch's shuffled order


class Program(NamedTuple):
  """Functions the loop calls, with the hyperparameters and data bound. `variants` is None for a single run.

  The data seam: `feed(epoch, first)` yields one argument per step of the epoch from step `first` on, for
  `step(rs, item)`; `eval_feed(split)` yields argument tuples for `evaluate`, whose sums the loop adds. In memory, a
  step's item is the epoch's index array (the step gathers its rows on the device) and a split is one tuple; streamed
  (jcnn.data.stream), a step's item is its batch (x, y, idx) read from disk in the same order, and a split comes in
  batches."""
  init: Callable[[], RunState]
  step: Callable[[RunState, Any], RunState]               # (rs, feed item) -> rs
  evaluate: Callable[..., dict]                           # (train_state, x, y, idx, mask) -> sums
  batches: Callable[[int], jax.Array]                     # epoch -> the epoch's order [steps, B] ([V, steps, B])
  variants: Sequence[dict] | None = None
  mesh: Any = None                                        # the jax.sharding.Mesh it runs on (None: default device)
  feed: Callable[[int, int], Iterable] | None = None      # (epoch, first step) -> an item per step
  eval_feed: Callable[[str], Iterable] | None = None      # 'val' | 'test' -> evaluate's arguments, batch by batch
  search: Any = None                                      # a sweep's search (jcnn.sweep.search.Search), or None


def model_fns(config, ds: data_lib.Dataset, swept: Sequence[str] = (), mesh=None) -> ModelFns:
  """The per-model functions for `config` on `ds`. Keys: split(key(seed), 3) = init, data order, dropout; the epoch's
  order is fold_in(k_data, epoch), a step's dropout key fold_in(k_dropout, step), its augmentation key
  fold_in(k_dropout, -1 - step), its mixup / cutmix key fold_in(fold_in(k_dropout, step), step.MIX_FOLD). The state
  keeps a moving average of the parameters when config.train.ema_decay > 0 or it is swept. With a mesh whose `data` axis is > 1, every batch is split over it (the step then
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
    return models.get(config.model, num_classes=ds.outputs,
                      **{a.field: h[a.name] for a in axes if a.section == "model"})

  def keys_for(h):
    return jax.random.split(jax.random.key(h["seed"]), 3)   # k_init, k_data, k_dropout

  order_seed = config.data.order_seed   # >= 0: every variant's epochs come in the same order
  ema = tc.ema_decay > 0 or "ema_decay" in swept   # the state keeps a moving average of the parameters
  task_args = {"task": ds.task, "target": ds.target_stats, "huber_delta": tc.huber_delta}

  def init(h):
    state = step_lib.init_state(model_for(h), tx, keys_for(h)[0], sample, tc.dtype, ema=ema)
    opt_state = state.opt_state
    for a in axes:
      if a.section == "optim":   # injected hyperparameters (optax.inject_hyperparams) of the optimizer state
        opt_state = optim.set_hyperparam(opt_state, a.field, h[a.name])
    zero = tasks.zero(ds.task, ds.outputs)
    return RunState(train=state.replace(opt_state=opt_state), failed_at=jnp.asarray(-1, jnp.int32), acc=zero,
                    log_acc=zero)

  def step(rs, h, images, labels, idx):
    h = {**h, **rs.search.get("hp", {})}   # a population-based search's current hyperparameters
    if "alive" not in rs.search:
      return train(rs, h, images, labels, idx)
    return jax.lax.cond(rs.search["alive"], lambda r: train(r, h, images, labels, idx), lambda r: r, rs)

  def train(rs, h, images, labels, idx):
    k_dropout = keys_for(h)[2]
    loss_args = {a.field: h[a.name] if a in axes else config.train[a.field]
                 for a in config_lib.SWEEP_AXES if a.section == "train"}
    train_step = step_lib.make_train_step(model_for(h), tx, tc.loss, micro_batch=micro_batch, dtype=tc.dtype,
                                           **loss_args, **task_args)
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
    eval_step = step_lib.make_eval_step(model_for(h), tc.loss, micro_batch, tc.dtype, **task_args)
    return step_lib.eval_epoch(lambda s, xb, yb, m: eval_step(s, shard(xb), shard(yb), shard(m)), state, x, y, idx,
                                mask)

  def batches(h, epoch):
    k_data = keys_for(h if order_seed < 0 else {"seed": order_seed})[1]
    return data_lib.epoch_batches(jax.random.fold_in(k_data, epoch), n, tc.batch_size)

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
  program = Program(init=lambda: init(h), step=lambda rs, b: step(rs, h, ds.train_x, ds.train_y, b),
                    evaluate=lambda st, *a: evaluate(st, h, *a), batches=lambda e: batches(h, e), mesh=mesh)
  if ds.streamed:
    program = program._replace(step=lambda rs, item: step(rs, h, *item))
  return with_feeds(program, config, ds)


def _own_rows(mesh, V: int | None, place: Callable):
  """(own, batch) for a streamed program: `own(order)` keeps the columns of each step's rows [steps, B] that this
  process reads, `batch(local)` makes the step's global batch from them. One process reads every row and puts the
  batch as the in-memory run holds its data (replicated; the step splits it over `data`). With several processes, a
  single run's batch is split over the mesh's `data` axis and each process reads only the rows of its own devices
  (a contiguous block of B / processes rows)."""
  if mesh is None or jax.process_count() == 1:
    return (lambda order: order), place
  if V is not None:
    raise DataError("config.data.stream: a sweep over several processes keeps its data in memory; set "
                    "config.data.stream=off")
  sharding = mesh_lib.by_data(mesh)
  blocks = {}

  def block(b):   # this process's rows [lo, hi) of a batch of b rows
    if b not in blocks:
      spans = [i[0].indices(b)[:2] for i in sharding.addressable_devices_indices_map((b,)).values()]
      lo, hi = min(a for a, _ in spans), max(z for _, z in spans)
      if sum(z - a for a, z in set(spans)) != hi - lo:
        raise DataError(f"this process's devices hold rows that are not one block of the batch of {b}; set "
                        f"config.data.stream=off")
      blocks[b] = (lo, hi)
      print(f"streaming: process {jax.process_index()} reads rows {lo}-{hi - 1} of each batch of {b}", flush=True)
    return blocks[b]

  def own(order):          # [steps, B] -> [steps, hi - lo]
    lo, hi = block(order.shape[-1])
    return order[..., lo:hi]

  def batch(local):        # [hi - lo, ...] here -> the global [B, ...], split over `data`
    b = len(local) * jax.process_count()   # every process holds an equal block (data axis divides the batch)
    lo, _ = block(b)
    return jax.make_array_from_callback((b,) + local.shape[1:], sharding,
                                        lambda index: local[index[0].start - lo:index[0].stop - lo]
                                        if index[0].start is not None else local)
  return own, batch


def with_feeds(program: Program, config, ds: data_lib.Dataset, V: int | None = None) -> Program:
  """`program` with its data seam: in memory (indices; the step gathers on the device) or streamed (batches read in
  the same order). A streamed sweep reads [V * B] rows per step (each variant its own order), or [B] once when
  data.order_seed gives every variant the same order."""
  place = (lambda a: jnp.asarray(a)) if program.mesh is None else (
      lambda a: mesh_lib.put(a, mesh_lib.replicated(program.mesh)))
  tc = config.train
  multiple = mesh_lib.axis(program.mesh, "data")
  splits = {s: (getattr(ds, f"{s}_x"), getattr(ds, f"{s}_y")) for s in ("val", "test")
            if getattr(ds, f"{s}_x") is not None}

  if not ds.streamed:
    eval_args = {s: (x, y, *(place(a) for a in data_lib.eval_batches(len(y), tc.eval_batch_size, multiple)))
                 for s, (x, y) in splits.items()}   # fixed-size batch indices, on the device once for the whole run
    return program._replace(feed=lambda epoch, first: itertools.repeat(program.batches(epoch)),
                            eval_feed=lambda s: [eval_args[s]])

  workers = config.data.workers
  shared = V is not None and config.data.order_seed >= 0
  labels = {s: mesh_lib.host(y) for s, (_, y) in splits.items()} | {"train": mesh_lib.host(ds.train_y)}
  B = tc.batch_size
  if V is None:
    idx = place(np.arange(B, dtype=np.int32)[None])                               # [1, B]: the batch itself
  elif shared:
    idx = place(np.broadcast_to(np.arange(B, dtype=np.int32), (V, 1, B)).copy())  # [V, 1, B]: all read one batch
  else:
    idx = place(np.arange(V * B, dtype=np.int32).reshape(V, 1, B))                # [V, 1, B]: variant v's rows
  own, batch = _own_rows(program.mesh, V, place)

  def feed(epoch, first):
    order = np.asarray(mesh_lib.host(program.batches(epoch)))     # [steps, B] or [V, steps, B]: as in memory
    if V is not None:
      order = order[0] if shared else np.moveaxis(order, 1, 0)    # [steps, B] or [steps, V, B]
    for x, y in stream.batches(ds.train_x, labels["train"], own(order[first:]), workers):
      yield batch(x), batch(y), idx

  def eval_feed(s):
    x, y = splits[s]
    bidx, mask = data_lib.eval_batches(len(y), tc.eval_batch_size, multiple)
    one = place(np.arange(bidx.shape[1], dtype=np.int32)[None])
    for (xb, yb), m in zip(stream.batches(x, labels[s], own(bidx), workers), mask):
      yield batch(xb), batch(yb), one, place(m[None])

  return program._replace(feed=feed, eval_feed=eval_feed)
