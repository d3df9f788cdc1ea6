"""Several devices and hosts: `python launch.py` on 1 device, on 4 forced CPU devices, and as 2 processes of 2 devices
on 127.0.0.1 (gloo collectives), each in a subprocess so the other tests keep one device.

The references are the same runs on one device in one process (the path every other test checks against
hand-computed values and a plain reference loop). Tolerance: 1e-5 absolute on parameters after 8 SGD-momentum steps
(4 per epoch).
The sharded programs sum the same float32 numbers in another order (a batch's gradient as a cross-device all-reduce
of per-device sums, BatchNorm's statistics likewise), so they agree to float rounding, not bit for bit: measured
1e-8 to 1e-7 here. Longer runs drift apart: once a rounding-level difference meets a discrete event (a ReLU or
max-pool tie), training amplifies it. A looser bound would hide a real error (a per-device BatchNorm mean, a variant trained on another
variant's batches: 1e-3 to 1e-1 after these steps); a tighter one would test float summation order.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
TIMEOUT = 180   # seconds per launch (a two-process run here takes ~35 s on 2 busy cores)

BASE = ["--config.data.name=synthetic", "--config.data.synthetic_size=(128,128)", "--config.train.batch_size=32",
        "--config.optim.name=momentum", "--config.optim.learning_rate=0.01", "--config.writers.tensorboard=False",
        "--config.train.epochs=2"]
SINGLE = ["--experiment=fashion_convnet", *BASE]
SWEEP = ["--experiment=ablation_lr", *BASE, "--config.data.train_limit=0", "--sweep.learning_rate=(0.005,0.01)",
         "--sweep.seeds=3"]   # 6 variants: on 4 devices, padded to 8


def launch(args, workdir, devices=1, extra_env=None, timeout=TIMEOUT, check=True):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JCNN_COMPILATION_CACHE="0",
             **(extra_env or {}))
  proc = subprocess.run([sys.executable, "launch.py", *args, f"--workdir={workdir}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return proc


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_processes(args, workdir, n=2, devices=2, timeout=TIMEOUT, ids=None, counts=None):
  """n processes of launch.py on 127.0.0.1 (ids / counts override what each one is told)."""
  port = free_port()
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JCNN_COMPILATION_CACHE="0")
  procs = [subprocess.Popen([sys.executable, "launch.py", *args, f"--workdir={workdir}",
                             f"--coordinator_address=127.0.0.1:{port}",
                             f"--num_processes={counts[i] if counts else n}",
                             f"--process_id={ids[i] if ids else i}", "--distributed_timeout=60"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(len(ids) if ids else n)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      outs.append((p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


def state(workdir, program=None):
  """The newest checkpoint's TrainState (as dicts) of a run, or of a sweep's first program."""
  sys.path.insert(0, ROOT)
  from jcnn.train import checkpoint  # pylint: disable=g-import-not-at-top
  d = os.path.join(workdir, "checkpoints")
  if program is None:
    subs = sorted(x for x in os.listdir(d) if "-" in x)
    d = os.path.join(d, subs[0]) if subs else d
  ck = checkpoint.Checkpoints(d)
  return ck.restore_untyped(ck.latest_step())["state"]["train"]


def max_diff(a, b, rows=None) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  cut = (lambda x: np.asarray(x)[:rows]) if rows else np.asarray
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(cut(x) - cut(y)))), a, b)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs made once for the module; each test asks for the ones it compares."""
  root = tmp_path_factory.mktemp("mesh")
  made = {}

  def get(name):
    if name not in made:
      w = str(root / name)
      kind, devices = name.rsplit("_", 1)
      args = {"single": SINGLE, "sweep": SWEEP, "stream": [*SINGLE, "--config.data.stream=on"],
              "bn": [*SINGLE, "--config.model.name=resnet_tiny", "--config.train.epochs=1"],
              "pbt": [*SWEEP, "--config.data.val_size=32", "--sweep.search=pbt", "--sweep.pbt_interval=2"]}[kind]
      if devices == "2x2":
        outs = launch_processes(args, w)
        assert all(rc == 0 for rc, _, _ in outs), [o[1][-1500:] + o[2][-1500:] for o in outs]
        made[name] = (w, outs)
      else:
        made[name] = (w, launch(args, w, int(devices)))
    return made[name]
  return get


