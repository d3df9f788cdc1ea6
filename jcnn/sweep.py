"""Ablation sweeps: a grid becomes variant axes, variants that share parameter shapes train in one compiled program.

A sweep is `get_sweep()` next to an experiment's `get_config()`:
  seeds          number of seeds per grid point (seed = config.train.seed + i)
  dropout_rate, init_scale, activation, learning_rate, weight_decay, l2
                 tuples of values to try (empty = not swept). These keep parameter shapes, so they are *vmap axes*:
                 every variant of a group is a slice of one leading axis V on parameters, optimizer state, BatchNorm
                 statistics, PRNG keys and metrics, and one jitted step trains all V.
  groups         config overrides that change shapes ("model.features=(16, 32, 32)", "model.name='mlp'"): each is a
                 separate compiled group, crossed with the vmapped grid.
  max_chunk      at most this many variants per program (0 = automatic, see `chunk_size`).

Variant k is the same computation as a standalone `train.train_and_evaluate` with its hyperparameters and seed: same
initial parameters, data order, dropout keys and updates (tests/test_sweep.py checks this). A variant whose loss becomes
NaN/Inf is marked failed and stops updating; the others are unaffected.

How the V variants run inside the program (`strategy`) is chosen per backend; see benchmarks/sweep_throughput.py.
"""
from __future__ import annotations

import ast
import csv
import itertools
import json
import os
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jcnn import data as data_lib
from jcnn import layers, models, summary
from jcnn import train as train_lib
from jcnn.errors import ConfigError

VMAP_AXES = ("dropout_rate", "init_scale", "activation", "learning_rate", "weight_decay", "l2")
MODEL_AXES = ("dropout_rate", "init_scale", "activation")


def default_sweep() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.seeds = 3
  for axis in VMAP_AXES:
    s[axis] = ()
  s.groups = ()
  s.max_chunk = 0
  s.strategy = "auto"   # auto (per backend and V) | vmap | map | unroll
  return s


# ----------------------------------------------------------------------------------------------------------------
# The grid.
def variants_of(config, sweep) -> list[dict]:
  """Every variant of the vmapped grid: dicts of hyperparameter values (the config's value where an axis is not swept),
  in the order seeds vary fastest."""
  axes = {a: tuple(sweep.get(a, ())) for a in VMAP_AXES}
  if axes["weight_decay"] and config.optim.name != "adamw":
    raise ConfigError("sweep.weight_decay needs config.optim.name='adamw' (or sweep l2, the loss penalty, instead)")
  base = {"dropout_rate": config.model.get("dropout_rate", 0.0), "init_scale": config.model.get("init_scale", 1.0),
          "activation": config.model.get("activation", "relu"), "learning_rate": config.optim.learning_rate,
          "weight_decay": config.optim.get("weight_decay", 0.0), "l2": config.train.l2}
  swept = [a for a in VMAP_AXES if axes[a]]
  out = []
  for values in itertools.product(*[axes[a] for a in swept]):
    for s in range(int(sweep.seeds)):
      v = dict(base, **dict(zip(swept, values)), seed=int(config.train.seed) + s)
      out.append(v)
  for v in out:
    if v["activation"] not in layers.ACTIVATIONS:
      raise ConfigError(f"sweep activation {v['activation']!r} is unknown: choose from {', '.join(layers.ACTIVATIONS)}")
    try:
      layers.check_rate(v["dropout_rate"])
    except ValueError as e:
      raise ConfigError(f"sweep dropout_rate: {e}") from None
  return out


def swept_axes(sweep) -> list[str]:
  return [a for a in VMAP_AXES if sweep.get(a, ())]


def apply_group(config, group: str):
  """A copy of config with one 'a.b=value' override applied (value is a Python literal)."""
  key, _, value = group.partition("=")
  c = ml_collections.ConfigDict(config.to_dict())
  node = c
  *path, last = key.strip().split(".")
  try:
    for p in path:
      node = node[p]
    node[last] = ast.literal_eval(value.strip())
  except (KeyError, AttributeError, ValueError, SyntaxError, TypeError) as e:
    raise ConfigError(f"sweep group {group!r}: {e}; write it as 'model.features=(16, 32, 32)'") from None
  return c


