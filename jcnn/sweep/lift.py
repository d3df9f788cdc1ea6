"""Variants that share parameter shapes train in one compiled program: the loop's per-model functions lifted over a
leading variant axis.

A group's program is the one loop's per-model functions (jcnn.train.program.model_fns) lifted over the variant axis
by the strategy, and `loop.run` trains it like a single run: same checkpoints, resume, writers and divergence policy (a
diverged variant is marked failed and keeps its last finite state; the others are unaffected). Variant k computes what
its standalone run computes (tests/test_sweep.py checks this against a plain reference loop).
"""
from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jcnn import config as config_lib, data as data_lib
from jcnn.errors import ConfigError
from jcnn.parallel import mesh as mesh_lib
from jcnn.sweep import search as search_lib
from jcnn.sweep.grid import AXES
from jcnn.sweep.memory import variants_per_program
from jcnn.train import checkpoint, loop, program as program_lib, step as step_lib, tasks, writers


def _decoded(axis: str, x, variants: Sequence[dict]):
  """A hyperparameter back from the device as the grid writes it (an activation index: the grid's name for it)."""
  x = jax.device_get(x)
  if jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
    return search_lib.named(axis, int(x), variants)
  return float(f"{float(x):.7g}")   # a float32 as written (1e-3, not 0.0010000000474974513)


def default_strategy(n_variants: int = 1) -> str:
  """How V variants run inside one program, per backend (benchmarks/sweep_throughput.py; docs/sweeps.md has the table).
  GPU/TPU: 'vmap' — one batched program: 6.9x the sequential model-images/s at V=16 on an H100.
  CPU: 'map' — a loop over the variants in one program, compiled in ~8 s whatever V: 0.98-1.03x the sequential rate at
  V = 1-16 on 2 cores, against 1.01-1.08x for 'unroll' (compile 30 s at V=16) and 0.74-0.95x for 'vmap'."""
  del n_variants
  return "vmap" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "map"


class GroupFns(NamedTuple):
  """The compiled functions of one group, for any V (a program compiles once per V): init(hp) -> RunState [V];
  step(rs, hp, images, labels, batches [V, steps, B]) -> rs; evaluate(train_state, hp, x, y, idx, mask, only [V] bool)
  -> sums [V] (zero for variants not in `only`, where the strategy can skip them);
  batches(hp, epoch) -> [V, steps, B]."""
  init: Callable
  step: Callable
  evaluate: Callable
  batches: Callable
  config: Any = None   # the group's config (its data and evaluation settings, for the program's feeds)


def make_group_fns(config, ds: data_lib.Dataset, swept: Sequence[str], strategy: str = "auto",
                   mesh=None) -> GroupFns:
  """loop.model_fns lifted over the variant axis by `strategy`, jitted. On a mesh, the variant axis is split over its
  `variant` devices (each runs the strategy on its own V / variant variants) and every batch over `data`."""
  strategy = default_strategy() if strategy == "auto" else strategy
  fns = program_lib.model_fns(config, ds, swept, mesh)
  take = step_lib.take

  def rows(rs, b):  # [V, steps, B] epoch orders -> [V, B]: each variant's batch at its own step
    return b[jnp.arange(b.shape[0]), rs.train.step % b.shape[1]]

  def map_eval(s, h, x, y, i, m, only):  # variants in turn, each reading its own (materialised) rows; skips those
    def one(v):                            # not in `only` (their sums stay zero)
      sums = lambda: fns.evaluate(*take((s, h), v), x, y, i, m)
      return jax.lax.cond(only[v], sums, lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(sums)))
    return jax.lax.map(one, jnp.arange(h["seed"].shape[0]))

  if strategy == "vmap":
    init = jax.vmap(fns.init)
    step = lambda rs, h, x, y, b: jax.vmap(fns.step, in_axes=(0, 0, None, None, 0))(rs, h, x, y, rows(rs, b))
    evaluate = lambda s, h, x, y, i, m, only: jax.vmap(fns.evaluate, in_axes=(0, 0, None, None, None, None))(
        s, h, x, y, i, m)   # every variant (a batched program computes them all anyway)
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
                                     ((init, (0,), 1), (step, (0, 1, 4), 5), (evaluate, (0, 1, 6), 7),
                                      (batches, (0,), 2)))
  out = {} if mesh is None else {"out_shardings": mesh_lib.by_variant(mesh)}
  return GroupFns(jax.jit(init, **out), jax.jit(step, donate_argnums=0, **out), jax.jit(evaluate, **out),
                  jax.jit(batches, **out), config)


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


