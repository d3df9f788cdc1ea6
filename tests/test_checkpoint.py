"""Checkpoints, resume, signals, divergence and TensorBoard: the one loop's seams.

Resume is checked against an uninterrupted run (bit-identical parameters and metrics on CPU), a save killed with
SIGKILL against the previous checkpoint, and the TensorBoard files with TensorBoard's own reader.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, small_sweep_config

from experiments import ablation_dropout
from jcnn.errors import ConfigError, Diverged, Interrupted
from jcnn.experiment import run_sweep, train_and_evaluate
from jcnn.sweep import lift
from jcnn.train import checkpoint, program as program_lib, workdir as workdir_lib


def tiny_config(epochs=3):
  c = small_sweep_config(epochs)   # 80 training images: 5 steps of 16 per epoch
  c.model.dropout_rate = 0.25
  return c


def interrupt_at(monkeypatch, module, name, at, signum=signal.SIGINT):
  """Wraps module.name (a program factory) so that the `at`-th step call, counted over all the programs it makes,
  sends `signum` to this process."""
  real = getattr(module, name)
  calls = [0]

  def factory(*a, **k):
    p = real(*a, **k)

    def step(rs, b):
      calls[0] += 1
      if calls[0] == at:
        os.kill(os.getpid(), signum)
      return p.step(rs, b)
    return p._replace(step=step)
  monkeypatch.setattr(module, name, factory)


def same_tree(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def rows(path, drop=("epoch_seconds",)):
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in f]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ref") / "run")
  return workdir, train_and_evaluate(tiny_config(), workdir)


def test_single_run_resumes_bit_identical(uninterrupted, tmp_path, monkeypatch):
  ref_dir, ref = uninterrupted
  workdir = str(tmp_path / "run")
  with monkeypatch.context() as m:
    interrupt_at(m, program_lib, "single_program", at=8)    # step 8: inside epoch 2
    with pytest.raises(Interrupted) as e:
      train_and_evaluate(tiny_config(), workdir)
  assert e.value.step == 8 and e.value.exit_code == 130
  assert checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == 8
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  out = train_and_evaluate(tiny_config(), workdir)       # the same call again: resumes at step 8
  assert same_tree(out["state"], ref["state"])
  strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]
  assert strip(out["history"]) == strip(ref["history"])
  assert rows(os.path.join(workdir, "metrics.jsonl")) == rows(os.path.join(ref_dir, "metrics.jsonl"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert len(json.load(f)["resumed"]) == 1
  with pytest.raises(ConfigError, match="already holds a finished run"):
    train_and_evaluate(tiny_config(), workdir)
  trained = checkpoint.load_trained(workdir)          # what inference and inspection load
  assert trained["step"] == 15 and same_tree(trained["variables"]["params"], ref["state"].params)
  assert trained["meta"]["data"] == {"num_classes": 10, "input_shape": [20, 20, 1], "input_dtype": "float32",
                                     "preprocess": {"method": "scale", "scale": 255.0}, "classes": [],
                                     "task": "classify", "outputs": 10, "target": None, "features": []}


def test_sweep_resumes_bit_identical(tmp_path, monkeypatch):
  s = ablation_dropout.get_sweep()
  s.seeds = 2
  s.dropout_rate = (0.0, 0.5)
  s.max_chunk = 2            # two programs: the interruption lands in the second
  ref = run_sweep(tiny_config(), s, str(tmp_path / "ref"))
  workdir = str(tmp_path / "sweep")
  with monkeypatch.context() as m:
    interrupt_at(m, lift, "program", at=15 + 12, signum=signal.SIGTERM)   # the second program's step 12
    with pytest.raises(Interrupted) as e:
      run_sweep(tiny_config(), s, workdir)
  assert e.value.exit_code == 143 and e.value.step == 12
  assert checkpoint.Checkpoints(os.path.join(workdir, "checkpoints", "0-0")).latest_step() == 15   # finished
  meta = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints", "0-2")).meta()
  assert meta["step"] == 12 and [v["hparams"]["dropout_rate"] for v in meta["variants"]] == [0.5, 0.5]
  assert [v["hparams"]["seed"] for v in meta["variants"]] == [0, 1]
  assert [v["failed_at"] for v in meta["variants"]] == [-1, -1] and len(meta["history"]) == 2
  out = run_sweep(tiny_config(), s, workdir)
  for a, b in zip(out["results"], ref["results"]):
    assert a["hparams"] == b["hparams"]
    assert [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in a["curves"]] == \
        [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in b["curves"]]
  assert out["rows"] == ref["rows"]
  trained = checkpoint.load_trained(workdir, variant=3)
  assert trained["hparams"] == out["results"][3]["hparams"] and trained["config"].model.dropout_rate == 0.5
  assert trained["variables"]["params"]["head"]["kernel"].shape == (16, 10)
  with pytest.raises(checkpoint.CheckpointError, match="has no variant 4 .*pick one of 0-3"):
    checkpoint.load_trained(workdir, variant=4)
  assert rows(os.path.join(workdir, "metrics.jsonl")) == rows(str(tmp_path / "ref" / "metrics.jsonl"))


def _ds():
  from jcnn import data as data_lib  # pylint: disable=g-import-not-at-top
  return data_lib.load(tiny_config().data)


def training(proc, workdir: str) -> str:
  """Waits until the launch.py process `proc` has written its first metrics row (it is in the loop); returns the
  path of its metrics.jsonl."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 120
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0) and time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[1]
    time.sleep(0.05)
  return metrics


