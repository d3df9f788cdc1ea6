"""Property-based fuzzing of the command line: no traceback ever reaches a user.

Hypothesis draws command lines for `launch.py` — config and sweep fields set to valid values, edge values (0, -1, nan,
inf, 1e30, empty strings, unknown names, wrong types) and combinations — on a budget of a few steps of synthetic data,
and runs each in this process (`launch.run`). Every outcome must be one of: exit 0 with finite results; exit 2 (bad
input) or 3 (diverged) with exactly one `error:` line on stderr and no traceback; and an invalid command leaves a
workdir that already held a finished run byte-for-byte unchanged.

CI runs a fixed number of examples with a fixed seed (derandomized); `JCNN_FUZZ_EXAMPLES=2000 pytest
tests/test_fuzz_cli.py` runs a longer search (nightly). Examples it found are kept as regression tests below.
"""
import hashlib
import json
import math
import os

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import launch

EXAMPLES = int(os.environ.get("JCNN_FUZZ_EXAMPLES", "40"))
BASE = ["--config.data.name=synthetic", "--config.data.synthetic_size=(64,32)", "--config.train.epochs=1",
        "--config.train.batch_size=16", "--config.train.eval_batch_size=16", "--config.train.log_every=2"]
SWEEP_BASE = ["--sweep.seeds=1", "--sweep.dropout_rate=(0.0,0.5)"]

INTS = ["0", "-1", "1", "2", "3", "7", "16", "1000000000", "abc", "nan", "1.5", "''"]
FLOATS = ["0", "-1", "nan", "inf", "-inf", "1e30", "1e-3", "0.5", "0.99", "1", "abc", "''", "True"]
NAMES = ["''", "unknown", "RELU", "abc", "1"]
TUPLES = ["()", "(0.5,)", "(1.5,)", "(nan,)", "('x',)", "(0.5,0.25)", "(-1,)", "0.5", "abc"]

FIELDS = {
    "config.train.epochs": ["0", "1", "-1", "abc", "nan"],   # large epoch counts are valid but slow: not drawn
    "config.train.batch_size": INTS, "config.train.eval_batch_size": INTS, "config.train.log_every": INTS,
    "config.train.micro_batch": INTS, "config.train.seed": INTS, "config.train.l2": FLOATS,
    "config.train.loss": NAMES + ["mse", "cross_entropy"],
    "config.train.label_smoothing": FLOATS, "config.train.mixup_alpha": FLOATS, "config.train.cutmix_alpha": FLOATS,
    "config.train.clip_norm": FLOATS, "config.train.ema_decay": FLOATS,
    "config.optim.name": NAMES + ["sgd", "adamw", "nesterov"], "config.optim.learning_rate": FLOATS,
    "config.optim.schedule": NAMES + ["cosine", "step", "warmup_cosine"], "config.optim.boundaries": TUPLES,
    "config.optim.momentum": FLOATS, "config.optim.weight_decay": FLOATS, "config.optim.warmup_fraction": FLOATS,
    "config.optim.decay_factor": FLOATS, "config.optim.rho": FLOATS,
    "config.model.dropout_rate": FLOATS, "config.model.init_scale": FLOATS,
    "config.model.activation": NAMES + ["tanh", "prelu", "rrelu"], "config.model.name": NAMES + ["mlp", "lenet5"],
    "config.data.val_size": INTS, "config.data.train_limit": INTS, "config.data.test_limit": INTS,
    "config.data.pad": ["0", "-1", "2", "1000000000", "abc"], "config.data.augment": NAMES + ["flip_crop"],
    "config.data.preprocess": NAMES + ["standardize", "minmax"], "config.data.synthetic_shape": TUPLES + ["(8,8,1)"],
    "config.checkpoint.every_steps": INTS, "config.checkpoint.keep": INTS,
    "config.writers.tensorboard": ["True", "False", "abc", "0"], "config.nosuchkey": ["1"],
}
SWEEP_FIELDS = {
    "sweep.seeds": INTS[:8], "sweep.max_chunk": INTS[:8], "sweep.strategy": NAMES + ["map", "vmap", "unroll"],
    "sweep.dropout_rate": TUPLES, "sweep.learning_rate": TUPLES, "sweep.init_scale": TUPLES,
    "sweep.activation": ["('tanh',)", "('x',)", "()", "(1,)"], "sweep.weight_decay": TUPLES,
    "sweep.label_smoothing": TUPLES, "sweep.mixup_alpha": TUPLES, "sweep.ema_decay": TUPLES,
    "sweep.groups": ["()", "('model.dense=8',)", "('model.nokey=8',)", "('model.dense=',)", "('nosection.x=1',)",
                     "('model.dense=-1',)"],
}


