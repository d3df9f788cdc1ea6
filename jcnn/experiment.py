"""An experiment from its config: check config -> workdir -> mesh -> data -> program -> run -> write.

    train_and_evaluate(config, workdir)   a single run (launch.py --experiment=NAME)
    run_sweep(config, sweep, workdir)     the same sequence with a variant axis (an experiment with get_sweep())

Each step is one call into the package that owns it (config, train.workdir, parallel.mesh, train.program / sweep.lift,
train.loop, train.writers), so the two read side by side.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from jcnn import config as config_lib, data as data_lib, models
from jcnn.errors import ConfigError
from jcnn.inspect import pictures, summary
from jcnn.parallel import mesh as mesh_lib
from jcnn.sweep import cpu_chunk, search as search_lib
from jcnn.sweep.grid import swept_axes, variants_of
from jcnn.sweep.lift import padded, train_variants
from jcnn.sweep.memory import variants_per_program
from jcnn.sweep.results import aggregate, markdown_table
from jcnn.train import checkpoint, decide, loop, program as program_lib, step as step_lib, writers
from jcnn.train import workdir as workdir_lib


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config.model on config.data in `workdir`, resuming from its newest checkpoint if it holds an unfinished
  run of the same config. Writes config.json, metrics.jsonl, tb/, checkpoints/, results.json and curves.png (with
  several processes: process 0 writes, all of them checkpoint). Returns {'results', 'state', 'history'}."""
  config_lib.check_config(config)
  mesh = mesh_lib.make(config)
  with workdir_lib.claim(workdir, config, "results.json") as resumed:   # refused, new or resumed; held until the end
    main = mesh_lib.is_main()
    print(mesh_lib.line(mesh), flush=True)
    ds = mesh_lib.load(config.data, mesh, seed=config.train.seed, task=config.train.task)
    config_lib.check_decisions(config, has_val=ds.val_x is not None)   # the data now says whether it has val rows
    program = program_lib.single_program(config, ds, mesh)
    jax.eval_shape(program.init)   # a model that cannot take the data's shape says so (ShapeError) before any file
    if main:
      model = models.get(config.model, num_classes=ds.outputs)
      print(summary.summary(model, ds.image_shape, input_dtype=ds.train_x.dtype))
      workdir_lib.write_config(workdir, config, resumed, mesh=mesh)
    out = _run(program, ds, config, workdir, main)
    results = _results(config, ds, out, mesh)
    if main:
      variables = {"params": step_lib.eval_params(out["state"]), "batch_stats": out["state"].batch_stats}
      _pictures(workdir, [(config.name or config.model.name, model, variables, ds)])
      writers.write_run(workdir, results)
      if "weights" in results:
        print(f"weights: kernel {results['weights']['kernel']}, bias {results['weights']['bias']}")
      print(f"results: {os.path.join(workdir, 'results.json')}")
  return {"results": results, "state": out["state"], "history": out["history"]}


def _run(program, ds, config, workdir: str, main: bool) -> dict:
  """loop.run with the workdir's checkpoints and writers, closed however the loop ends."""
  ckpt = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.checkpoint.keep)
  best = checkpoint.Checkpoints(checkpoint.best_directory(workdir), 1) if config.checkpoint.best else None
  writer = writers.Writer(workdir if main else None, tensorboard=config.writers.tensorboard)
  try:
    return loop.run(program, ds, config, ckpt=ckpt, writer=writer, best=best)
  finally:
    writer.close()
    ckpt.close()   # a save in flight lands (also when the run stopped)
    if best is not None:
      best.close()


