"""The one training loop, for single runs and sweeps.

    program = program.single_program(config, ds)   # or sweep.program(...): the same per-model functions, lifted
    out = run(program, ds, config, ckpt=checkpoint.Checkpoints(dir), writer=writers.Writer(workdir))

`run` is the loop over a Program (jcnn.train.program), top to bottom: restore or init (resume is the default), then
per epoch the steps (jitted, donated, no host sync between logging points), evaluation on val and test, the epoch row
for the writers, the divergence check, and a checkpoint. Checkpoints also every `checkpoint.every_steps` steps and on
SIGINT / SIGTERM, after which the loop stops with `Interrupted`. A single run also decides at each epoch's end
(jcnn.train.decide, from the epoch rows alone): reduce the learning rate on a plateau, save the best checkpoint, stop
early.
"""
from __future__ import annotations

import contextlib
import signal
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jcnn import data as data_lib
from jcnn.errors import Diverged, Interrupted
from jcnn.parallel import mesh as mesh_lib
from jcnn.train import checkpoint, decide, tasks, writers
from jcnn.train.program import Program, RunState

# Steps queued at most on a CPU mesh of several devices: XLA:CPU's collectives over forced host devices stalled
# (a 40 s rendezvous timeout, then an abort) with a whole epoch queued on 2 busy cores (benchmarks/scaling.py).
IN_FLIGHT = 8


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
  """Metric sums (scalars or [V]) -> the task's metrics ({'loss', 'accuracy'} or {'loss', 'rmse', 'mae', 'r2'}) as
  floats or lists over variants (a collective when the variants are split across processes)."""
  out = tasks.means(mesh_lib.host(sums))
  if V is not None:   # a sweep's padding variants (see sweep.train_variants) are not reported
    out = {k: v[:V] for k, v in out.items()}
  return {k: v.tolist() for k, v in out.items()}