def _stopped_line(err: str, name: str) -> int:
  """The one stderr line of a run stopped by signal `name`; returns the step it names."""
  lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "I0000", "W0000"))]
  assert len(lines) == 1 and lines[0].startswith(f"stopped: {name} at step ") and "resume with: python launch.py" in \
      lines[0], err
  return int(lines[0].split("at step ")[1].split(":")[0])


def test_sigterm_and_sigint_from_outside_save_and_the_same_command_resumes(tmp_path):
  """The real thing: launch.py in a subprocess, SIGTERM from here: one line on stderr, exit 143; the same command
  resumes from that checkpoint, and SIGINT (Ctrl-C) to it: one line, exit 130, a checkpoint at a later step; then it
  resumes again and finishes."""
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=fashion_convnet", "--config.data.name=synthetic",
         "--config.data.synthetic_size=(1024,64)", "--config.train.epochs=1000", "--config.train.log_every=1",
         "--config.train.batch_size=16", f"--workdir={workdir}"]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
  training(proc, workdir)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  assert f"--workdir={workdir}" in err
  step = _stopped_line(err, "SIGTERM")
  assert checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == step
  # The same command again resumes; Ctrl-C once it has taken a step (its stdout says so) stops it the same way.
  log = tmp_path / "second.out"
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    deadline = time.time() + 120
    while "compiled the train step" not in log.read_text() and time.time() < deadline:
      assert proc.poll() is None, proc.communicate()[1]
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert f"resumed from the checkpoint at step {step}" in log.read_text()
  later = _stopped_line(err, "SIGINT")
  assert later > step and checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == later
  # Resume, training only to the end of the current epoch (lowering train.epochs is a resumable change).
  epochs = later // 64 + 1
  done = subprocess.run([a if not a.startswith("--config.train.epochs") else f"--config.train.epochs={epochs}"
                         for a in cmd], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr
  assert f"resumed from the checkpoint at step {later}" in done.stdout
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["final"]["step"] == epochs * 64


def _files(folder: str) -> dict:
  return {os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.path.getmtime(os.path.join(d, f)))
          for d, _, fs in os.walk(folder) for f in fs}


def test_the_workdir_lock_dies_with_its_process(tmp_path):
  """A process holding a workdir, then killed with SIGKILL (no clean-up runs): the lock is gone with it."""
  workdir = str(tmp_path / "run")
  child = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                            "from jcnn.train import workdir; workdir.hold(sys.argv[2]); print('held', flush=True); "
                            "time.sleep(120)", ROOT, workdir], stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == "held"
    assert workdir_lib.holder(workdir).startswith(f"process {child.pid} on ")
    with pytest.raises(ConfigError, match=f"--workdir {workdir} is in use by process {child.pid} on "):
      workdir_lib.hold(workdir)
  finally:
    child.kill()
    child.wait()
  assert workdir_lib.holder(workdir) is None
  workdir_lib.hold(workdir).release()


def test_a_run_that_cannot_start_leaves_no_folder_behind(tmp_path):
  workdir = str(tmp_path / "new" / "deeper" / "run")
  with pytest.raises(RuntimeError, match="cannot start"):
    with workdir_lib.claim(workdir, tiny_config(), "results.json") as resumed:
      assert not resumed and os.listdir(workdir) == [workdir_lib.LOCK]
      raise RuntimeError("cannot start")
  assert os.listdir(tmp_path) == []                     # the three folders the lock made are gone again