def _results(config, ds, out: dict, mesh) -> dict:
  """results.json: the final epoch row, parameters, compile and wall time, training throughput, the mesh."""
  history = out["history"]
  steps_per_epoch = len(ds.train_y) // config.train.batch_size
  timed = [h for h in history if "epoch_seconds" in h]
  train_s = sum(h["epoch_seconds"] for h in timed)
  results = {"experiment": config.name, "model": config.model.name, "dataset": config.data.name,
             "params": summary.count_params(out["state"].params), "epochs": config.train.epochs,
             "final": history[-1], "compile_seconds": out["compile_seconds"], "wall_seconds": out["seconds"],
             "train_images_per_second": steps_per_epoch * config.train.batch_size * len(timed) / max(train_s, 1e-9),
             "mesh": mesh_lib.describe(mesh), **decide.summary(history, config)}
  params = step_lib.eval_params(out["state"])   # what evaluation used: the moving average when kept
  if set(params) == {"head"}:   # one layer (a neuron; linear or logistic regression): its weights are the answer
    results["weights"] = {k: np.asarray(mesh_lib.host(v)).tolist() for k, v in params["head"].items()}
  return results


# ----------------------------------------------------------------------------------------------------------------
# A sweep.
def run_sweep(config, sweep, workdir: str) -> dict:
  """`launch.py` for an experiment with get_sweep(): every group, every variant, then the table and plots. Resumes
  an unfinished sweep in `workdir` (same config and grid). Returns {'results' (per variant), 'rows', 'table'}."""
  configs, groups, variants, swept = _check(config, sweep)
  keys = (["group"] if groups != [""] else []) + swept
  with workdir_lib.claim(workdir, config, "summary.json", extra={"sweep": sweep}) as resumed:
    main = mesh_lib.is_main()
    plan, mesh, host_ds = _plan(config, configs, variants, sweep, workdir, resumed)
    print(mesh_lib.line(mesh), flush=True)
    placed = {}   # the plan's loads, placed: one per distinct data config (groups may change data.* or the task)
    for c, h in zip(configs, host_ds):
      if id(h) not in placed:
        placed[id(h)] = mesh_lib.load(c.data, mesh, seed=c.train.seed, host=h)
    datasets = [placed[id(h)] for h in host_ds]
    if main:
      workdir_lib.write_config(workdir, config, resumed, extra={"sweep": sweep}, mesh=mesh)
      os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
      writers.write_json(os.path.join(workdir, "checkpoints", PLAN), plan)
      print(f"sweep: {len(groups)} group(s) x {len(variants)} variants ({', '.join(swept) or 'seeds'} x "
            f"{sweep.seeds} seeds)", flush=True)
    results, panels = [], []
    for gi, (g, cfg, ds) in enumerate(zip(groups, configs, datasets)):
      if g:
        print(f"group {g}", flush=True)
      if main:
        model = models.get(cfg.model, num_classes=ds.outputs)
        print(summary.summary(model, ds.image_shape, flops=False, input_dtype=ds.train_x.dtype))
      for r in train_variants(cfg, variants, ds, swept, sweep.max_chunk, sweep.strategy, workdir=workdir,
                              group=(gi, g), chunk=plan[str(gi)], mesh=mesh, pad_to=plan["pad_to"], sweep=sweep):
        r["hparams"] = dict(r["hparams"], group=g) if g else r["hparams"]
        params = r.pop("params")
        if main and pictures.drawable(ds) and not r["failed"]:
          panels.append((writers.variant_name(r["hparams"], keys), models.get(
              cfg.model, num_classes=ds.outputs, **_traced(r["hparams"], swept)), {"params": params}, ds))
        results.append(r)
    rows = aggregate(results, keys, sweep.tolerance)
    if main:
      _pictures(workdir, panels)
    table = markdown_table(rows, keys, sweep.tolerance) + _search_lines(sweep, results, swept, workdir, main)
    if main:
      writers.write_sweep(workdir, results, rows, table, keys)
      print(table)
      print(f"results: {workdir}/summary.md (.csv, .json), variants.jsonl, *.png")
  return {"results": results, "rows": rows, "table": table}