def test_mesh_line_and_record(runs):
  w, proc = runs("single_4")
  assert "mesh: variant=1 x data=4 over 4 cpu device(s) in 1 process(es)" in proc.stdout
  rec = json.load(open(os.path.join(w, "config.json")))["record"]["mesh"]
  assert rec == {"axes": {"variant": 1, "data": 4}, "devices": 4, "processes": 1, "platform": "cpu"}
  w, proc = runs("sweep_4")
  assert "mesh: variant=4 x data=1" in proc.stdout and "2 padding copies of the last variant" in proc.stdout


@pytest.mark.slow
def test_data_parallel_run_matches_one_device(runs):
  one, four = state(runs("single_1")[0]), state(runs("single_4")[0])
  assert int(np.asarray(four["step"])) == 8
  assert max_diff(one["params"], four["params"]) < TOL
  assert max_diff(one["opt_state"], four["opt_state"]) < TOL
  r1, r4 = (json.load(open(os.path.join(runs(k)[0], "results.json")))["final"] for k in ("single_1", "single_4"))
  assert abs(r1["test_loss"] - r4["test_loss"]) < 1e-5 and abs(r1["train_loss"] - r4["train_loss"]) < 1e-5


@pytest.mark.slow
def test_batchnorm_uses_the_global_batch_under_data_parallelism(runs):
  """4 steps of resnet_tiny. Per-device statistics (8 examples each; the same as micro_batch=8 on one device) move
  the running statistics by 0.26 after 16 steps; global ones agree to 1e-7 after 4 steps (measured). Later, a
  rounding-level difference meets a discrete event (a ReLU or max-pool tie) and BatchNorm amplifies it (by orders of
  magnitude within 16 steps when this test was written), which is why this test stops at 4 steps."""
  one, four = state(runs("bn_1")[0]), state(runs("bn_4")[0])
  assert one["batch_stats"], "resnet_tiny has BatchNorm"
  assert max_diff(one["batch_stats"], four["batch_stats"]) < TOL
  assert max_diff(one["params"], four["params"]) < TOL


@pytest.mark.slow
def test_variant_parallel_sweep_matches_the_unsharded_sweep(runs):
  one, four = state(runs("sweep_1")[0]), state(runs("sweep_4")[0])
  assert np.asarray(one["step"]).shape == (6,) and np.asarray(four["step"]).shape == (8,)   # 2 padding variants
  assert max_diff(one["params"], four["params"], rows=6) < TOL
  v1, v4 = ([json.loads(line) for line in open(os.path.join(runs(k)[0], "variants.jsonl"))]
            for k in ("sweep_1", "sweep_4"))
  assert [v["hparams"] for v in v1] == [v["hparams"] for v in v4] and len(v4) == 6   # padding left out
  for a, b in zip(v1, v4):
    assert abs(a["final"]["test_loss"] - b["final"]["test_loss"]) < 1e-5