@pytest.mark.slow
def test_a_second_run_in_a_held_workdir_is_refused_and_the_first_finishes_as_if_alone(tmp_path):
  """Two launch.py processes on one --workdir: the second is refused at once, naming the first; the first, frozen
  meanwhile with SIGSTOP so the second surely meets it mid-training, then finishes exactly as a lone run does."""
  args = ["--experiment=fashion_convnet", "--config.data.name=synthetic", "--config.data.synthetic_size=(256,64)",
          "--config.train.epochs=2", "--config.train.batch_size=16", "--config.train.log_every=1"]
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), *args, f"--workdir={workdir}"]
  first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
  metrics = training(first, workdir)
  first.send_signal(signal.SIGSTOP)
  try:
    before = _files(workdir)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    after = _files(workdir)
  finally:
    first.send_signal(signal.SIGCONT)
  lines = [line for line in second.stderr.splitlines() if line.strip() and not line.startswith(("WARNING", "I0000",
                                                                                               "W0000"))]
  assert second.returncode == 2 and len(lines) == 1, second.stderr
  assert lines[0].startswith(f"error: --workdir {workdir} is in use by process {first.pid} on ") and \
      "launch.py --experiment=fashion_convnet" in lines[0] and lines[0].endswith("or pass another --workdir"), lines
  assert after == before                                   # the refused run wrote nothing and removed nothing
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err
  # The same run alone, in this process: the same epoch rows and parameters.
  from experiments import fashion_convnet  # pylint: disable=g-import-not-at-top
  c = fashion_convnet.get_config()
  c.data.name, c.data.synthetic_size = "synthetic", (256, 64)
  c.train.epochs, c.train.batch_size, c.train.log_every = 2, 16, 1
  alone = train_and_evaluate(c, str(tmp_path / "alone"))
  assert rows(metrics) == rows(os.path.join(tmp_path, "alone", "metrics.jsonl"))
  trained = checkpoint.load_trained(workdir)
  assert trained["step"] == 32 and same_tree(trained["variables"]["params"], alone["state"].params)


def test_a_save_killed_with_sigkill_leaves_the_previous_checkpoint(tmp_path):
  """A ~256 MB state: step 1 is saved whole, then the process is killed -9 while step 2 is being written."""
  script = f"""
import sys; sys.path.insert(0, {ROOT!r})
import jax.numpy as jnp
from jcnn.train import checkpoint
ck = checkpoint.Checkpoints({str(tmp_path / 'ck')!r}, keep=3)
tree = {{"w": jnp.arange(64 * 2**20, dtype=jnp.int32), "step": jnp.int32(1)}}
ck.save(1, tree, {{"history": []}}); ck.wait()
print("saved 1", flush=True)
ck.save(2, {{"w": tree["w"] + 1, "step": jnp.int32(2)}}, {{"history": []}}); ck.wait()
print("saved 2", flush=True)
"""
  proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "saved 1"
  ck_dir = tmp_path / "ck"
  deadline = time.time() + 60
  while not any(p.startswith("2.") for p in os.listdir(ck_dir)) and time.time() < deadline:
    time.sleep(0.001)        # step 2's temporary folder exists: the save is under way
  proc.kill()
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert "2" not in os.listdir(ck_dir), "the save finished before the kill: make the tree larger"
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ck = checkpoint.Checkpoints(str(ck_dir))      # cleans up the temporary folder
  assert ck.latest_step() == 1
  state, meta = ck.restore({"w": jax.ShapeDtypeStruct((64 * 2**20,), jnp.int32),
                            "step": jax.ShapeDtypeStruct((), jnp.int32)})
  assert meta["step"] == 1 and int(state["step"]) == 1
  np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(64 * 2**20, dtype=np.int32))   # step 1's, whole
  assert not any(p.startswith("2.") for p in os.listdir(ck_dir))


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the fix, nothing already written lost.
def _finished_copy(uninterrupted, tmp_path) -> str:
  """A copy of the reference run made unfinished again (results.json removed)."""
  src, _ = uninterrupted
  dst = str(tmp_path / "copy")
  shutil.copytree(src, dst)
  os.remove(os.path.join(dst, "results.json"))
  return dst


