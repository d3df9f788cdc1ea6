"""Ablation sweeps: a grid becomes variants; variants that share parameter shapes train in one compiled program.

A sweep is `get_sweep()` next to an experiment's `get_config()`:
  seeds          number of seeds per grid point (seed = config.train.seed + i)
  dropout_rate, init_scale, activation, learning_rate, weight_decay, l2
                 tuples of values to try (empty = not swept): the rows of config.SWEEP_AXES. These keep parameter
                 shapes, so they are traced values: every variant of a group is a slice of one leading axis V on
                 parameters, optimizer state, BatchNorm statistics and metrics, and one jitted step trains all V.
  groups         config overrides that change shapes ("model.features=(16, 32, 32)", "model.name='mlp'"): each is a
                 separate compiled group, crossed with the grid.
  max_chunk      at most this many variants per program (0 = automatic, see `chunk_size`).
  strategy       how the V variants run inside the program: auto (per backend) | vmap | map | unroll.

A group's program is the one loop's per-model functions (loop.model_fns) lifted over the variant axis by the
strategy, and `loop.run` trains it like a single run: same checkpoints, resume, writers and divergence policy (a
diverged variant is marked failed and keeps its last finite state; the others are unaffected). Variant k computes what
its standalone run computes (tests/test_sweep.py checks this against a plain reference loop).
"""
from __future__ import annotations

import ast
import itertools
import json
import os
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jcnn import checkpoint, config as config_lib, data as data_lib, loop, mesh as mesh_lib, models, summary
from jcnn import writers
from jcnn import train as train_lib
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
  return s


# ----------------------------------------------------------------------------------------------------------------
# The grid.
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


def apply_group(config, group: str):
  """A copy of config with one 'a.b=value' override applied (value is a Python literal)."""
  key, _, value = group.partition("=")
  c = ml_collections.ConfigDict(config.to_dict())
  node = c
  *path, last = key.strip().split(".")
  for p in path:
    if p not in node or not hasattr(node[p], "items"):
      raise ConfigError(f"sweep group {group!r}: config has no section {p!r}; write it as 'model.features=(16, 32)'")
    node = node[p]
  if last not in node:
    raise ConfigError(f"sweep group {group!r}: config.{key.strip()} is not a config key")
  try:
    node[last] = ast.literal_eval(value.strip())
  except (ValueError, SyntaxError, TypeError) as e:
    raise ConfigError(f"sweep group {group!r}: {e}; write it as 'model.features=(16, 32, 32)'") from None
  return c


# ----------------------------------------------------------------------------------------------------------------
# Memory: how many variants one program may hold.
def device_memory_budget() -> int:
  """Half of the free memory of the devices a program spreads over (GPU/TPU: memory_stats of this process's first
  device, times the device count, since a sweep's variants split over them; CPU: available RAM, which forced host
  devices share)."""
  dev = jax.local_devices()[0]
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(0.5 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))) * jax.device_count()
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


def variants_per_program(config, ds: data_lib.Dataset, n_variants: int, max_chunk: int = 0,
                         budget: int | None = None) -> tuple[int, int]:
  """(variants per program, estimated bytes per variant) for config's model on ds."""
  model = models.get(config.model, num_classes=ds.num_classes)
  n_params = summary.count_params(jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x), ds.train_x[:1])["params"])
  per = bytes_per_variant(model, ds.image_shape, config.train.batch_size, n_params)
  return chunk_size(n_variants, per, budget if budget is not None else device_memory_budget(), max_chunk), per