# ----------------------------------------------------------------------------------------------------------------
# Memory: how many variants one program may hold.
def device_memory_budget() -> int:
  """Half of the free memory of the default device (GPU/TPU: from memory_stats; CPU: available RAM)."""
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(0.5 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
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


def chunk_size(n_variants: int, per_variant: int, budget: int, max_chunk: int = 0) -> int:
  """Variants per program: as many as fit in `budget` bytes, at most max_chunk (if set), at least 1."""
  k = max(1, min(n_variants, budget // max(per_variant, 1)))
  return min(k, max_chunk) if max_chunk else k


# ----------------------------------------------------------------------------------------------------------------
# One group of variants: stacked state, one compiled step.
def variant_arrays(variants: Sequence[dict]) -> dict:
  """The traced hyperparameters, [V] arrays (activation as its index)."""
  return {"seed": jnp.asarray([v["seed"] for v in variants], jnp.int32),
          "dropout_rate": jnp.asarray([v["dropout_rate"] for v in variants], jnp.float32),
          "init_scale": jnp.asarray([v["init_scale"] for v in variants], jnp.float32),
          "activation": jnp.asarray([layers.activation_index(v["activation"]) for v in variants], jnp.int32),
          "learning_rate": jnp.asarray([v["learning_rate"] for v in variants], jnp.float32),
          "weight_decay": jnp.asarray([v["weight_decay"] for v in variants], jnp.float32),
          "l2": jnp.asarray([v["l2"] for v in variants], jnp.float32)}


def default_strategy(n_variants: int = 1) -> str:
  """How V variants run inside one program, per backend (benchmarks/sweep_throughput.py; README has the table).
  GPU/TPU: 'vmap' — one batched program: 6.9x the sequential model-images/s at V=16 on an H100.
  CPU: 'map' — a loop over the variants in one program, compiled in ~8 s whatever V: 0.98-1.03x the sequential rate at
  V = 1-16 on 2 cores, against 1.01-1.08x for 'unroll' (compile 30 s at V=16) and 0.74-0.95x for 'vmap'."""
  del n_variants
  return "vmap" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "map"


class GroupFns(NamedTuple):
  """The compiled pieces of one group: init(hp) -> states; step(states, failed, acc, hp, batches) -> same;
  evaluate(states, hp, x, y, idx, mask) -> metric sums [V]; batches(hp, epoch) -> [V, steps, B] indices."""
  init: Callable
  step: Callable
  evaluate: Callable
  batches: Callable


def make_group_fns(config, ds: data_lib.Dataset, swept: Sequence[str], strategy: str = "auto",
                   n_variants: int = 1) -> GroupFns:
  """Builds (and jits) the variant-stacked init, train step and evaluation for one group of a sweep. The functions
  work for any V; programs compile once per V (equal chunks share them)."""
  strategy = default_strategy(n_variants) if strategy == "auto" else strategy
  batch_size, epochs = config.train.batch_size, config.train.epochs
  n = len(ds.train_y)
  steps_per_epoch = n // batch_size
  data_lib.epoch_batches(jax.random.key(0), n, batch_size)  # checks batch <= N
  tx = train_lib.make_optimizer(config.optim, steps_per_epoch * epochs)
  augment = config.data.get("augment", "none")
  micro_batch = config.train.get("micro_batch", 0)

  def model_for(h):  # only swept model fields become traced; others keep their static config value
    return models.get(config.model, num_classes=ds.num_classes, **{a: h[a] for a in MODEL_AXES if a in swept})

  def keys_for(h):
    return jax.random.split(jax.random.key(h["seed"]), 3)  # k_init, k_data, k_dropout, as train_and_evaluate

  def init_one(h):
    k_init, _, _ = keys_for(h)
    state = train_lib.init_state(model_for(h), tx, k_init, ds.train_x[:1])
    opt_state = train_lib.set_hyperparam(state.opt_state, "learning_rate", h["learning_rate"])
    if config.optim.name == "adamw":
      opt_state = train_lib.set_hyperparam(opt_state, "weight_decay", h["weight_decay"])
    return state.replace(opt_state=opt_state)

  def step_one(state, failed, acc, h, idx):  # idx [B]: this variant's batch
    _, _, k_dropout = keys_for(h)
    l2 = h["l2"] if "l2" in swept else config.train.l2
    step = train_lib.make_train_step(model_for(h), tx, config.train.loss, l2, micro_batch)
    x = data_lib.augment(jax.random.fold_in(k_dropout, -1 - state.step), ds.train_x[idx], augment)
    new_state, m = step(state, x, ds.train_y[idx], k_dropout)
    finite_params = jnp.all(jnp.asarray([jnp.isfinite(p).all() for p in jax.tree.leaves(new_state.params)]))
    ok = jnp.isfinite(m["loss_sum"]) & finite_params & ~failed
    # A diverged variant keeps its last finite state and stops counting; its step counter still advances so the
    # batch index stays in lockstep with the others.
    keep = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    keep = keep.replace(step=new_state.step)
    m = jax.tree.map(lambda v: jnp.where(ok, v, 0.0), m)
    return keep, failed | ~ok, jax.tree.map(jnp.add, acc, m)

  def eval_one(state, h, x, y, idx, mask):
    eval_step = train_lib.make_eval_step(model_for(h), config.train.loss, micro_batch)
    return train_lib.eval_epoch(eval_step, state, x, y, idx, mask)

  def rows(s, b):  # [V, steps, B] epoch orders -> [V, B]: each variant's batch at its own step
    return b[jnp.arange(b.shape[0]), s.step % b.shape[1]]

  def map_init(h):
    return jax.lax.map(init_one, h)

  def map_eval(s, h, x, y, i, m):  # variants in turn, each reading its own (materialised) rows
    return jax.lax.map(lambda v: eval_one(*train_lib.take((s, h), v), x, y, i, m), jnp.arange(h["seed"].shape[0]))

  if strategy == "vmap":
    init_all = jax.jit(jax.vmap(init_one))
    run_step = jax.jit(lambda s, f, a, h, b: jax.vmap(step_one)(s, f, a, h, rows(s, b)), donate_argnums=(0, 1, 2))
    eval_all = jax.jit(jax.vmap(eval_one, in_axes=(0, 0, None, None, None, None)))
  elif strategy == "map":  # a loop over the variants inside one program: compiled once, whatever V
    def map_step(s, f, a, h, b):
      idx, V = rows(s, b), f.shape[0]

      def body(carry, i):
        out = step_one(*train_lib.take(carry + (h, idx), i))
        return jax.tree.map(lambda t, o: t.at[i].set(o), carry, out), None
      return jax.lax.scan(body, (s, f, a), jnp.arange(V))[0]

    init_all, run_step, eval_all = jax.jit(map_init), jax.jit(map_step, donate_argnums=(0, 1, 2)), jax.jit(map_eval)
  elif strategy == "unroll":  # the variants' steps written out one after another in one program (compile grows with V)
    def unroll_step(s, f, a, h, b):
      idx = rows(s, b)
      outs = [step_one(*jax.tree.map(lambda t: t[i], (s, f, a, h, idx))) for i in range(f.shape[0])]
      return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    init_all, run_step, eval_all = jax.jit(map_init), jax.jit(unroll_step, donate_argnums=(0, 1, 2)), jax.jit(map_eval)
  else:
    raise ConfigError(f"unknown sweep strategy {strategy!r}: use auto, vmap, map or unroll")
  batches = jax.jit(jax.vmap(lambda h, e: data_lib.epoch_batches(jax.random.fold_in(keys_for(h)[1], e), n,
                                                                 batch_size), in_axes=(0, None)))
  return GroupFns(init_all, run_step, eval_all, batches)


def train_group(config, variants: Sequence[dict], ds: data_lib.Dataset, swept: Sequence[str], strategy: str = "auto",
                on_epoch=None, fns: GroupFns | None = None) -> dict:
  """Trains len(variants) models that share parameter shapes in one compiled program.

  Returns {'history': [epoch rows with [V] arrays], 'final': {metric: [V]}, 'failed': [V] bool, 'state': stacked
  TrainState, 'compile_seconds', 'seconds'}.
  """
  V = len(variants)
  strategy = default_strategy(V) if strategy == "auto" else strategy
  hp = variant_arrays(variants)
  epochs = config.train.epochs
  steps_per_epoch = len(ds.train_y) // config.train.batch_size
  init_all, run_step, eval_all, epoch_batches = fns or make_group_fns(config, ds, swept, strategy)
  states = init_all(hp)
  failed = jnp.zeros((V,), bool)
  zero = lambda: train_lib.zero_metrics((V,))
  test_idx, test_mask = (jnp.asarray(a) for a in data_lib.eval_batches(len(ds.test_y), config.train.eval_batch_size))
  history, compile_s, t0 = [], None, time.perf_counter()
  for epoch in range(1, epochs + 1):
    batches = epoch_batches(hp, epoch)           # [V, steps, B]
    acc = zero()
    progress = train_lib.Progress(steps_per_epoch, f"epoch {epoch}/{epochs} ({V} variants)")
    t_epoch = time.perf_counter()
    for i in range(steps_per_epoch):
      states, failed, acc = run_step(states, failed, acc, hp, batches)
      if compile_s is None:
        jax.block_until_ready(acc)
        compile_s = time.perf_counter() - t_epoch
        print(f"compiled the {V}-variant train step ({strategy}) in {compile_s:.1f}s", flush=True)
        progress.t0 = progress.last = time.perf_counter()
        progress.offset = 1
        continue
      progress.update(i + 1, lambda: train_lib.summarize({k: v.sum() for k, v in acc.items()}))
    progress.close()
    a = jax.device_get(acc)
    row = {"epoch": epoch, "epoch_seconds": time.perf_counter() - t_epoch,
           "train_loss": a["loss_sum"] / np.maximum(a["count"], 1),
           "train_accuracy": a["correct"] / np.maximum(a["count"], 1)}
    ev = jax.device_get(eval_all(states, hp, ds.test_x, ds.test_y, test_idx, test_mask))
    row["test_loss"] = ev["loss_sum"] / np.maximum(ev["count"], 1)
    row["test_accuracy"] = ev["correct"] / np.maximum(ev["count"], 1)
    row["failed"] = np.asarray(jax.device_get(failed))
    history.append(row)
    if on_epoch:
      on_epoch(row)
  return {"history": history, "final": history[-1] if history else {}, "failed": np.asarray(jax.device_get(failed)),
          "state": states, "compile_seconds": compile_s, "seconds": time.perf_counter() - t0}


def train_variants(config, variants: Sequence[dict], ds: data_lib.Dataset | None = None,
                   swept: Sequence[str] | None = None, max_chunk: int = 0, strategy: str = "auto",
                   budget: int | None = None, on_epoch=None) -> list[dict]:
  """Research-code entry: trains `variants` (dicts as variants_of makes) of one config, chunked to fit memory.

  Returns one dict per variant: its hyperparameters, final metrics, failed flag, and per-epoch curves.
  """
  ds = ds or data_lib.load(config.data, seed=config.train.seed)
  swept = list(swept if swept is not None else [a for a in VMAP_AXES if len({str(v[a]) for v in variants}) > 1])
  model = models.get(config.model, num_classes=ds.num_classes)
  n_params = summary.count_params(jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x), ds.train_x[:1])["params"])
  per = bytes_per_variant(model, ds.image_shape, config.train.batch_size, n_params)
  k = chunk_size(len(variants), per, budget if budget is not None else device_memory_budget(), max_chunk)
  out, fns = [], {}
  for start in range(0, len(variants), k):
    chunk = list(variants[start:start + k])
    print(f"variants {start + 1}-{start + len(chunk)} of {len(variants)} in one program "
          f"(chunk rule: {k} = min(max_chunk, memory budget / ~{per / 2**20:.0f} MiB per variant))", flush=True)
    strat = default_strategy(len(chunk)) if strategy == "auto" else strategy
    fns.setdefault(strat, make_group_fns(config, ds, swept, strat))
    res = train_group(config, chunk, ds, swept, strat, on_epoch, fns[strat])
    for j, v in enumerate(chunk):
      curves = [{key: (val[j].item() if isinstance(val, np.ndarray) else val) for key, val in row.items()}
                for row in res["history"]]
      out.append({"hparams": v, "failed": bool(res["failed"][j]), "final": curves[-1] if curves else {},
                  "curves": curves, "compile_seconds": res["compile_seconds"], "group_seconds": res["seconds"],
                  "params": jax.tree.map(lambda p: p[j], res["state"].params)})
  return out


# ----------------------------------------------------------------------------------------------------------------
# Results: per-variant rows, mean ± std over seeds, files and plots.
def aggregate(results: list[dict], keys: Sequence[str]) -> list[dict]:
  """Groups variants by everything but the seed; mean ± std (ddof=1 where n > 1) of final test/train accuracy & loss.
  Failed variants are counted in `failed` and left out of the statistics."""
  groups: dict[tuple, list[dict]] = {}
  for r in results:
    groups.setdefault(tuple(r["hparams"][k] for k in keys), []).append(r)
  rows = []
  for point, rs in groups.items():
    ok = [r for r in rs if not r["failed"]]
    row = dict(zip(keys, point), seeds=len(rs), failed=len(rs) - len(ok))
    for m in ("test_accuracy", "test_loss", "train_accuracy", "train_loss"):
      vals = np.asarray([r["final"][m] for r in ok], np.float64)
      row[f"{m}_mean"] = float(vals.mean()) if len(vals) else float("nan")
      row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    rows.append(row)
  return rows


def markdown_table(rows: list[dict], keys: Sequence[str]) -> str:
  head = "| " + " | ".join(list(keys) + ["test accuracy", "test loss", "train accuracy", "seeds", "failed"]) + " |"
  lines = [head, "|" + "---|" * (len(keys) + 5)]
  for r in rows:
    cells = [str(r[k]) for k in keys]
    cells += [f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}",
              f"{r['test_loss_mean']:.4f} ± {r['test_loss_std']:.4f}",
              f"{r['train_accuracy_mean']:.4f} ± {r['train_accuracy_std']:.4f}", str(r["seeds"]),
              str(r["failed"]) if not r["failed"] else f"**{r['failed']}**"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(results: list[dict], keys: Sequence[str], workdir: str) -> dict:
  """variants.jsonl, summary.{md,csv,json}, and PNG plots in workdir."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "variants.jsonl"), "w") as f:
    for r in results:
      f.write(json.dumps({k: r[k] for k in ("hparams", "failed", "final", "curves", "compile_seconds")},
                         default=float) + "\n")
  rows = aggregate(results, keys)
  table = markdown_table(rows, keys)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "summary.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(rows, f, indent=2)
  try:
    from jcnn import viz  # pylint: disable=g-import-not-at-top
    viz.plot_sweep(results, rows, keys, workdir)
  except ImportError:
    pass
  return {"rows": rows, "table": table}


def run_sweep(config, sweep, workdir: str) -> dict:
  """`launch.py` for an experiment with get_sweep(): every group, every variant, then the table and plots."""
  train_lib.check_config(config)
  if os.path.exists(os.path.join(workdir, "summary.json")):
    raise ConfigError(f"{workdir} already holds a finished sweep (summary.json); pass a new --workdir")
  variants = variants_of(config, sweep)
  swept = swept_axes(sweep)
  groups = list(sweep.get("groups", ())) or [""]
  keys = (["group"] if groups != [""] else []) + swept
  ds = data_lib.load(config.data, seed=config.train.seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"config": json.loads(config.to_json_best_effort()), "sweep": json.loads(sweep.to_json_best_effort()),
               "record": train_lib.run_record()}, f, indent=2)
  print(f"sweep: {len(groups)} group(s) x {len(variants)} variants ({', '.join(swept) or 'seeds'} x "
        f"{sweep.seeds} seeds)", flush=True)
  results = []
  for g in groups:
    cfg = apply_group(config, g) if g else config
    if g:
      print(f"group {g}", flush=True)
    model = models.get(cfg.model, num_classes=ds.num_classes)
    print(summary.summary(model, ds.image_shape, flops=False))
    for r in train_variants(cfg, variants, ds, swept, sweep.max_chunk, sweep.get("strategy", "auto")):
      r["hparams"] = dict(r["hparams"], group=g) if g else r["hparams"]
      r.pop("params")
      results.append(r)
  out = write_results(results, keys, workdir)
  print(out["table"])
  print(f"results: {workdir}/summary.md (.csv, .json), variants.jsonl, *.png")
  return {"results": results, **out}