def test_missing_checkpoint_folder(uninterrupted, tmp_path):
  workdir = _finished_copy(uninterrupted, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  before = open(os.path.join(workdir, "metrics.jsonl")).read()
  with pytest.raises(ConfigError, match=r"holds a run \(config.json\) but no checkpoint to resume from .*new --workdir"):
    train_and_evaluate(tiny_config(), workdir)
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == before


def _truncate_largest_file(step_dir: str) -> str:
  """Cuts the largest file under a step's folder to half its size (a disk that filled, a copy that broke off)."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  return victim


def test_an_unreadable_newest_checkpoint_is_skipped_and_the_run_resumes_from_the_one_before(uninterrupted, tmp_path,
                                                                                           capsys):
  ref_dir, ref = uninterrupted
  workdir = _finished_copy(uninterrupted, tmp_path)            # checkpoint.keep = 2: steps 10 and 15 are on disk
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(d for d in os.listdir(ckpts) if d.isdigit()) == ["10", "15"]
  _truncate_largest_file(os.path.join(ckpts, "15"))
  out = train_and_evaluate(tiny_config(), workdir)
  printed = capsys.readouterr().out.splitlines()
  skipped = [line for line in printed if "cannot be read" in line]
  assert len(skipped) == 1 and f"checkpoint {ckpts}/15 cannot be read (" in skipped[0] and \
      "skipped (kept as 15.unreadable)" in skipped[0], skipped
  assert any(line.startswith("resumed from the checkpoint at step 10 ") for line in printed)
  assert same_tree(out["state"], ref["state"])                 # steps 11-15 again: exactly the uninterrupted run
  assert rows(os.path.join(workdir, "metrics.jsonl")) == rows(os.path.join(ref_dir, "metrics.jsonl"))
  assert os.path.isdir(os.path.join(ckpts, "15.unreadable"))   # kept for a look, out of orbax's sight
  assert checkpoint.Checkpoints(ckpts).latest_step() == 15     # saved anew by the resumed run
  # TensorBoard keeps the rows up to step 10 too: the event files hold steps 12, 14 and 15 twice (the first run's, and
  # the resumed run's in a second file), yet TensorBoard's reader shows each step once, with the resumed run's values,
  # exactly the uninterrupted run's curves.
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  files = sorted(os.path.join(workdir, "tb", f) for f in os.listdir(os.path.join(workdir, "tb")))
  assert len(files) == 2
  raw = [e.step for f in files for e in event_file_loader.EventFileLoader(f).Load()
         if any(v.tag == "train/loss" for v in e.summary.value)]
  assert raw == [2, 4, 6, 8, 10, 12, 14] + [12, 14]
  got, want = tb_scalars(workdir), tb_scalars(ref_dir)
  assert {"train/loss", "train/accuracy", "val/loss", "test/accuracy", "epoch/train_loss"} <= set(got)
  assert got == want and [s for s, _ in got["train/loss"]] == [2, 4, 6, 8, 10, 12, 14]
  assert [s for s, _ in got["test/accuracy"]] == [5, 10, 15]


def test_when_no_checkpoint_can_be_read_the_error_says_so(uninterrupted, tmp_path):
  workdir = _finished_copy(uninterrupted, tmp_path)
  for step in ("10", "15"):
    _truncate_largest_file(os.path.join(workdir, "checkpoints", step))
  with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/10 cannot be read \(.*\): truncated or (damaged|not jcnn's); "
                                                       r"no earlier checkpoint can be read either: pass a new --workdir"):
    train_and_evaluate(tiny_config(), workdir)


def test_not_a_jcnn_checkpoint(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  workdir_lib.prepare_workdir(workdir, tiny_config(), "results.json")
  workdir_lib.write_config(workdir, tiny_config(), False)
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  mngr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.zeros(3)}),
                                       meta=ocp.args.JsonSave({"framework": "other"})))
  mngr.wait_until_finished()
  with pytest.raises(checkpoint.CheckpointError, match="(not a jcnn checkpoint|different model)"):
    train_and_evaluate(tiny_config(), workdir)


def test_checkpoint_of_another_model_names_the_parameter(uninterrupted, tmp_path):
  src, _ = uninterrupted
  workdir = str(tmp_path / "wide")
  wide = tiny_config()
  wide.model.dense = 32
  workdir_lib.prepare_workdir(workdir, wide, "results.json")
  workdir_lib.write_config(workdir, wide, False)
  shutil.copytree(os.path.join(src, "checkpoints"), os.path.join(workdir, "checkpoints"))
  with pytest.raises(checkpoint.CheckpointError, match=r"parameter dense1/bias has shape \(16,\) in the checkpoint, "
                                                       r"\(32,\) here"):
    train_and_evaluate(wide, workdir)


def test_resuming_with_another_config_names_the_keys(uninterrupted, tmp_path):
  workdir = _finished_copy(uninterrupted, tmp_path)
  c = tiny_config()
  c.train.batch_size = 8
  c.optim.learning_rate = 0.01
  with pytest.raises(ConfigError, match=r"another config \(optim.learning_rate: 0.001 -> 0.01, "
                                        r"train.batch_size: 16 -> 8\)"):
    train_and_evaluate(c, workdir)
  c = tiny_config(epochs=4)          # training longer is allowed: it resumes from the end of epoch 3
  out = train_and_evaluate(c, workdir)
  assert [r["epoch"] for r in out["history"]] == [1, 2, 3, 4] and out["history"][-1]["step"] == 20


def test_disk_full_while_saving_keeps_the_previous_checkpoint(uninterrupted, tmp_path, monkeypatch):
  """Also: writers.tensorboard=False, for the run and its resume, writes no event file; metrics.jsonl still gets every
  row, the uninterrupted run's."""
  workdir = str(tmp_path / "run")
  c = tiny_config()
  c.writers.tensorboard = False
  real = checkpoint.Checkpoints.save

  def save(self, step, state, meta):
    if step == 10:
      self._mngr.save = lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
    return real(self, step, state, meta)
  monkeypatch.setattr(checkpoint.Checkpoints, "save", save)
  with pytest.raises(checkpoint.CheckpointError, match=r"no space left on the device while saving checkpoint step 10 "
                                                       r"in .*; the previous checkpoint \(step 5\) is kept; free some "
                                                       r"space and run the same command to resume"):
    train_and_evaluate(c, workdir)
  monkeypatch.undo()
  assert checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).latest_step() == 5
  out = train_and_evaluate(c, workdir)     # space freed: the same command resumes and finishes
  assert out["history"][-1]["step"] == 15
  assert not os.path.exists(os.path.join(workdir, "tb"))
  assert not [f for _, _, fs in os.walk(workdir) for f in fs if "tfevents" in f]
  assert rows(os.path.join(workdir, "metrics.jsonl")) == rows(os.path.join(uninterrupted[0], "metrics.jsonl"))