@pytest.mark.slow
def test_population_based_training_decides_across_devices_as_on_one(runs):
  """PBT's ranking and copying see every device's variants: 6 variants on 4 devices (2 padding copies, which never
  rank and are never copied from) make the decisions one device makes, and train to the same parameters."""
  (w1, _), (w4, _) = runs("pbt_1"), runs("pbt_4")
  lineage = [[json.loads(line) for line in open(os.path.join(w, "lineage.jsonl"))] for w in (w1, w4)]
  assert [e["step"] for e in lineage[0]] == [2, 4]         # every 2 steps of the 6 (3 per epoch), none after the last
  keys = ("step", "target", "source", "before", "after")
  assert [{k: e[k] for k in keys} for e in lineage[0]] == [{k: e[k] for k in keys} for e in lineage[1]]
  assert all(e["source"] < 6 and e["target"] < 6 for e in lineage[1])
  one, four = state(w1), state(w4)
  assert max_diff(one["params"], four["params"], rows=6) < TOL


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
  """2 processes x 2 CPU devices on 127.0.0.1 (gloo): the data-parallel run and the variant-parallel sweep equal the
  one-process runs; only process 0 writes results."""
  w, outs = runs("single_2x2")
  assert "in 2 process(es)" in outs[0][1]
  assert max_diff(state(runs("single_4")[0])["params"], state(w)["params"]) < TOL
  assert max_diff(state(runs("single_1")[0])["params"], state(w)["params"]) < TOL
  assert json.load(open(os.path.join(w, "config.json")))["record"]["mesh"]["processes"] == 2
  assert "results:" in outs[0][1] and "results:" not in outs[1][1]
  w, outs = runs("sweep_2x2")
  assert "mesh: variant=4 x data=1 over 4 cpu device(s) in 2 process(es)" in outs[0][1]
  assert max_diff(state(runs("sweep_1")[0])["params"], state(w)["params"], rows=6) < TOL
  rows = [json.loads(line) for line in open(os.path.join(w, "variants.jsonl"))]
  ref = [json.loads(line) for line in open(os.path.join(runs("sweep_1")[0], "variants.jsonl"))]
  assert len(rows) == 6 and all(abs(a["final"]["test_accuracy"] - b["final"]["test_accuracy"]) < 1e-6
                                for a, b in zip(rows, ref))


@pytest.mark.slow
def test_two_processes_stream_only_their_own_rows_and_match_the_in_memory_run(runs):
  """data.stream=on over 2 processes x 2 devices: each process reads its half of every batch (rows 0-15 / 16-31 of
  32), and the run ends where the in-memory two-process run ends."""
  w, outs = runs("stream_2x2")
  assert "reads rows 0-15 of each batch of 32" in outs[0][1] and "reads rows 16-31 of each batch of 32" in outs[1][1]
  assert max_diff(state(runs("single_2x2")[0])["params"], state(w)["params"]) < TOL
  ref = [json.loads(line) for line in open(os.path.join(runs("single_2x2")[0], "metrics.jsonl"))]
  got = [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
  assert [r.get("test_accuracy") for r in got] == [r.get("test_accuracy") for r in ref]


@pytest.mark.slow
def test_checkpoints_resume_on_another_device_count(runs, tmp_path):
  """A run saved on 4 devices resumes on 1, a sweep saved on 1 device resumes on 4 (its 6 rows then split 2 ways:
  variant=2 x data=2); both end where the uninterrupted 1-device runs end."""
  w = str(tmp_path / "single")
  launch([*SINGLE, "--config.train.epochs=1"], w, devices=4)
  os.remove(os.path.join(w, "results.json"))   # as if stopped after its epoch-1 checkpoint
  proc = launch(SINGLE, w, devices=1)
  assert "resumed from the checkpoint at step 4" in proc.stdout
  assert max_diff(state(runs("single_1")[0])["params"], state(w)["params"]) < TOL
  w = str(tmp_path / "sweep")
  launch([*SWEEP, "--config.train.epochs=1"], w, devices=1)
  os.remove(os.path.join(w, "summary.json"))
  proc = launch(SWEEP, w, devices=4)
  assert "resumed from the checkpoint at step 4" in proc.stdout and "mesh: variant=2 x data=2" in proc.stdout
  assert max_diff(state(runs("sweep_1")[0])["params"], state(w)["params"]) < TOL


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2.
def one_error_line(proc, *words):
  assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-1000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  for w in words:
    assert w in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--config.mesh.data=3"], ["config.mesh.data=3 does not divide the 4 devices", "1, 2, 4"]),
    (["--config.mesh.variant=2"], ["single run has no variants", "config.mesh.variant=1"]),
    (["--config.train.batch_size=30"], ["batch_size=30 does not split over the 4 devices", "divisible by 4"]),
    (["--config.mesh.data=4", "--config.train.micro_batch=8"], ["micro_batch=8", "set micro_batch=0"]),
])
def test_bad_mesh_is_one_line(tmp_path, args, words):
  proc = launch([*SINGLE, *args], str(tmp_path / "w"), devices=4, check=False)
  one_error_line(proc, *words)
  assert not os.path.exists(tmp_path / "w")   # nothing written


