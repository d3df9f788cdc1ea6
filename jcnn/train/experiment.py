"""A single run from a config: check config -> workdir -> mesh -> data -> program -> run -> write.

jcnn.sweep.experiment.run_sweep is the same sequence with a variant axis.
"""
from __future__ import annotations

import os

import jax

from jcnn import config as config_lib, models
from jcnn.inspect import summary
from jcnn.parallel import mesh as mesh_lib
from jcnn.train import checkpoint, loop, program as program_lib, workdir as workdir_lib, writers


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config.model on config.data in `workdir`, resuming from its newest checkpoint if it holds an unfinished
  run of the same config. Writes config.json, metrics.jsonl, tb/, checkpoints/, results.json and curves.png (with
  several processes: process 0 writes, all of them checkpoint). Returns {'results', 'state', 'history'}."""
  config_lib.check_config(config)
  mesh = mesh_lib.make(config)
  with workdir_lib.claim(workdir, config, "results.json") as resumed:   # refused, new or resumed; held until the end
    main = mesh_lib.is_main()
    print(mesh_lib.line(mesh), flush=True)
    ds = mesh_lib.load(config.data, mesh, seed=config.train.seed)
    program = program_lib.single_program(config, ds, mesh)
    jax.eval_shape(program.init)   # a model that cannot take the data's shape says so (ShapeError) before any file
    if main:
      model = models.get(config.model, num_classes=ds.num_classes)
      print(summary.summary(model, ds.image_shape, input_dtype=ds.train_x.dtype))
      workdir_lib.write_config(workdir, config, resumed, mesh=mesh)
    out = _run(program, ds, config, workdir, main)
    results = _results(config, ds, out, mesh)
    if main:
      writers.write_run(workdir, results)
      print(f"results: {os.path.join(workdir, 'results.json')}")
  return {"results": results, "state": out["state"], "history": out["history"]}


def _run(program, ds, config, workdir: str, main: bool) -> dict:
  """loop.run with the workdir's checkpoints and writers, closed however the loop ends."""
  ckpt = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.checkpoint.keep)
  writer = writers.Writer(workdir if main else None, tensorboard=config.writers.tensorboard)
  try:
    return loop.run(program, ds, config, ckpt=ckpt, writer=writer)
  finally:
    writer.close()
    ckpt.close()   # a save in flight lands (also when the run stopped)


def _results(config, ds, out: dict, mesh) -> dict:
  """results.json: the final epoch row, parameters, compile and wall time, training throughput, the mesh."""
  history = out["history"]
  steps_per_epoch = len(ds.train_y) // config.train.batch_size
  timed = [h for h in history if "epoch_seconds" in h]
  train_s = sum(h["epoch_seconds"] for h in timed)
  return {"experiment": config.name, "model": config.model.name, "dataset": config.data.name,
          "params": summary.count_params(out["state"].params), "epochs": config.train.epochs,
          "final": history[-1], "compile_seconds": out["compile_seconds"], "wall_seconds": out["seconds"],
          "train_images_per_second": steps_per_epoch * config.train.batch_size * len(timed) / max(train_s, 1e-9),
          "mesh": mesh_lib.describe(mesh)}