def program(fns: GroupFns, ds: data_lib.Dataset, variants: Sequence[dict], mesh=None, pad_to: int = 1,
            search=None) -> program_lib.Program:
  """The loop's program for these variants: the group's functions with their hyperparameters and the data bound.
  `search` (jcnn.sweep.search.Search) adds its state to the initial one and its decisions to the program."""
  hp = config_lib.variant_arrays(padded(variants, pad_to))
  every = jnp.ones(len(hp["seed"]), bool)
  if mesh is not None:
    hp = {k: mesh_lib.put(v, mesh_lib.by_variant(mesh)) for k, v in hp.items()}
    every = mesh_lib.put(every, mesh_lib.by_variant(mesh))
  step = ((lambda rs, item: fns.step(rs, hp, *item)) if ds.streamed else
          (lambda rs, b: fns.step(rs, hp, ds.train_x, ds.train_y, b)))
  init = (lambda: fns.init(hp)) if search is None else (lambda: search.start(fns.init(hp), hp))
  return program_lib.with_feeds(
      program_lib.Program(init=init, step=step,
                          evaluate=lambda st, *a, only=None: fns.evaluate(st, hp, *a, every if only is None else only),
                          batches=lambda e: fns.batches(hp, e), variants=list(variants), mesh=mesh, search=search),
      fns.config, ds, V=len(hp["seed"]))


def train_variants(config, variants: Sequence[dict], ds: data_lib.Dataset | None = None,
                   swept: Sequence[str] | None = None, max_chunk: int = 0, strategy: str = "auto",
                   budget: int | None = None, workdir: str | None = None, group: tuple[int, str] = (0, ""),
                   chunk: int | None = None, mesh=None, pad_to: int = 1, sweep=None) -> list[dict]:
  """Trains `variants` (dicts as variants_of makes) of one config, in programs of as many variants as fit in memory.

  With a workdir, each program checkpoints into workdir/checkpoints/<group>-<first variant>/ and resumes from there,
  and writes metrics.jsonl rows and TensorBoard runs per variant. Returns one dict per variant: its hyperparameters,
  failed flag and step, final metrics, per-epoch curves, and parameters (those evaluation used: the moving average
  when config.train.ema_decay is on or swept). On a mesh, each program's variants are padded to a multiple of
  `pad_to` (the variant axis it was planned for: see `padded`). With `sweep` whose search is halving or pbt
  (jcnn.sweep.search), the variants train in one program that decides among them; each result adds `epochs_trained`
  (halving) or `final_hparams` and `events` (pbt).
  """
  ds = ds or data_lib.load(config.data, seed=config.train.seed, task=config.train.task)
  swept = list(swept if swept is not None else [a for a in AXES if len({str(v[a]) for v in variants}) > 1])
  k, per = (chunk, None) if chunk else variants_per_program(config, ds, len(variants), max_chunk, budget)
  deciding = sweep is not None and sweep.search != "grid"
  if deciding and k < len(variants):
    raise ConfigError(f"sweep.search={sweep.search} decides among all {len(variants)} variants in one program, but "
                      f"only {k} fit in memory (~{(per or 0) / 2**20:.0f} MiB each): sweep fewer values or seeds, or "
                      f"lower config.train.batch_size")
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
                              tensorboard=config.writers.tensorboard, program=name)
    found = None
    if deciding:
      found = search_lib.make(config, sweep, part, swept, len(ds.train_y) // config.train.batch_size,
                              tasks.primary(ds.task), mesh)
    try:
      res = loop.run(program(fns[strat], ds, part, mesh, pad_to, found), ds, config, ckpt=ckpt, writer=writer)
    finally:
      if writer is not None:
        writer.close()
      if ckpt is not None:
        ckpt.close()   # a save in flight lands (also when the run stopped)
    for j, v in enumerate(part):
      curves = [{key: (val[j] if isinstance(val, list) else val) for key, val in row.items()}
                for row in res["history"]]
      failed_at = int(res["failed_at"][j])
      r = {"hparams": v, "failed": failed_at >= 0, "failed_at": failed_at,
           "final": curves[-1] if curves else {}, "curves": curves, "compile_seconds": res["compile_seconds"],
           "group_seconds": res["seconds"],
           "params": jax.tree.map(lambda p: p[j], step_lib.eval_params(res["state"]))}   # EMA weights when kept
      if found is not None and found.kind == "halving":
        r["epochs_trained"] = search_lib.rung_reached(j, res["events"], config.train.epochs)
      if found is not None and found.kind == "pbt":
        r["final_hparams"] = dict(v, **{a: _decoded(a, x[j], variants) for a, x in res["search"]["hp"].items()})
      if found is not None:
        r["events"] = res["events"]
      out.append(r)
  return out