def test_unreachable_coordinator_is_one_line(tmp_path):
  port = free_port()   # nobody listens there
  proc = launch([*SINGLE, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=1",
                 "--distributed_timeout=2"], str(tmp_path / "w"), check=False, timeout=60)
  one_error_line(proc, f"could not reach the coordinator at 127.0.0.1 port {port} within 2 s")


def test_processes_that_disagree_are_one_line_each(tmp_path):
  outs = launch_processes(SINGLE, str(tmp_path / "w"), ids=[0, 1], counts=[2, 3], timeout=60)
  for rc, out, err in outs:
    one_error_line(subprocess.CompletedProcess([], rc, out, err), "process 1 says --num_processes=3",
                   "process 0 says 2")
  outs = launch_processes(SINGLE, str(tmp_path / "w"), ids=[0, 1, 1], counts=[3, 3, 3], timeout=60)
  for rc, out, err in outs:
    one_error_line(subprocess.CompletedProcess([], rc, out, err), "two processes say --process_id=1")
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("flags, words", [
    (["--num_processes=2", "--process_id=0"], ["--coordinator_address=HOST:PORT"]),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"], ["HOST:PORT"]),
    (["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"], ["--process_id=2", "0-1"]),
])
def test_bad_process_flags_are_one_line(tmp_path, flags, words):
  proc = launch([*SINGLE, *flags], str(tmp_path / "w"), check=False, timeout=60)
  one_error_line(proc, *words)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_the_same_step_and_they_resume(tmp_path):
  """SIGTERM reaches only process 1: both agree at the next log_every step, save one checkpoint, exit 143; the same
  commands resume from that step and finish."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  args = ["--experiment=fashion_convnet", "--config.data.name=synthetic", "--config.data.synthetic_size=(8192,128)",
          "--config.train.epochs=1", "--config.train.batch_size=32", "--config.train.log_every=10",
          "--config.writers.tensorboard=False", f"--workdir={tmp_path / 'w'}", "--num_processes=2"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JCNN_COMPILATION_CACHE="0",
             PYTHONUNBUFFERED="1")

  def start(port):
    logs = [open(tmp_path / f"p{i}-{port}.txt", "w+") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "launch.py", *args, f"--coordinator_address=127.0.0.1:{port}",
                               f"--process_id={i}"], cwd=ROOT, env=env, stdout=logs[i], stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    return procs, logs

  procs, logs = start(free_port())
  try:
    deadline = time.monotonic() + TIMEOUT
    while "steps/s" not in open(logs[1].name).read():   # training has begun
      assert time.monotonic() < deadline and procs[1].poll() is None, open(logs[1].name).read()[-2000:]
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=TIMEOUT) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  outs = [open(f.name).read() for f in logs]
  assert codes == [143, 143], [o[-1500:] for o in outs]
  steps = [int(o.split("stopped: SIGTERM at step ")[1].split(":")[0]) for o in outs]
  assert steps[0] == steps[1] and steps[0] % 10 == 0 and 0 < steps[0] < 256
  procs, logs = start(free_port())
  codes = [p.wait(timeout=TIMEOUT) for p in procs]
  outs = [open(f.name).read() for f in logs]
  assert codes == [0, 0], [o[-1500:] for o in outs]
  assert all(f"resumed from the checkpoint at step {steps[0]}" in o for o in outs)
  assert os.path.exists(tmp_path / "w" / "results.json")