@st.composite
def command_lines(draw):
  sweep = draw(st.booleans()) and draw(st.booleans())       # a quarter are sweeps (they compile longer)
  fields = dict(FIELDS, **(SWEEP_FIELDS if sweep else {}))
  chosen = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True))
  args = [f"--experiment={'ablation_dropout' if sweep else 'fashion_convnet'}"] + BASE + (SWEEP_BASE if sweep else [])
  return args + [f"--{k}={draw(st.sampled_from(fields[k]))}" for k in chosen]


def tree_digest(folder) -> str:
  h = hashlib.sha256()
  for d, dirs, files in sorted(os.walk(folder)):
    dirs.sort()
    for f in sorted(files):
      p = os.path.join(d, f)
      h.update(p.encode())
      with open(p, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A workdir holding a finished run, and one holding a finished sweep."""
  out = {}
  for exp, extra in (("fashion_convnet", []), ("ablation_dropout", SWEEP_BASE)):
    wd = str(tmp_path_factory.mktemp("finished") / exp)
    assert launch.run(["launch.py", f"--experiment={exp}", *BASE, *extra, f"--workdir={wd}"]) == 0
    out[exp] = wd
  return out


def check_outcome(args, code, err, workdir):
  lines = [line for line in err.splitlines() if line.strip()]
  assert "Traceback" not in err, (args, err)
  if code == 0:
    name = "summary.json" if "ablation_dropout" in args[0] else "results.json"
    with open(os.path.join(workdir, name)) as f:
      res = json.load(f)
    finals = [r["test_accuracy_mean"] for r in res if r["failed"] < r["seeds"]] if isinstance(res, list) else [
        res["final"]["test_loss"]]
    assert all(math.isfinite(v) for v in finals), (args, res)
  else:
    assert code in (2, 3), (args, code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=command_lines())
def test_fuzzed_command_lines_end_cleanly(args, finished, tmp_path_factory, capsys):
  os.chdir(ROOT)
  workdir = str(tmp_path_factory.mktemp("fuzz") / "run")
  capsys.readouterr()
  code = launch.run(["launch.py", *args, f"--workdir={workdir}"])
  check_outcome(args, code, capsys.readouterr().err, workdir)
  if code == 2:   # the same mistake against a finished run's workdir changes nothing there
    target = finished["ablation_dropout" if "ablation_dropout" in args[0] else "fashion_convnet"]
    before = tree_digest(target)
    again = launch.run(["launch.py", *args, f"--workdir={target}"])
    assert again == 2 and tree_digest(target) == before, args
    capsys.readouterr()


def test_finished_workdirs_record_and_refuse(finished, capsys):
  """The two finished workdirs above (made by launch.run): config.json records versions, device and commit;
  the single run's curves.png is a PNG; the --sweep.* flags were applied; and the same valid command again is
  refused on each (exit 2, one line) leaving its workdir byte-for-byte unchanged."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import matplotlib.image as mpimg  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
  except OSError:
    head = ""
  for exp, wd in finished.items():
    with open(os.path.join(wd, "config.json")) as f:
      saved = json.load(f)
    rec = saved["record"]
    assert (rec["jax"], rec["flax"], rec["optax"]) == (jax.__version__, flax.__version__, optax.__version__), exp
    assert rec["backend"] == jax.default_backend() and rec["devices"] == [str(d) for d in jax.devices()]
    assert rec["git_commit"] == (head or "unknown") and saved["config"]["name"] == exp
  with open(os.path.join(finished["fashion_convnet"], "curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  image = mpimg.imread(os.path.join(finished["fashion_convnet"], "curves.png"))
  assert image.ndim == 3 and min(image.shape[:2]) >= 100 and image.std() > 0     # drawn, not blank
  with open(os.path.join(finished["ablation_dropout"], "variants.jsonl")) as f:
    variants = [json.loads(line)["hparams"] for line in f]
  assert [(v["dropout_rate"], v["seed"]) for v in variants] == [(0.0, 0), (0.5, 0)]    # --sweep.seeds=1, rates
  for exp, extra in (("fashion_convnet", []), ("ablation_dropout", SWEEP_BASE)):
    before = tree_digest(finished[exp])
    capsys.readouterr()
    code = launch.run(["launch.py", f"--experiment={exp}", *BASE, *extra, f"--workdir={finished[exp]}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "already holds a finished run" in err[0], (exp, err)
    assert tree_digest(finished[exp]) == before, exp


# ----------------------------------------------------------------------------------------------------------------
# Examples the fuzzer (and the 30 hand-tried command lines) found, kept as regression tests.
@pytest.mark.parametrize("extra,needle", [
    (["--config.train.eval_batch_size=0"], "config.train.eval_batch_size=0: must be >= 1"),
    (["--config.train.log_every=0"], "config.train.log_every=0: must be >= 1"),
    (["--config.optim.learning_rate=nan"], "config.optim.learning_rate=nan: must be a finite number > 0"),
    (["--config.optim.learning_rate=-0.1"], "config.optim.learning_rate=-0.1: must be > 0"),
    (["--config.data.pad=1000000000"], "config.data.pad=1000000000: must be >= 0 and <= 512"),
    (["--config.optim.boundaries=(0.75,0.5)"], "increasing fractions"),
    (["--config.data.val_size=1000000000"], "val_size"),
    (["--config.train.batch_size=1000000000"], "batch size 1000000000 is larger than the 64 training images"),
    (["--config.checkpoint.keep=0"], "config.checkpoint.keep=0: must be >= 1"),
    (["--config.data.synthetic_shape=(8,8,1)"], "ConvNet cannot take input of shape (8, 8, 1)"),
    (["--experiment=ablation_dropout", "--sweep.seeds=0"], "sweep.seeds=0: must be an integer >= 1"),
    (["--experiment=ablation_dropout", "--sweep.dropout_rate=(1.5,)"], "sweep.dropout_rate value 1.5"),
    (["--experiment=ablation_dropout", "--sweep.weight_decay=(0.1,)"], "needs config.optim.name='adamw'"),
    (["--experiment=ablation_dropout", "--sweep.groups=('model.nokey=8',)"], "config.model.nokey is not a config key"),
    (["--experiment=ablation_dropout", "--sweep.max_chunk=-1"], "sweep.max_chunk=-1"),
    (["--experiment=ablation_dropout", "--sweep.strategy=abc"], "sweep.strategy='abc'"),
    (["--sweep.seeds=2"], "--sweep.* flags need a sweep experiment"),
])
def test_regressions(extra, needle, tmp_path, capsys):
  os.chdir(ROOT)
  exp = [a for a in extra if a.startswith("--experiment=")] or ["--experiment=fashion_convnet"]
  args = exp + BASE + [a for a in extra if not a.startswith("--experiment=")]
  code = launch.run(["launch.py", *args, f"--workdir={tmp_path / 'w'}"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
  assert not (tmp_path / "w").exists()


def test_workdir_that_is_a_file_and_a_diverged_run(tmp_path, capsys):
  os.chdir(ROOT)
  f = tmp_path / "file"
  f.write_text("x")
  assert launch.run(["launch.py", "--experiment=fashion_convnet", *BASE, f"--workdir={f}"]) == 2
  assert "is a file, not a folder" in capsys.readouterr().err
  code = launch.run(["launch.py", "--experiment=fashion_convnet", *BASE, "--config.optim.learning_rate=1e30",
                     f"--workdir={tmp_path / 'w'}"])
  err = capsys.readouterr().err
  assert code == 3 and err.startswith("error: training diverged") and err.count("\n") == 1, err
  assert not (tmp_path / "w" / "results.json").exists()


def test_a_bug_prints_one_line_and_keeps_the_traceback(tmp_path, capsys, monkeypatch):
  from jcnn.train import loop  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(loop, "run", lambda *a, **k: {}["boom"])     # an unanticipated KeyError inside the loop
  code = launch.run(["launch.py", "--experiment=fashion_convnet", *BASE, f"--workdir={tmp_path / 'w'}"])
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1 and "jcnn hit a bug (KeyError" in err, err
  path = err.split("the full traceback is in ")[1].split(";")[0]
  assert path == str(tmp_path / "w" / "traceback.txt")
  assert "Traceback (most recent call last)" in open(path).read() and "boom" in open(path).read()
