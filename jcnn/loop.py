"""The one training loop, for single runs and sweeps.

    program = single_program(config, ds)          # or sweep.program(...): the same per-model functions, lifted
    out = run(program, ds, config, ckpt=checkpoint.Checkpoints(dir), writer=writers.Writer(workdir))

A `Program` is four functions of one model or of a stack of V variants (a leading axis on every leaf): init, step,
evaluate, batches. `run` is the loop over it, top to bottom: restore or init (resume is the default), then per epoch
the steps (jitted, donated, no host sync between logging points), evaluation on val and test, the epoch row for the
writers, the divergence check, and a checkpoint. Checkpoints also every `checkpoint.every_steps` steps and on SIGINT /
SIGTERM, after which the loop stops with `Interrupted`. `train_and_evaluate(config, workdir)` is that loop on a program
without a variant axis; `jcnn.sweep` builds programs with one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jcnn import checkpoint, config as config_lib, data as data_lib, mesh as mesh_lib, models, summary, writers
from jcnn import train as train_lib
from jcnn.errors import ConfigError, Diverged, Interrupted


# Steps queued at most on a CPU mesh of several devices: XLA:CPU's collectives over forced host devices stalled
# (a 40 s rendezvous timeout, then an abort) with a whole epoch queued on 2 busy cores (benchmarks/scaling.py).
IN_FLIGHT = 8
MIN_FREE_BYTES = 64 << 20   # a new run's workdir must have this much room (checkpoints of the zoo's small models fit)


class RunState(struct.PyTreeNode):
  """What the loop carries from step to step (and checkpoints). Sweeps: every leaf has a leading axis V."""
  train: train_lib.TrainState
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
  tx = train_lib.make_optimizer(config.optim, steps_per_epoch * tc.epochs)
  axes = [a for a in config_lib.SWEEP_AXES if a.name in swept]
  sample = ds.train_x[:1]

  def model_for(h):  # swept model fields are traced values; the others keep their static config value
    return models.get(config.model, num_classes=ds.num_classes,
                      **{a.field: h[a.name] for a in axes if a.section == "model"})

  def keys_for(h):
    return jax.random.split(jax.random.key(h["seed"]), 3)   # k_init, k_data, k_dropout

  def init(h):
    state = train_lib.init_state(model_for(h), tx, keys_for(h)[0], sample, tc.dtype)
    opt_state = state.opt_state
    for a in axes:
      if a.section == "optim":   # injected hyperparameters (optax.inject_hyperparams) of the optimizer state
        opt_state = train_lib.set_hyperparam(opt_state, a.field, h[a.name])
    zero = train_lib.zero_metrics()
    return RunState(train=state.replace(opt_state=opt_state), failed_at=jnp.asarray(-1, jnp.int32), acc=zero,
                    log_acc=zero)

  def step(rs, h, images, labels, idx):
    k_dropout = keys_for(h)[2]
    loss_args = {a.field: h[a.name] if a in axes else config.train[a.field]
                 for a in config_lib.SWEEP_AXES if a.section == "train"}
    train_step = train_lib.make_train_step(model_for(h), tx, tc.loss, micro_batch=micro_batch, dtype=tc.dtype,
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
    eval_step = train_lib.make_eval_step(model_for(h), tc.loss, micro_batch, tc.dtype)
    return train_lib.eval_epoch(lambda s, xb, yb, m: eval_step(s, shard(xb), shard(yb), shard(m)), state, x, y, idx,
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


# ----------------------------------------------------------------------------------------------------------------
# The loop.
@contextlib.contextmanager
def stop_signals():
  """SIGINT (Ctrl-C) and SIGTERM ask the loop to checkpoint and stop after the current step; a second Ctrl-C quits
  at once. Yields a dict whose 'signum' is set when asked."""
  asked = {"signum": 0}
  if not _main_thread():
    yield asked
    return

  def handler(signum, _):
    asked["signum"] = signum
    print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (Ctrl-C again to quit at once)",
          flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)

  old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield asked
  finally:
    for s, h in old.items():
      signal.signal(s, h)


def _main_thread() -> bool:
  import threading  # pylint: disable=g-import-not-at-top
  return threading.current_thread() is threading.main_thread()


def _means(sums, V: int | None = None) -> dict:
  """Metric sums (scalars or [V]) -> {'loss', 'accuracy'} as floats or lists over variants (a collective when the
  variants are split across processes)."""
  s = mesh_lib.host(sums)
  count = np.maximum(np.asarray(s["count"]), 1)
  out = {"loss": np.asarray(s["loss_sum"]) / count, "accuracy": np.asarray(s["correct"]) / count}
  if V is not None:   # a sweep's padding variants (see sweep.train_variants) are not reported
    out = {k: v[:V] for k, v in out.items()}
  return {k: v.tolist() for k, v in out.items()}


def run(program: Program, ds: data_lib.Dataset, config, *, ckpt: checkpoint.Checkpoints | None = None,
        writer: writers.Writer | None = None) -> dict:
  """Trains `program` for config.train.epochs from its newest checkpoint (or from init). Returns {'state' (the
  TrainState, stacked for sweeps), 'failed_at', 'history' (epoch rows), 'compile_seconds', 'seconds'}.
  Raises Diverged (single run, loss or parameters non-finite) and Interrupted (SIGINT / SIGTERM, after saving)."""
  tc = config.train
  steps_per_epoch, epochs = len(ds.train_y) // tc.batch_size, tc.epochs
  V = None if program.variants is None else len(program.variants)
  writer = writer or writers.Writer(None)
  on_mesh = (lambda a: jnp.asarray(a)) if program.mesh is None else (
      lambda a: mesh_lib.put(a, mesh_lib.replicated(program.mesh)))
  eval_sets = {split: (x, y, *(on_mesh(a) for a in data_lib.eval_batches(len(y), tc.eval_batch_size,
                                                                         mesh_lib.axis(program.mesh, "data"))))
               for split, (x, y) in {"val": (ds.val_x, ds.val_y), "test": (ds.test_x, ds.test_y)}.items()
               if x is not None}   # fixed-size batch indices, on the device once for the whole run
  several = jax.process_count() > 1
  throttle = program.mesh is not None and program.mesh.devices.size > 1 and program.mesh.devices.flat[0].platform == "cpu"
  t_start = time.perf_counter()

  # ---- Restore or init: resuming is the default.
  where = None if program.mesh is None else (
      mesh_lib.replicated(program.mesh) if V is None else mesh_lib.by_variant(program.mesh))
  rs, meta = checkpoint.restore_or_init(ckpt, program.init, where)
  history = list(meta.get("history", []))
  step = int(np.max(mesh_lib.host(rs.train.step)))
  if meta:
    print(f"resumed from the checkpoint at step {step} (epoch {step // steps_per_epoch} + "
          f"{step % steps_per_epoch} steps)", flush=True)

  data_info = {"num_classes": ds.num_classes, "input_shape": list(ds.image_shape), "input_dtype": str(ds.train_x.dtype),
               "preprocess": ds.stats}   # what inference needs: the model's input and the training split's statistics

  def save():
    if ckpt is not None:
      ckpt.save(step, rs, {"history": history, "seed": tc.seed, "data": data_info, **_variant_table(program, rs)})

  save()   # step 0 of a new run: a run killed before its first epoch ends still resumes

  # ---- Train.
  compile_s = None
  with stop_signals() as stop:
    for epoch in range(step // steps_per_epoch + 1, epochs + 1):
      batches = program.batches(epoch)                 # [steps, B] or [V, steps, B]
      first = step - (epoch - 1) * steps_per_epoch     # > 0 when resuming inside this epoch
      if first == 0:   # zeros where the sums live (on the mesh: the same sharding)
        rs = rs.replace(acc=jax.tree.map(jnp.zeros_like, rs.acc), log_acc=jax.tree.map(jnp.zeros_like, rs.acc))
      progress = writers.Progress(steps_per_epoch, f"epoch {epoch}/{epochs}" + (f" ({V} variants)" if V else ""),
                                  done=first)
      t_epoch = time.perf_counter()
      for i in range(first, steps_per_epoch):
        rs = program.step(rs, batches)
        step += 1
        if throttle and step % IN_FLIGHT == 0:
          jax.block_until_ready(rs.acc)
        if compile_s is None:
          jax.block_until_ready(rs.acc)
          compile_s = time.perf_counter() - t_epoch
          print(f"compiled the train step in {compile_s:.1f}s (first step included)", flush=True)
          progress.restart(i + 1)
        if step % tc.log_every == 0:
          writer.train({"step": step, "epoch": epoch, **_means(jax.tree.map(jnp.subtract, rs.acc, rs.log_acc), V)})
          rs = rs.replace(log_acc=jax.tree.map(jnp.copy, rs.acc))
          _check_diverged(rs, V, ckpt)
        progress.update(i + 1, lambda: {k: float(np.mean(v)) for k, v in _means(   # this process's variants
            jax.tree.map(lambda a: a.sum(), mesh_lib.local(rs.acc))).items()})
        if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
          save()
        # Several processes stop together: they agree at each logging step (one process alone checks every step).
        if stop["signum"] if not several else (step % tc.log_every == 0 and mesh_lib.any_process(stop["signum"])):
          stop["signum"] = stop["signum"] or signal.SIGTERM
          save()
          if ckpt is not None:
            ckpt.wait()
          raise Interrupted(stop["signum"], step, ckpt.directory if ckpt else None)
      progress.close()

      train_m = _means(rs.acc, V)
      row = {"epoch": epoch, "step": step, "train_loss": train_m["loss"], "train_accuracy": train_m["accuracy"]}
      for split, args in eval_sets.items():
        m = _means(program.evaluate(rs.train, *args), V)
        row[f"{split}_loss"], row[f"{split}_accuracy"] = m["loss"], m["accuracy"]
      if V is not None:
        row["failed_at"] = mesh_lib.host(rs.failed_at)[:V].tolist()
      row["epoch_seconds"] = time.perf_counter() - t_epoch
      _check_diverged(rs, V, ckpt)
      history.append(row)
      writer.epoch(row, epochs)
      save()

  if not history:  # epochs = 0: evaluate the initial model
    m = _means(program.evaluate(rs.train, *eval_sets["test"]))
    history.append({"epoch": 0, "step": 0, "test_loss": m["loss"], "test_accuracy": m["accuracy"]})
  if ckpt is not None:
    ckpt.wait()
  return {"state": rs.train, "failed_at": mesh_lib.host(rs.failed_at), "history": history,
          "compile_seconds": compile_s, "seconds": time.perf_counter() - t_start}


def _check_diverged(rs: RunState, V, ckpt):
  """One policy: a sweep's diverged variant is masked (it keeps its last finite state); a single run stops."""
  if V is not None:
    return
  failed_at = int(mesh_lib.host(rs.failed_at))
  if failed_at >= 0:
    if ckpt is not None:
      ckpt.wait()
    kept = ckpt.latest_step() if ckpt is not None else None
    where = f"; its last good checkpoint (step {kept}) is kept in {ckpt.directory}" if kept is not None else ""
    raise Diverged(f"training diverged: the loss or parameters became NaN/Inf at step {failed_at}{where}; lower "
                   f"config.optim.learning_rate (or add a schedule) and pass a new --workdir")