def run(program: Program, ds: data_lib.Dataset, config, *, ckpt: checkpoint.Checkpoints | None = None,
        writer: writers.Writer | None = None, best: checkpoint.Checkpoints | None = None) -> dict:
  """Trains `program` for config.train.epochs from its newest checkpoint (or from init). Returns {'state' (the
  TrainState, stacked for sweeps), 'failed_at', 'history' (epoch rows), 'compile_seconds', 'seconds', 'search' (a
  sweep's search state, on the host) and 'events' (its decisions)}.
  Raises Diverged (single run, loss or parameters non-finite) and Interrupted (SIGINT / SIGTERM, after saving).
  `best`: where a single run keeps its best epoch by config.checkpoint.best."""
  tc = config.train
  steps_per_epoch, epochs = len(ds.train_y) // tc.batch_size, tc.epochs
  V = None if program.variants is None else len(program.variants)
  writer = writer or writers.Writer(None)
  several = jax.process_count() > 1
  throttle = program.mesh is not None and program.mesh.devices.size > 1 and program.mesh.devices.flat[0].platform == "cpu"
  t_start = time.perf_counter()

  # ---- Restore or init: resuming is the default.
  where = None if program.mesh is None else (
      mesh_lib.replicated(program.mesh) if V is None else mesh_lib.by_variant(program.mesh))
  rs, meta = checkpoint.restore_or_init(ckpt, program.init, where)
  history = list(meta.get("history", []))
  search, events = program.search, list(meta.get("search_events", []))   # a sweep's search and what it decided
  step = int(np.max(mesh_lib.host(rs.train.step)))
  if meta:
    print(f"resumed from the checkpoint at step {step} (epoch {step // steps_per_epoch} + "
          f"{step % steps_per_epoch} steps)", flush=True)
  writer.start(step)   # metrics.jsonl and TensorBoard keep the rows up to the restored step

  data_info = {"num_classes": ds.num_classes, "input_shape": list(ds.image_shape), "input_dtype": str(ds.train_x.dtype),
               "preprocess": ds.stats, "classes": list(ds.classes), "task": ds.task, "outputs": ds.outputs,
               "target": ds.target_stats, "features": list(ds.features)}
  # ^ what inference needs: the model's input, the training split's statistics, the class names, what the outputs
  #   mean (the task, and for regression the target statistics that turn them back into the target's units)

  def save(to=ckpt):
    if to is not None:
      to.save(step, rs, {"history": history, "seed": tc.seed, "data": data_info, **_variant_table(program, rs),
                         **({"search_events": events} if search is not None else {})})

  def search_decides(val_sums):   # the search's decision after this step: it changes rs; its events are kept
    nonlocal rs
    rs, new = search.decide(rs, step, epoch, val_sums)
    events.extend(new)
    writer.events(new)

  save()   # step 0 of a new run: a run killed before its first epoch ends still resumes

  # ---- Train.
  compile_s = None
  with stop_signals() as stop:
    for epoch in range(step // steps_per_epoch + 1, epochs + 1):
      if V is None and decide.stop_epoch(history, config) is not None:   # also a resumed run that had stopped
        print(decide.stop_line(history, config), flush=True)
        break
      first = step - (epoch - 1) * steps_per_epoch     # > 0 when resuming inside this epoch
      feed = iter(program.feed(epoch, first))          # the epoch's order from step `first`: indices or batches
      if first == 0:   # zeros where the sums live (on the mesh: the same sharding)
        rs = rs.replace(acc=jax.tree.map(jnp.zeros_like, rs.acc), log_acc=jax.tree.map(jnp.zeros_like, rs.acc))
      progress = writers.Progress(steps_per_epoch, f"epoch {epoch}/{epochs}" + (f" ({V} variants)" if V else ""),
                                  done=first)
      t_epoch = time.perf_counter()
      for i in range(first, steps_per_epoch):
        rs = program.step(rs, next(feed))
        step += 1
        last = i == steps_per_epoch - 1    # the epoch's end: evaluation, decisions and the stop check come after it
        if search is not None and not last and search.due(step, False, epoch):
          search_decides(evaluate(program, rs.train, "val", _alive(rs)))
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
            jax.tree.map(lambda a: a if V is None else a.sum(0), mesh_lib.local(rs.acc))).items()})
        if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
          save()
        # Several processes stop together: they agree at each logging step (one process alone checks every step).
        if not last and _stopping(stop, several, step, tc.log_every):
          _interrupt(stop, save, ckpt, step)
      progress.close()

      # ---- The epoch's row: train metrics, then evaluation. A search reads the validation split only; it sees the
      # test split once, after the last epoch. Variants a search stopped skip both and repeat their last values.
      alive = _alive(rs)
      train_m = _means(rs.acc, V)
      row = {"epoch": epoch, "step": step, **{f"train_{k}": v for k, v in train_m.items()}}
      sums = {}
      for split in ("val", "test"):
        if getattr(ds, f"{split}_x") is None or (split == "test" and search is not None and epoch < epochs):
          continue
        sums[split] = evaluate(program, rs.train, split, alive if split == "val" else None)
        row.update({f"{split}_{k}": v for k, v in _means(sums[split], V).items()})
      if alive is not None:
        row = _carried(row, mesh_lib.host(alive)[:V], history[-1] if history else None)
      if V is not None:
        row["failed_at"] = mesh_lib.host(rs.failed_at)[:V].tolist()
      row["epoch_seconds"] = time.perf_counter() - t_epoch
      _check_diverged(rs, V, ckpt)
      if search is not None and search.due(step, True, epoch):
        search_decides(sums["val"])
      history.append(row)
      writer.epoch(row, epochs)
      if V is None:   # decisions from the epoch rows: the best checkpoint (on disk before the newest), the plateau
        if best is not None and decide.is_new_best(history, config.checkpoint.best):
          save(best)
          best.wait()
        rs = rs.replace(train=decide.reduced(rs.train, history, config))
      save()
      if _stopping(stop, several, step, tc.log_every, epoch_end=True):
        _interrupt(stop, save, ckpt, step)

  if not history:  # epochs = 0: evaluate the initial model
    m = _means(evaluate(program, rs.train, "test"))
    history.append({"epoch": 0, "step": 0, **{f"test_{k}": v for k, v in m.items()}})
  if ckpt is not None:
    ckpt.wait()
  return {"state": rs.train, "failed_at": mesh_lib.host(rs.failed_at), "history": history,
          "compile_seconds": compile_s, "seconds": time.perf_counter() - t_start,
          "search": mesh_lib.host(rs.search), "events": events}


def evaluate(program: Program, state, split: str, only=None) -> dict:
  """Metric sums over one split: evaluate's sums over each item of the program's eval feed, added in order. `only`
  ([V] bool, sweeps): the variants to evaluate (the others' sums are zero where the strategy can skip them)."""
  sums = None
  for args in program.eval_feed(split):
    part = program.evaluate(state, *args) if only is None else program.evaluate(state, *args, only=only)
    sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
  return sums


def _alive(rs: RunState):
  """The variants still training ([V] bool, on the device), or None when no search stops any."""
  return rs.search.get("alive")


def _carried(row: dict, alive, previous: dict | None) -> dict:
  """A search's epoch row: the variants it stopped did not train or evaluate, so they repeat their last row's values
  (their state is the one those values were measured on); `training` flags the others."""
  out = {}
  for k, v in row.items():
    if isinstance(v, list) and previous is not None and isinstance(previous.get(k), list):
      v = [x if a else p for x, a, p in zip(v, alive, previous[k])]
    out[k] = v
  return dict(out, training=[bool(a) for a in alive])


def _stopping(stop: dict, several: bool, step: int, log_every: int, epoch_end: bool = False) -> bool:
  """Whether SIGINT / SIGTERM asked to stop. Several processes stop together: they agree at each logging step and at
  each epoch's end (one process alone checks every step)."""
  if not several:
    return bool(stop["signum"])
  return (epoch_end or step % log_every == 0) and mesh_lib.any_process(stop["signum"])


def _interrupt(stop: dict, save: Callable, ckpt, step: int):
  stop["signum"] = stop["signum"] or signal.SIGTERM
  save()
  if ckpt is not None:
    ckpt.wait()
  raise Interrupted(stop["signum"], step, ckpt.directory if ckpt else None)


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