def _search_lines(sweep, results: list[dict], swept, workdir: str, main: bool) -> str:
  """What a search adds under the table: halving's variant-epochs against the grid's; PBT's best variant, its
  hyperparameter schedule and ancestry (and pbt.png)."""
  if sweep.search == "grid":
    return ""
  events = results[0]["events"]
  epochs = max(r["curves"][-1]["epoch"] for r in results if r["curves"])
  if sweep.search == "halving":
    trained = sum(r["epochs_trained"] for r in results)
    return (f"\n\nSuccessive halving (rungs {tuple(sweep.rungs)}, eta {sweep.eta}): {trained} variant-epochs "
            f"trained, against {len(results) * epochs} for the grid; `epochs trained` is the rung each reached.")
  axes = search_lib.pbt_axes(sweep, swept)
  metric = "rmse" if any("val_rmse" in r["final"] for r in results) else "accuracy"
  values = [r["final"].get(f"val_{metric}", np.nan) for r in results]
  best = int(np.nanargmin(values) if metric == "rmse" else np.nanargmax(values))
  schedules = search_lib.hyperparameters_over_time([r["hparams"] for r in results], events, axes)
  line = search_lib.ancestry(best, events)
  path = search_lib.schedule_along(line, schedules)
  if main:
    try:
      print(f"picture: {search_lib.plot(schedules, line, axes, os.path.join(workdir, 'pbt.png'))}", flush=True)
    except ImportError:
      pass
  steps = " → ".join(f"step {s}: " + ", ".join(f"{a}={h[a]:.4g}" if isinstance(h[a], float) else f"{a}={h[a]}"
                                                for a in axes) for s, h in path)
  exploits = sum(e["event"] == "exploit" for e in events)
  return (f"\n\nPopulation-based training: {exploits} exploit events (lineage.jsonl). Best variant {best} (val "
          f"{metric} {values[best]:.4f}); its weights descend from variant {line[0][1]} through "
          f"{' → '.join(str(v) for _, v in line)}; the hyperparameters it trained with: {steps}.")


def _traced(hparams: dict, swept) -> dict:
  """A variant's swept model fields (dropout, init scale, activation), as its program's model takes them."""
  return {a.field: hparams[a.name] for a in config_lib.SWEEP_AXES if a.section == "model" and a.name in swept}


def _pictures(workdir: str, panels: list) -> None:
  """fit.png / surface.png / boundary.png (jcnn.inspect.pictures) for vector data of 1 or 2 inputs, also into
  TensorBoard (tb/pictures); nothing for images."""
  panels = [p for p in panels if pictures.drawable(p[3])]
  if not panels:
    return
  try:
    path = pictures.draw(panels, os.path.join(workdir, pictures.name_for(panels[0][3])))
  except ImportError:   # matplotlib (a dependency) missing: the run's results still land, as write_run's plots do
    return
  writers.tb_images(os.path.join(workdir, "tb", "pictures"), [path])
  print(f"picture: {path}", flush=True)


PLAN = "plan.json"   # in <workdir>/checkpoints: variants per program and the padding, kept for resuming


def _check(config, sweep):
  """The config, each group's config and the grid, checked before the workdir is touched: (configs, groups,
  variants, swept axes)."""
  config_lib.check_config(config)
  variants = variants_of(config, sweep)
  groups = list(sweep.groups) or [""]
  configs = [config_lib.apply_group(config, g) if g else config for g in groups]
  for c in configs:
    config_lib.check_config(c)
    for field in ("stop.metric", "stop.plateau_metric", "checkpoint.best"):
      section, key = field.split(".")
      if c[section][key]:
        raise ConfigError(f"config.{field}={c[section][key]!r}: a sweep trains all its variants for train.epochs "
                          f"(early stopping, plateaus and the best checkpoint are for single runs); set it to ''")
    for v in {json.dumps({**v, "seed": 0}, sort_keys=True): v for v in variants}.values():   # one per grid point
      config_lib.check_task(config_lib.variant_config(c, v))   # a swept recipe must fit the group's task and loss
  if not isinstance(sweep.max_chunk, int) or sweep.max_chunk < 0:
    raise ConfigError(f"sweep.max_chunk={sweep.max_chunk!r}: must be an integer >= 0 (0 = automatic)")
  if isinstance(sweep.tolerance, bool) or not isinstance(sweep.tolerance, (int, float)) or sweep.tolerance < 0:
    raise ConfigError(f"sweep.tolerance={sweep.tolerance!r}: must be a number >= 0 (0 = no steps-to column)")
  if sweep.strategy not in ("auto", "vmap", "map", "unroll"):
    raise ConfigError(f"sweep.strategy={sweep.strategy!r}: must be one of auto, vmap, map, unroll")
  search_lib.check(config, sweep, len(variants), swept_axes(sweep), groups)
  return configs, groups, variants, swept_axes(sweep)