def chunk_size(n_variants: int, per_variant: int, budget: int, max_chunk: int = 0) -> int:
  """Variants per program: as many as fit in `budget` bytes, at most max_chunk (if set), at least 1."""
  k = max(1, min(n_variants, budget // max(per_variant, 1)))
  return min(k, max_chunk) if max_chunk else k


# ----------------------------------------------------------------------------------------------------------------
# One group of variants: the per-model functions lifted over a leading variant axis.
def default_strategy(n_variants: int = 1) -> str:
  """How V variants run inside one program, per backend (benchmarks/sweep_throughput.py; README has the table).
  GPU/TPU: 'vmap' — one batched program: 6.9x the sequential model-images/s at V=16 on an H100.
  CPU: 'map' — a loop over the variants in one program, compiled in ~8 s whatever V: 0.98-1.03x the sequential rate at
  V = 1-16 on 2 cores, against 1.01-1.08x for 'unroll' (compile 30 s at V=16) and 0.74-0.95x for 'vmap'."""
  del n_variants
  return "vmap" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "map"


class GroupFns(NamedTuple):
  """The compiled functions of one group, for any V (a program compiles once per V): init(hp) -> RunState [V];
  step(rs, hp, images, labels, batches [V, steps, B]) -> rs; evaluate(train_state, hp, x, y, idx, mask) -> sums [V];
  batches(hp, epoch) -> [V, steps, B]."""
  init: Callable
  step: Callable
  evaluate: Callable
  batches: Callable


def make_group_fns(config, ds: data_lib.Dataset, swept: Sequence[str], strategy: str = "auto",
                   mesh=None) -> GroupFns:
  """loop.model_fns lifted over the variant axis by `strategy`, jitted. On a mesh, the variant axis is split over its
  `variant` devices (each runs the strategy on its own V / variant variants) and every batch over `data`."""
  strategy = default_strategy() if strategy == "auto" else strategy
  fns = loop.model_fns(config, ds, swept, mesh)
  take = train_lib.take

  def rows(rs, b):  # [V, steps, B] epoch orders -> [V, B]: each variant's batch at its own step
    return b[jnp.arange(b.shape[0]), rs.train.step % b.shape[1]]

  def map_eval(s, h, x, y, i, m):  # variants in turn, each reading its own (materialised) rows
    return jax.lax.map(lambda v: fns.evaluate(*take((s, h), v), x, y, i, m), jnp.arange(h["seed"].shape[0]))

  if strategy == "vmap":
    init = jax.vmap(fns.init)
    step = lambda rs, h, x, y, b: jax.vmap(fns.step, in_axes=(0, 0, None, None, 0))(rs, h, x, y, rows(rs, b))
    evaluate = jax.vmap(fns.evaluate, in_axes=(0, 0, None, None, None, None))
  elif strategy == "map":  # a loop over the variants inside one program: compiled once, whatever V
    def step(rs, h, x, y, b):
      idx = rows(rs, b)

      def body(carry, i):
        r, hi, ii = take((carry, h, idx), i)
        return jax.tree.map(lambda t, o: t.at[i].set(o), carry, fns.step(r, hi, x, y, ii)), None
      return jax.lax.scan(body, rs, jnp.arange(idx.shape[0]))[0]

    init, evaluate = lambda h: jax.lax.map(fns.init, h), map_eval
  elif strategy == "unroll":  # the variants' steps written out one after another (compile time grows with V)
    def step(rs, h, x, y, b):
      idx = rows(rs, b)
      outs = [fns.step(*jax.tree.map(lambda t: t[i], (rs, h)), x, y, idx[i]) for i in range(idx.shape[0])]
      return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    init, evaluate = lambda h: jax.lax.map(fns.init, h), map_eval
  else:
    raise ConfigError(f"sweep.strategy={strategy!r}: must be one of auto, vmap, map, unroll")
  batches = jax.vmap(fns.batches, in_axes=(0, None))
  dv = 1 if mesh is None else int(mesh.shape["variant"])
  if dv > 1:   # each device runs the strategy on its own block of V / dv variants
    init, step, evaluate, batches = (per_device(f, mesh, args, n) for f, args, n in
                                     ((init, (0,), 1), (step, (0, 1, 4), 5), (evaluate, (0, 1), 6),
                                      (batches, (0,), 2)))
  out = {} if mesh is None else {"out_shardings": mesh_lib.by_variant(mesh)}
  return GroupFns(jax.jit(init, **out), jax.jit(step, donate_argnums=0, **out), jax.jit(evaluate, **out),
                  jax.jit(batches, **out))


def per_device(f: Callable, mesh, variant_args: Sequence[int], n_args: int) -> Callable:
  """f over stacked variants [V, ...] -> the same with the variant axis split over the mesh's `variant` devices:
  each device runs f itself on its contiguous block of V / variant rows (jax.shard_map, manual over `variant` only:
  the `data` axis stays with the partitioner). Each device's program is the unsharded one on fewer variants, so a
  variant computes what it computes in the unsharded sweep."""
  specs = tuple(mesh_lib.P("variant") if i in variant_args else mesh_lib.P() for i in range(n_args))
  return jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=mesh_lib.P("variant"), axis_names={"variant"},
                       check_vma=False)


def padded(variants: Sequence[dict], multiple: int) -> list[dict]:
  """The variants plus copies of the last one up to a multiple of `multiple` (the mesh's variant axis): the copies
  train alongside and are dropped from every result."""
  return list(variants) + [variants[-1]] * (-len(variants) % multiple)


def program(fns: GroupFns, ds: data_lib.Dataset, variants: Sequence[dict], mesh=None, pad_to: int = 1
            ) -> loop.Program:
  """The loop's program for these variants: the group's functions with their hyperparameters and the data bound."""
  hp = config_lib.variant_arrays(padded(variants, pad_to))
  if mesh is not None:
    hp = {k: mesh_lib.put(v, mesh_lib.by_variant(mesh)) for k, v in hp.items()}
  return loop.Program(init=lambda: fns.init(hp), step=lambda rs, b: fns.step(rs, hp, ds.train_x, ds.train_y, b),
                      evaluate=lambda st, *a: fns.evaluate(st, hp, *a), batches=lambda e: fns.batches(hp, e),
                      variants=list(variants), mesh=mesh)


def train_variants(config, variants: Sequence[dict], ds: data_lib.Dataset | None = None,
                   swept: Sequence[str] | None = None, max_chunk: int = 0, strategy: str = "auto",
                   budget: int | None = None, workdir: str | None = None, group: tuple[int, str] = (0, ""),
                   chunk: int | None = None, mesh=None, pad_to: int = 1) -> list[dict]:
  """Trains `variants` (dicts as variants_of makes) of one config, in programs of as many variants as fit in memory.

  With a workdir, each program checkpoints into workdir/checkpoints/<group>-<first variant>/ and resumes from there,
  and writes metrics.jsonl rows and TensorBoard runs per variant. Returns one dict per variant: its hyperparameters,
  failed flag and step, final metrics, per-epoch curves, and parameters. On a mesh, each program's variants are
  padded to a multiple of `pad_to` (the variant axis it was planned for: see `padded`).
  """
  ds = ds or data_lib.load(config.data, seed=config.train.seed)
  swept = list(swept if swept is not None else [a for a in AXES if len({str(v[a]) for v in variants}) > 1])
  k, per = (chunk, None) if chunk else variants_per_program(config, ds, len(variants), max_chunk, budget)
  gi, g = group
  keys = (["group"] if g else []) + list(swept)
  out, fns = [], {}
  for start in range(0, len(variants), k):
    part = list(variants[start:start + k])
    rule = f"min(max_chunk, memory budget / ~{per / 2**20:.0f} MiB per variant)" if per else "the sweep's plan"
    pad = -len(part) % pad_to
    print(f"variants {start + 1}-{start + len(part)} of {len(variants)} in one program (chunk rule: {k} = {rule})"
          + (f"; {pad} padding cop{'y' if pad == 1 else 'ies'} of the last variant fill the variant axis" if pad
             else ""), flush=True)
    strat = default_strategy(len(part)) if strategy == "auto" else strategy
    fns.setdefault(strat, make_group_fns(config, ds, swept, strat, mesh))
    ckpt = writer = None
    if workdir is not None:
      name = f"{gi}-{start}"
      ckpt = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints", name), config.checkpoint.keep)
      named = [(writers.variant_name(dict(v, group=g) if g else v, keys), gi * len(variants) + start + j)
               for j, v in enumerate(part)]
      writer = writers.Writer(workdir if mesh_lib.is_main() else None, variants=named,
                              tensorboard=config.writers.tensorboard, resume_step=ckpt.latest_step() or 0,
                              program=name)
    try:
      res = loop.run(program(fns[strat], ds, part, mesh, pad_to), ds, config, ckpt=ckpt, writer=writer)
    finally:
      if writer is not None:
        writer.close()
      if ckpt is not None:
        ckpt.close()   # a save in flight lands (also when the run stopped)
    for j, v in enumerate(part):
      curves = [{key: (val[j] if isinstance(val, list) else val) for key, val in row.items()}
                for row in res["history"]]
      failed_at = int(res["failed_at"][j])
      out.append({"hparams": v, "failed": failed_at >= 0, "failed_at": failed_at,
                  "final": curves[-1] if curves else {}, "curves": curves, "compile_seconds": res["compile_seconds"],
                  "group_seconds": res["seconds"], "params": jax.tree.map(lambda p: p[j], res["state"].params)})
  return out


# ----------------------------------------------------------------------------------------------------------------
# Results: per-variant rows, mean ± std over seeds, ranked on validation accuracy when there is a validation split.
METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "train_accuracy", "train_loss")