def _variant_table(program: Program, rs: RunState) -> dict:
  if program.variants is None:
    return {}
  failed_at = mesh_lib.host(rs.failed_at).tolist()
  return {"variants": [{"hparams": v, "failed_at": f} for v, f in zip(program.variants, failed_at)]}


# ----------------------------------------------------------------------------------------------------------------
# Workdirs: new, resumed, or refused.
def prepare_workdir(workdir: str, config, finished: str, extra: dict | None = None) -> bool:
  """Checks `workdir` before any data is loaded: True when it holds an unfinished run of the same config (resume),
  False when it is new (created). Refuses a finished run, a different config, a missing checkpoint folder, a path
  that is a file, and a folder that cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir {workdir} is a file, not a folder; pass a folder")
  if os.path.exists(os.path.join(workdir, finished)):
    raise ConfigError(f"{workdir} already holds a finished run ({finished}); pass a new --workdir")
  cfg_path = os.path.join(workdir, "config.json")
  if os.path.exists(cfg_path):
    try:
      with open(cfg_path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(f"{cfg_path} cannot be read ({e}); pass a new --workdir") from None
    sections = {"config": (config, config_lib.RESUMABLE_CHANGES), **{k: (v, ()) for k, v in (extra or {}).items()}}
    differ = [f"{name}.{k}" if name != "config" else k for name, (c, allowed) in sections.items()
              for k in config_lib.diff(saved.get(name, {}), c.to_dict(), allowed)]
    new = {name: c.to_dict() for name, (c, _) in sections.items()}
    if differ:
      path = lambda k: k if k.split(".")[0] in sections else f"config.{k}"
      shown = ", ".join(f"{k}: {_get(saved, path(k))!r} -> {_get(new, path(k))!r}" for k in differ[:4])
      raise ConfigError(f"{workdir} holds a run with another config ({shown}{', ...' if len(differ) > 4 else ''}); "
                        f"rerun with the same config to resume it (raising train.epochs is allowed), or pass a new "
                        f"--workdir")
    ckpts = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpts) or not os.listdir(ckpts):
      raise ConfigError(f"{workdir} holds a run (config.json) but no checkpoint to resume from ({ckpts} is missing "
                        f"or empty); pass a new --workdir")
    return True
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):   # nothing is created yet: a run that cannot start leaves no folder behind
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"cannot write to --workdir {workdir} ({existing} is not a writable folder); pass a folder you "
                      f"can write")
  free = shutil.disk_usage(existing).free
  if free < MIN_FREE_BYTES:
    raise ConfigError(f"--workdir {workdir}: only {free / 2**20:.0f} MiB free on its disk ({MIN_FREE_BYTES / 2**20:.0f} "
                      f"MiB needed for checkpoints and logs); free some space or pass a folder on another disk")
  return False


def _get(d: dict, dotted: str):
  for k in dotted.split("."):
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def write_config(workdir: str, config, resumed: bool, extra: dict | None = None, mesh=None):
  """config.json: the resolved config, the run record (versions, device, commit, mesh), and each resume's record."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  record = writers.run_record()
  if mesh is not None:
    record["mesh"] = mesh_lib.describe(mesh)
  out = {"config": json.loads(config.to_json_best_effort()),
         **{k: json.loads(v.to_json_best_effort()) for k, v in (extra or {}).items()}, "record": record}
  if resumed:
    with open(path) as f:
      old = json.load(f)
    out["record"] = old["record"]
    out["resumed"] = old.get("resumed", []) + [record]
  writers.write_json(path, out)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config.model on config.data in `workdir`, resuming from its newest checkpoint if it holds an unfinished
  run of the same config. Writes config.json, metrics.jsonl, tb/, checkpoints/, results.json and curves.png (with
  several processes: process 0 writes, all of them checkpoint)."""
  config_lib.check_config(config)
  mesh = mesh_lib.make(config)
  resumed = prepare_workdir(workdir, config, "results.json")
  mesh_lib.sync("workdir checked")   # before process 0 writes config.json, every process has looked at the workdir
  main = mesh_lib.is_main()
  print(mesh_lib.line(mesh), flush=True)
  ds = mesh_lib.load(config.data, mesh, seed=config.train.seed)
  model = models.get(config.model, num_classes=ds.num_classes)
  program = single_program(config, ds, mesh)
  jax.eval_shape(program.init)   # a model that cannot take the data's shape says so (ShapeError) before any file
  if main:
    print(summary.summary(model, ds.image_shape, input_dtype=ds.train_x.dtype))
    write_config(workdir, config, resumed, mesh=mesh)
  ckpt = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.checkpoint.keep)
  writer = writers.Writer(workdir if main else None, tensorboard=config.writers.tensorboard,
                          resume_step=ckpt.latest_step() or 0)
  try:
    out = run(program, ds, config, ckpt=ckpt, writer=writer)
  finally:
    writer.close()
    ckpt.close()   # a save in flight lands (also when the run stopped)
  history = out["history"]
  steps_per_epoch = len(ds.train_y) // config.train.batch_size
  train_s = sum(h.get("epoch_seconds", 0) for h in history)
  results = {"experiment": config.name, "model": config.model.name, "dataset": config.data.name,
             "params": summary.count_params(out["state"].params), "epochs": config.train.epochs,
             "final": history[-1], "compile_seconds": out["compile_seconds"], "wall_seconds": out["seconds"],
             "train_images_per_second": steps_per_epoch * config.train.batch_size * len(
                 [h for h in history if "epoch_seconds" in h]) / max(train_s, 1e-9), "mesh": mesh_lib.describe(mesh)}
  if main:
    writers.write_run(workdir, results)
    print(f"results: {os.path.join(workdir, 'results.json')}")
  return {"results": results, "state": out["state"], "history": history}