def _plan(config, configs, variants, sweep, workdir: str, resumed: bool):
  """(plan, mesh, each group's dataset on the host): variants per program for each group (process 0's figure on
  every process, since their memory may differ) and the sweep's one mesh. Groups with the same data config and task
  share one dataset (loaded once). A new sweep takes its variant axis from the
  chunk size and pads its programs' variants to a multiple of it (plan 'pad_to'); a resumed one keeps that padding,
  so its checkpoints keep their shapes on any device count whose variant axis divides them."""
  path = os.path.join(workdir, "checkpoints", PLAN)
  plan = json.load(open(path)) if resumed and os.path.exists(path) else {}
  loaded, host_ds = {}, []
  for c in configs:
    key = json.dumps([c.data.to_dict(), c.train.task, c.train.seed], sort_keys=True, default=str)
    if key not in loaded:
      loaded[key] = data_lib.load(c.data, seed=c.train.seed, put=np.asarray, task=c.train.task)
    host_ds.append(loaded[key])
    if sweep.search != "grid" and host_ds[-1].val_x is None:
      raise ConfigError(f"sweep.search={sweep.search} ranks variants on the validation split, and "
                        f"{c.data.path or c.data.name} has none: set config.data.val_size (e.g. 5000)")
  for gi, (c, ds) in enumerate(zip(configs, host_ds)):
    jax.eval_shape(program_lib.single_program(c, ds).init)   # ShapeError, before any file, if a model cannot
    if str(gi) not in plan:
      k, per = variants_per_program(c, ds, len(variants), 0 if sweep.search != "grid" else sweep.max_chunk)
      if sweep.search != "grid" and k < len(variants):   # a search decides among all its variants in one program
        raise ConfigError(f"sweep.search={sweep.search} trains its {len(variants)} variants in one program, but only "
                          f"{k} fit in memory (~{per / 2**20:.0f} MiB each): sweep fewer values or seeds, or lower "
                          f"config.train.batch_size")
      if sweep.search == "grid" and sweep.strategy in ("auto", "map") and jax.device_count() == 1:
        cap = cpu_chunk.variants_per_cpu_program(c.train.batch_size)
        if cap and cap < k:
          print(f"sweep: at most {cap} variants per CPU program (what kept pace with separate runs on this machine: "
                f"jcnn.sweep.cpu_chunk; JCNN_VARIANT_CHUNK_CPU=N sets it)", flush=True)
          k = cap
      plan[str(gi)] = mesh_lib.from_process_0(len(variants) if sweep.search != "grid" else k)
  if "pad_to" in plan:
    rows = [len(padded(variants[s:s + plan[str(gi)]], plan["pad_to"])) for gi in range(len(configs))
            for s in range(0, len(variants), plan[str(gi)])]
    return plan, mesh_lib.make(config, n_variants=min(rows), divide=int(np.gcd.reduce(rows))), host_ds
  mesh = mesh_lib.make(config, n_variants=min(plan[str(gi)] for gi in range(len(configs))))
  return plan | {"pad_to": int(mesh.shape["variant"])}, mesh, host_ds