def aggregate(results: list[dict], keys: Sequence[str]) -> list[dict]:
  """Groups variants by everything but the seed; mean ± std (ddof=1 where n > 1) of the final metrics; `rank` 1 is the
  best mean val accuracy (test accuracy without a validation split). Failed variants are counted in `failed` and left
  out of the statistics."""
  groups: dict[tuple, list[dict]] = {}
  for r in results:
    groups.setdefault(tuple(r["hparams"][k] for k in keys), []).append(r)
  rows = []
  for point, rs in groups.items():
    ok = [r for r in rs if not r["failed"]]
    row = dict(zip(keys, point), seeds=len(rs), failed=len(rs) - len(ok))
    for m in METRICS:
      vals = np.asarray([r["final"][m] for r in ok if m in r["final"]], np.float64)
      if len(vals) or any(m in r["final"] for r in rs):
        row[f"{m}_mean"] = float(vals.mean()) if len(vals) else float("nan")
        row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    rows.append(row)
  by = "val_accuracy_mean" if any("val_accuracy_mean" in r for r in rows) else "test_accuracy_mean"
  order = sorted(range(len(rows)), key=lambda i: -np.nan_to_num(rows[i].get(by, np.nan), nan=-1.0))
  for rank, i in enumerate(order, 1):
    rows[i]["rank"] = rank
  return rows