# ----------------------------------------------------------------------------------------------------------------
# Divergence: one policy in the one loop.
def test_diverging_single_run_stops_naming_the_step_and_keeps_its_checkpoint(tmp_path):
  c = tiny_config()
  c.optim.name, c.optim.learning_rate = "sgd", 1e12
  c.checkpoint.every_steps = 1
  workdir = str(tmp_path / "run")
  with pytest.raises(Diverged, match=r"became NaN/Inf at step (\d+); its last good checkpoint \(step (\d+)\) is kept"
                     ) as e:
    train_and_evaluate(c, workdir)
  bad_step = int(str(e.value).split("at step ")[1].split(";")[0])
  assert e.value.exit_code == 3 and not os.path.exists(os.path.join(workdir, "results.json"))
  ck = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"))
  assert ck.latest_step() <= bad_step
  state = ck.restore(jax.eval_shape(program_lib.single_program(c, _ds()).init))[0]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.train.params))


def test_checkpoint_every_steps_and_keep(tmp_path):
  c = tiny_config(epochs=2)
  c.checkpoint.every_steps = 3
  c.checkpoint.keep = 3
  workdir = str(tmp_path / "run")
  train_and_evaluate(c, workdir)
  # Saved at 0, 3, 5 (epoch end), 6, 9, 10 (end): the newest three are kept.
  assert sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit()) == [6, 9, 10]


# ----------------------------------------------------------------------------------------------------------------
# TensorBoard, read back with TensorBoard's own reader.
def tb_scalars(workdir) -> dict:
  """{tag: [(step, value)]} as TensorBoard shows the run in workdir/tb: its EventAccumulator, which applies the purge
  events a resumed writer leaves (the steps after the checkpoint are dropped from the earlier files)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tb"))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_match_metrics_jsonl(uninterrupted):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir, _ = uninterrupted
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tb"))
  acc.Reload()
  assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "test/loss", "test/accuracy"} <= set(
      acc.Tags()["scalars"])
  epochs = [r for r in rows(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "epoch"]
  trains = [r for r in rows(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"]
  assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("test/accuracy")] == \
      [(r["step"], r["test_accuracy"]) for r in epochs]
  assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("train/loss")] == \
      [(r["step"], r["loss"]) for r in trains]
  assert [r["step"] for r in trains] == [2, 4, 6, 8, 10, 12, 14]
