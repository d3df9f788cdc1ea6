"""Streaming with grain: a streamed run reads the in-memory run's order, so it ends bit-identical to it (single run and
sweep), resumes bit-identically after a stop mid-epoch, and stops with one line, its checkpoint intact, when a worker
process dies. The reference is always the in-memory run of the same config and seed."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from test_checkpoint import interrupt_at, rows, same_tree, tiny_config

from experiments import ablation_dropout
from jcnn import data
from jcnn.data import dataset as dataset_lib
from jcnn.errors import DataError, Interrupted
from jcnn.experiment import run_sweep, train_and_evaluate
from jcnn.sweep import lift
from jcnn.train import checkpoint, program as program_lib

strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]


def streamed(c, workers=0):
  c.data.stream, c.data.workers = "on", workers
  return c


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("mem") / "run")
  c = tiny_config()
  c.data.stream = "off"
  return workdir, train_and_evaluate(c, workdir)


def test_streamed_run_stopped_mid_epoch_resumes_and_equals_the_in_memory_run(in_memory, tmp_path, monkeypatch):
  ref_dir, ref = in_memory
  workdir = str(tmp_path / "run")
  with monkeypatch.context() as m:
    interrupt_at(m, program_lib, "single_program", at=8)    # step 8: inside epoch 2
    with pytest.raises(Interrupted):
      train_and_evaluate(streamed(tiny_config()), workdir)
  assert checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == 8
  out = train_and_evaluate(streamed(tiny_config()), workdir)
  assert same_tree(out["state"], ref["state"])               # parameters, optimizer state, step: every bit
  assert strip(out["history"]) == strip(ref["history"])
  assert rows(os.path.join(workdir, "metrics.jsonl")) == rows(os.path.join(ref_dir, "metrics.jsonl"))


class Dying:
  """An array whose read of exactly the rows `batch` kills the process when it runs outside process `parent` (in a
  grain worker): a worker dying mid-epoch."""

  def __init__(self, x, batch, parent):
    self.x, self.batch, self.parent = x, sorted(int(b) for b in batch), parent
    self.shape, self.dtype = x.shape, x.dtype

  def __len__(self):
    return len(self.x)

  def __getitem__(self, i):
    if os.getpid() != self.parent and sorted(np.atleast_1d(np.arange(len(self.x))[i]).tolist()) == self.batch:
      os._exit(1)
    return self.x[i]


def test_a_dying_worker_stops_the_run_with_one_line_and_keeps_its_checkpoint(in_memory, tmp_path, monkeypatch):
  ref_dir, ref = in_memory
  workdir = str(tmp_path / "run")
  real = dataset_lib.open_source
  c = tiny_config()
  c.data.stream = "on"
  first = data.load(c.data, seed=c.train.seed, put=np.asarray)
  order = np.asarray(program_lib.single_program(c, first).batches(2))     # epoch 2's order: die at its 3rd step
  batch = first.train_x.index[order[2]]                                   # the source's rows of that batch

  def dying(cfg):
    splits, k, names, features = real(cfg)
    x, y = splits["train"]
    splits["train"] = (Dying(x, batch, os.getpid()), y)
    return splits, k, names, features

  with monkeypatch.context() as m:
    m.setattr(dataset_lib, "open_source", dying)
    with pytest.raises(DataError, match="a data-loading worker failed.*checkpoint is kept.*run the same command") as e:
      train_and_evaluate(streamed(tiny_config(), workers=1), workdir)
  assert "\n" not in str(e.value)
  assert checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == 5   # epoch 1's, intact
  out = train_and_evaluate(streamed(tiny_config()), workdir)                # healthy again (read in process): resumes
  assert same_tree(out["state"], ref["state"]) and strip(out["history"]) == strip(ref["history"])


def _sweep(order_seed=-1):
  s = ablation_dropout.get_sweep()
  s.seeds, s.dropout_rate = 2, (0.0, 0.5)
  c = tiny_config(epochs=1)
  c.data.order_seed = order_seed
  return c, s


@pytest.mark.parametrize("order_seed", [-1, 3])
def test_streamed_sweep_equals_the_in_memory_sweep(tmp_path, monkeypatch, order_seed):
  """Each variant reads its own order ([V * B] rows a step), or with data.order_seed one shared order ([B] rows)."""
  c, s = _sweep(order_seed)
  c.data.stream = "off"
  ref = run_sweep(c, s, str(tmp_path / "mem"))
  shapes = []
  real = lift.program

  def spy(*a, **k):
    p = real(*a, **k)
    feed = p.feed
    return p._replace(feed=lambda e, f: ((shapes.append(item[0].shape[0]), item)[1] for item in feed(e, f)))
  monkeypatch.setattr(lift, "program", spy)
  c, s = _sweep(order_seed)
  out = run_sweep(streamed(c), s, str(tmp_path / "stream"))
  assert set(shapes) == {16 if order_seed >= 0 else 4 * 16}          # B = 16, V = 4
  for a, b in zip(out["results"], ref["results"]):
    assert a["hparams"] == b["hparams"] and strip(a["curves"]) == strip(b["curves"])
  assert out["rows"] == ref["rows"]
  if order_seed >= 0:   # the shared order changes only the order: seeds still differ in initialisation and dropout
    assert len({str(r["final"]["train_loss"]) for r in out["results"]}) == 4


def test_a_folder_from_the_command_line_in_memory_streamed_then_predict(tmp_path):
  """The new user's path: write a dataset as PNG folders, train on it in memory and streamed (same numbers), and
  predict on a folder of PNGs with the class names of the training folders."""
  out = str(tmp_path / "pngs")
  run = lambda *a: subprocess.run([sys.executable, *a], cwd=ROOT, capture_output=True, text=True, timeout=600)
  p = run("-m", "jcnn.data", "to-folder", "--dataset=synthetic", f"--out={out}", "--train_limit=1024",
          "--test_limit=64")
  assert p.returncode == 0, p.stderr[-2000:]
  common = ["launch.py", "--experiment=fashion_convnet", "--config.data.name=folder", f"--config.data.path={out}",
            "--config.train.epochs=3", "--config.train.batch_size=32"]
  results = {}
  for mode in ("off", "on"):
    p = run(*common, f"--workdir={tmp_path / mode}", f"--config.data.stream={mode}")
    assert p.returncode == 0, p.stderr[-3000:]
    results[mode] = rows(str(tmp_path / mode / "metrics.jsonl"))
  assert results["on"] == results["off"] and results["on"][-1]["test_accuracy"] > 0.95   # 1.0 measured
  p = run("launch.py", "--mode=predict", f"--workdir={tmp_path / 'on'}", f"--images={out}/test/3")
  assert p.returncode == 0, p.stderr[-2000:]
  lines = p.stdout.strip().splitlines()
  assert len(lines) == len(os.listdir(f"{out}/test/3")) and all(": " in line and " (" in line for line in lines)
  named = [line.split(": ")[1].split(" (")[0] for line in lines]
  assert set(named) == {"3"}   # the class folder's name, for every image (the run's test accuracy is > 0.95)