def markdown_table(rows: list[dict], keys: Sequence[str]) -> str:
  """Best first (by `rank`)."""
  splits = [s for s in ("val", "test", "train") if f"{s}_accuracy_mean" in rows[0]]
  head = "| rank | " + " | ".join(list(keys) + [f"{s} accuracy" for s in splits] + ["test loss", "seeds",
                                                                                    "failed"]) + " |"
  lines = [head, "|" + "---|" * (len(keys) + len(splits) + 4)]
  for r in sorted(rows, key=lambda r: r["rank"]):
    cells = [str(r["rank"])] + [str(r[k]) for k in keys]
    cells += [f"{r[f'{s}_accuracy_mean']:.4f} ± {r[f'{s}_accuracy_std']:.4f}" for s in splits]
    cells += [f"{r['test_loss_mean']:.4f} ± {r['test_loss_std']:.4f}", str(r["seeds"]),
              str(r["failed"]) if not r["failed"] else f"**{r['failed']}**"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run_sweep(config, sweep, workdir: str) -> dict:
  """`launch.py` for an experiment with get_sweep(): every group, every variant, then the table and plots. Resumes
  an unfinished sweep in `workdir` (same config and grid)."""
  config_lib.check_config(config)
  variants = variants_of(config, sweep)
  swept = swept_axes(sweep)
  groups = list(sweep.groups) or [""]
  configs = [apply_group(config, g) if g else config for g in groups]
  for c in configs:
    config_lib.check_config(c)
  if not isinstance(sweep.max_chunk, int) or sweep.max_chunk < 0:
    raise ConfigError(f"sweep.max_chunk={sweep.max_chunk!r}: must be an integer >= 0 (0 = automatic)")
  if sweep.strategy not in ("auto", "vmap", "map", "unroll"):
    raise ConfigError(f"sweep.strategy={sweep.strategy!r}: must be one of auto, vmap, map, unroll")
  keys = (["group"] if groups != [""] else []) + swept
  resumed = loop.prepare_workdir(workdir, config, "summary.json", extra={"sweep": sweep})
  mesh_lib.sync("workdir checked")   # before process 0 writes, every process has looked at the workdir
  main = mesh_lib.is_main()
  plan_path = os.path.join(workdir, "checkpoints", "plan.json")   # variants per program, kept for resuming
  plan = json.load(open(plan_path)) if resumed and os.path.exists(plan_path) else {}
  host_ds = data_lib.load(config.data, seed=config.train.seed, put=np.asarray)
  for gi, c in enumerate(configs):
    jax.eval_shape(loop.single_program(c, host_ds).init)   # ShapeError, before any file, if a model cannot take it
    if str(gi) not in plan:   # every process takes process 0's figure (their memory may differ)
      plan[str(gi)] = mesh_lib.from_process_0(variants_per_program(c, host_ds, len(variants), sweep.max_chunk)[0])
  # One mesh for the sweep. A new sweep: variant axis from the chunk size; its programs' variants are padded to a
  # multiple of it (plan 'pad_to'). A resumed one keeps that padding, so its checkpoints keep their shapes on any
  # device count whose variant axis divides them.
  if "pad_to" in plan:
    rows = [len(padded(variants[s:s + plan[str(gi)]], plan["pad_to"])) for gi in range(len(configs))
            for s in range(0, len(variants), plan[str(gi)])]
    mesh = mesh_lib.make(config, n_variants=min(rows), divide=int(np.gcd.reduce(rows)))
  else:
    mesh = mesh_lib.make(config, n_variants=min(plan[str(gi)] for gi in range(len(configs))))
    plan["pad_to"] = int(mesh.shape["variant"])
  print(mesh_lib.line(mesh), flush=True)
  ds = mesh_lib.load(config.data, mesh, seed=config.train.seed)
  if main:
    loop.write_config(workdir, config, resumed, extra={"sweep": sweep}, mesh=mesh)
    os.makedirs(os.path.dirname(plan_path), exist_ok=True)
    writers.write_json(plan_path, plan)
    print(f"sweep: {len(groups)} group(s) x {len(variants)} variants ({', '.join(swept) or 'seeds'} x "
          f"{sweep.seeds} seeds)", flush=True)
  results = []
  for gi, (g, cfg) in enumerate(zip(groups, configs)):
    if g:
      print(f"group {g}", flush=True)
    model = models.get(cfg.model, num_classes=ds.num_classes)
    if main:
      print(summary.summary(model, ds.image_shape, flops=False, input_dtype=ds.train_x.dtype))
    for r in train_variants(cfg, variants, ds, swept, sweep.max_chunk, sweep.strategy, workdir=workdir,
                            group=(gi, g), chunk=plan[str(gi)], mesh=mesh, pad_to=plan["pad_to"]):
      r["hparams"] = dict(r["hparams"], group=g) if g else r["hparams"]
      r.pop("params")
      results.append(r)
  rows = aggregate(results, keys)
  table = markdown_table(rows, keys)
  if main:
    writers.write_sweep(workdir, results, rows, table, keys)
    print(table)
    print(f"results: {workdir}/summary.md (.csv, .json), variants.jsonl, *.png")
  return {"results": results, "rows": rows, "table": table}
