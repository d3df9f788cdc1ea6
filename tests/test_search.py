"""Searches inside the sweep's program (jcnn.sweep.search): successive halving and population-based training.

References: standalone runs of the same variant (jcnn.experiment.train_and_evaluate of its own config), evaluation
of the saved parameters by jcnn.train.evaluate, and exploit / explore worked out by hand in numpy.
"""
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import ROOT, small_sweep_config

from experiments import ablation_dropout
from jcnn import config as config_lib, data as data_lib, models
from jcnn import train as train_lib
from jcnn.errors import ConfigError, Interrupted
from jcnn.experiment import run_sweep, train_and_evaluate
from jcnn.sweep import lift, search
from jcnn.train import checkpoint, loop, optim
from jcnn.train.program import RunState


def tiny_config(epochs=3):
  return small_sweep_config(epochs, val_size=32)   # 64 training images: 4 steps of 16 per epoch


def tiny_sweep(kind):
  s = ablation_dropout.get_sweep()
  s.seeds = 2
  s.dropout_rate = (0.0, 0.25, 0.5)
  s.learning_rate = (1e-3, 3e-3) if kind == "pbt" else ()
  s.search = kind
  s.rungs = (1, 2)
  s.eta = 2
  s.pbt_interval = 5         # steps: decisions after steps 5 and 10, mid-epoch; none after the last (12th)
  s.pbt_quantile = 0.25
  return s


STEPS = 4   # per epoch


def lineage(workdir):
  with open(os.path.join(workdir, "lineage.jsonl")) as f:
    return [json.loads(line) for line in f]


def strip(curves):
  return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in curves]


_RUNS = {}


def searched(kind, tmp_path_factory):
  """The uninterrupted search of each kind, run once for the tests below; records which splits the loop evaluated
  at which step."""
  if kind not in _RUNS:
    workdir = str(tmp_path_factory.mktemp(kind) / "sweep")
    seen, real = [], loop.evaluate

    def spy(program, state, split, only=None):
      seen.append((split, int(np.max(jax.device_get(state.step)))))
      return real(program, state, split, only)
    loop.evaluate = spy
    try:
      out = run_sweep(tiny_config(), tiny_sweep(kind), workdir)
    finally:
      loop.evaluate = real
    _RUNS[kind] = (workdir, out, seen)
  return _RUNS[kind]


def saved_state(workdir):
  ck = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints", "0-0"))
  return ck.restore_untyped(ck.latest_step())["state"]


# ----------------------------------------------------------------------------------------------------------------
# Successive halving.
def test_halving_stops_the_worse_half_at_each_rung_and_skips_their_steps(tmp_path_factory):
  workdir, out, _ = searched("halving", tmp_path_factory)
  events = lineage(workdir)
  assert [(e["epoch"], len(e["kept"]), len(e["stopped"])) for e in events] == [(1, 3, 3), (2, 1, 2)]   # 6 -> 3 -> 1
  # The ranking is the validation accuracy of each variant's own parameters: the stopped ones keep theirs, so
  # evaluating their saved parameters by hand on the validation split gives the number the rung ranked them by.
  config = tiny_config()
  ds = data_lib.load(config.data, seed=config.train.seed)
  state = saved_state(workdir)
  variants = [r["hparams"] for r in out["results"]]
  for e in events:
    ranked = dict((v, a) for v, a in e["val_accuracy"])
    assert min(ranked[v] for v in e["kept"]) >= max(ranked[v] for v in e["stopped"])
    for v in e["stopped"]:
      c = config_lib.variant_config(config, variants[v])
      model = models.get(c.model, num_classes=10)
      st = train_lib.TrainState(step=0, params=jax.tree.map(lambda a: a[v], state["train"]["params"]),
                                batch_stats={}, opt_state=None)
      got = train_lib.evaluate(model, st, ds.val_x, ds.val_y, 16)["accuracy"]
      assert got == pytest.approx(ranked[v], abs=1e-6)
  # Compute went to the survivors only: each variant's step counter is its epochs trained.
  trained = [r["epochs_trained"] for r in out["results"]]
  assert sorted(trained) == [1, 1, 1, 2, 2, 3]
  assert np.asarray(state["train"]["step"]).tolist() == [t * STEPS for t in trained]
  assert "epochs trained" in out["table"] and "10 variant-epochs trained, against 18" in out["table"]


def test_halving_survivor_and_stopped_variant_equal_their_standalone_runs(tmp_path_factory, tmp_path):
  workdir, out, _ = searched("halving", tmp_path_factory)
  state = saved_state(workdir)
  by_epochs = {r["epochs_trained"]: i for i, r in enumerate(out["results"])}
  for epochs in (3, 1):   # the survivor, and a variant stopped at the first rung
    v = by_epochs[epochs]
    c = config_lib.variant_config(tiny_config(epochs), out["results"][v]["hparams"])
    ref = train_and_evaluate(c, str(tmp_path / f"alone{epochs}"))
    params = jax.tree.map(lambda a: a[v], state["train"]["params"])
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(ref["state"].params))   # bit-identical
    assert out["results"][v]["final"]["val_accuracy"] == ref["history"][-1]["val_accuracy"]


def test_decisions_never_read_the_test_split(tmp_path_factory):
  for kind in ("halving", "pbt"):
    _, out, seen = searched(kind, tmp_path_factory)
    last = 3 * STEPS
    assert [s for split, s in seen if split == "test"] == [last], kind   # once, after the last step
    assert any(split == "val" and s < last for split, s in seen)
    assert all("test_accuracy" not in row for row in out["results"][0]["curves"][:-1])


# ----------------------------------------------------------------------------------------------------------------
# Population-based training.
def _population(V=8):
  """A hand-made population: params, BatchNorm statistics, adam state with each variant's injected learning rate."""
  tx = optim.make_optimizer({"name": "adam", "learning_rate": 1e-3})
  params = {"w": jnp.arange(V * 3, dtype=jnp.float32).reshape(V, 3)}
  opt = jax.vmap(tx.init)(params)
  lrs = jnp.asarray([1e-3 * (i + 1) for i in range(V)], jnp.float32)
  opt = optim.set_hyperparam(opt, "learning_rate", lrs)
  opt = jax.tree.map(lambda a: a + jnp.arange(V).reshape((V,) + (1,) * (a.ndim - 1)).astype(a.dtype)
                     if a.ndim and a.dtype == jnp.float32 and a.shape != (V,) else a, opt)   # distinct moments
  train = train_lib.TrainState(step=jnp.full(V, 6, jnp.int32), params=params,
                               batch_stats={"mean": jnp.arange(V, dtype=jnp.float32)[:, None] * jnp.ones((V, 2))},
                               opt_state=opt)
  zero = {"loss_sum": jnp.arange(V, dtype=jnp.float32), "correct": jnp.zeros(V), "count": jnp.ones(V)}
  rs = RunState(train=train, failed_at=jnp.full(V, -1, jnp.int32), acc=zero, log_acc=zero,
                search={"hp": {"learning_rate": lrs, "dropout_rate": jnp.full(V, 0.5, jnp.float32)}})
  return rs


def test_pbt_exploit_copies_the_whole_state_and_explore_perturbs_by_hand():
  V = 8
  config = tiny_config()
  s = tiny_sweep("pbt")
  s.pbt_resample = 0.0
  variants = [config_lib.variant_of(config, learning_rate=1e-3 * (i + 1), dropout_rate=0.5, seed=i) for i in range(V)]
  found = search.make(config, s, variants, ["dropout_rate", "learning_rate"], STEPS, "accuracy")
  rs = _population(V)
  acc = np.asarray([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6])      # best: 1, 5 (top 2); worst: 2, 6 (bottom 2)
  sums = {"correct": jnp.asarray(acc * 100), "count": jnp.full(V, 100.0), "loss_sum": jnp.zeros(V)}
  new, events = found.decide(rs, 6, 2, sums)
  assert sorted(e["target"] for e in events) == [2, 6]
  for e in events:
    t, src = e["target"], e["source"]
    assert src in (1, 5)
    for a, b in zip(jax.tree.leaves(new.train.params) + jax.tree.leaves(new.train.batch_stats),
                    jax.tree.leaves(rs.train.params) + jax.tree.leaves(rs.train.batch_stats)):
      np.testing.assert_array_equal(np.asarray(a)[t], np.asarray(b)[src])
    mu_new, mu_old = new.train.opt_state.inner_state[0].mu["w"], rs.train.opt_state.inner_state[0].mu["w"]
    np.testing.assert_array_equal(mu_new[t], mu_old[src])          # optimizer moments copied
    lr_src = float(rs.search["hp"]["learning_rate"][src])
    lr = float(new.search["hp"]["learning_rate"][t])
    assert lr in (pytest.approx(lr_src * 0.8), pytest.approx(lr_src * 1.2))
    assert float(optim.learning_rate_of(new.train.opt_state)[t]) == lr   # the optimizer reads the explored value
    assert float(new.search["hp"]["dropout_rate"][t]) in (pytest.approx(0.4), pytest.approx(0.6))
    assert e["before"]["learning_rate"] == pytest.approx(1e-3 * (t + 1)) and e["after"]["learning_rate"] == \
        pytest.approx(lr)
  kept = [v for v in range(V) if v not in (2, 6)]
  for a, b in zip(jax.tree.leaves(new.train), jax.tree.leaves(rs.train)):
    np.testing.assert_array_equal(np.asarray(a)[kept], np.asarray(b)[kept])
  # Its own: metric sums, step; hyperparameters of the others untouched.
  np.testing.assert_array_equal(new.acc["loss_sum"], rs.acc["loss_sum"])
  np.testing.assert_array_equal(np.asarray(new.search["hp"]["learning_rate"])[kept],
                                np.asarray(rs.search["hp"]["learning_rate"])[kept])
  # A diverged variant is never a source, however well it scored; it ranks last, so it is a target.
  failed = rs.replace(failed_at=rs.failed_at.at[1].set(3))
  new, events = found.decide(failed, 6, 2, sums)
  assert {e["source"] for e in events} <= {5, 3} and 1 in {e["target"] for e in events}   # top 2 now: 5, 3
  # A swept optimizer hyperparameter PBT does not explore stays the target's own (the copied optimizer state
  # carried the source's).
  s.pbt_axes = ("dropout_rate",)
  only_dropout = search.make(config, s, variants, ["dropout_rate", "learning_rate"], STEPS, "accuracy")
  new, events = only_dropout.decide(rs, 6, 2, sums)
  for e in events:
    t = e["target"]
    assert float(optim.learning_rate_of(new.train.opt_state)[t]) == pytest.approx(1e-3 * (t + 1))
    assert set(e["after"]) == {"dropout_rate"}
  s.pbt_axes = ()
  # Clipped to the axis's range, and resampled from the grid's values when asked.
  s.pbt_resample = 1.0
  found = search.make(config, s, variants, ["dropout_rate", "learning_rate"], STEPS, "accuracy")
  hi = rs.replace(search={"hp": {"learning_rate": jnp.full(V, 9.5), "dropout_rate": jnp.full(V, 0.9)}})
  new, _ = found.decide(hi, 12, 3, sums)
  for x in np.asarray(new.search["hp"]["learning_rate"])[[2, 6]]:   # drawn from the grid, not 9.5 x 1.2
    assert any(abs(x - 1e-3 * (i + 1)) < 1e-7 for i in range(V)), x
  s.pbt_resample = 0.0
  found = search.make(config, s, variants, ["dropout_rate", "learning_rate"], STEPS, "accuracy")
  new, _ = found.decide(hi, 12, 3, sums)
  for x in np.asarray(new.search["hp"]["dropout_rate"])[[2, 6]]:   # 0.9 x 1.2 clipped to 0.95, or 0.9 x 0.8
    assert x == pytest.approx(0.95) or x == pytest.approx(0.72), x
  for x in np.asarray(new.search["hp"]["learning_rate"])[[2, 6]]:   # 9.5 x 1.2 clipped to 10, or 9.5 x 0.8
    assert x == pytest.approx(10.0) or x == pytest.approx(7.6), x


def test_pbt_run_lineage_schedule_and_picture(tmp_path_factory):
  workdir, out, _ = searched("pbt", tmp_path_factory)
  events = lineage(workdir)
  n = len(out["results"])
  assert {e["step"] for e in events} == {5, 10}         # every pbt_interval steps, none after the last (12th)
  assert len(events) == 2 * max(1, int(0.25 * n))       # the bottom quantile, at each decision
  grid = {"learning_rate": (1e-3, 3e-3), "dropout_rate": (0.0, 0.25, 0.5)}
  def hp_at(v, step):   # a variant's hyperparameters just before the decision at `step`, from the lineage alone
    h = {a: out["results"][v]["hparams"][a] for a in grid}
    for e in events:
      if e["target"] == v and e["step"] < step:
        h = e["after"]
    return h
  for e in events:
    assert e["source_val_accuracy"] >= e["target_val_accuracy"]
    assert e["before"] == pytest.approx(hp_at(e["target"], e["step"]))
    src = hp_at(e["source"], e["step"])
    for a, (lo, hi) in (("learning_rate", (1e-8, 10.0)), ("dropout_rate", (0.0, 0.95))):
      options = [min(max(src[a] * f, lo), hi) for f in (0.8, 1.2)] + list(grid[a])   # perturbed, or resampled
      assert any(e["after"][a] == pytest.approx(o, rel=1e-6, abs=1e-9) for o in options), (a, e, src)
  # Each variant's final hyperparameters are its last `after` (or its grid point when never exploited).
  for v, r in enumerate(out["results"]):
    mine = [e for e in events if e["target"] == v]
    expect = mine[-1]["after"] if mine else {a: r["hparams"][a] for a in ("learning_rate", "dropout_rate")}
    assert {a: r["final_hparams"][a] for a in expect} == pytest.approx(expect)
  assert f"Population-based training: {len(events)} exploit events" in out["table"]
  with open(os.path.join(workdir, "pbt.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["halving", "pbt"])
def test_search_resumes_bit_identical(kind, tmp_path_factory, tmp_path, monkeypatch):
  ref_dir, ref, _ = searched(kind, tmp_path_factory)
  workdir = str(tmp_path / "sweep")
  real, calls = lift.program, [0]

  def factory(*a, **k):
    p = real(*a, **k)

    def step(rs, b):
      calls[0] += 1
      if calls[0] == 7:          # inside epoch 2, after PBT's first decision and halving's first rung
        os.kill(os.getpid(), signal.SIGTERM)
      return p.step(rs, b)
    return p._replace(step=step)
  monkeypatch.setattr(lift, "program", factory)
  with pytest.raises(Interrupted) as e:
    run_sweep(tiny_config(), tiny_sweep(kind), workdir)
  assert e.value.step == 7
  monkeypatch.setattr(lift, "program", real)
  out = run_sweep(tiny_config(), tiny_sweep(kind), workdir)
  for a, b in zip(out["results"], ref["results"]):
    assert strip(a["curves"]) == strip(b["curves"])
  assert out["rows"] == ref["rows"] and lineage(workdir) == lineage(ref_dir)
  for a, b in zip(jax.tree.leaves(saved_state(workdir)), jax.tree.leaves(saved_state(ref_dir))):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# Bad input.
BAD = [
    ("halving", {"val_size": 0}, "set config.data.val_size"),
    ("pbt", {"val_size": 0}, "set config.data.val_size"),
    ("halving", {"rungs": (1, 1)}, "must be increasing epochs"),
    ("halving", {"rungs": (1, 4)}, "beyond config.train.epochs=3"),
    ("halving", {"eta": 1}, "sweep.eta=1: must be >= 2"),
    ("pbt", {"pbt_quantile": 0.6}, r"must be in \(0, 0.5\]"),
    ("pbt", {"pbt_quantile": 0.0}, r"must be in \(0, 0.5\]"),
    ("pbt", {"pbt_axes": ("init_scale",)}, "init_scale is not swept"),
    ("pbt", {"pbt_axes": ("init_scale",), "init_scale": (0.5, 1.0)}, "init_scale acts only when the parameters are"),
    ("pbt", {"pbt_axes": ("activation",), "activation": ("relu", "tanh"), "pbt_resample": 0.0},
     "activation cannot be perturbed"),
    ("halving", {"seeds": 1, "dropout_rate": (0.5,)}, "needs at least 2 variants"),
    ("halving", {"groups": ("model.dense=8",)}, "run each group as its own sweep"),
    ("bogus", {}, "must be one of grid, halving, pbt"),
]


@pytest.mark.parametrize("kind, change, message", BAD)
def test_bad_search_input_is_one_line(kind, change, message, tmp_path):
  config, s = tiny_config(), tiny_sweep(kind if kind != "bogus" else "halving")
  s.search = kind
  for k, v in change.items():
    if k == "val_size":
      config.data.val_size = v
    else:
      s[k] = v
  with pytest.raises(ConfigError, match=message) as e:
    run_sweep(config, s, str(tmp_path / "w"))
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "w")   # refused before the workdir is touched


def test_search_without_validation_split_from_the_command_line(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--experiment=ablation_dropout",
                         "--sweep.search=halving", f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True,
                        cwd=ROOT, timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith("error: sweep.search=halving ranks variants on the validation split: set "
                              "config.data.val_size"), proc.stderr
  assert "Traceback" not in proc.stderr


def test_search_on_own_arrays_needs_a_validation_split(tmp_path):
  rng = np.random.default_rng(0)   # an .npz of one's own, with a train and a test split and no validation split
  x = {s: rng.integers(0, 256, (n, 20, 20), dtype=np.uint8) for s, n in (("train", 64), ("test", 16))}
  np.savez(tmp_path / "d.npz", **{f"{k}_{s}": v for s in x for k, v in (("x", x[s]), ("y", np.arange(len(x[s])) % 10))})
  config = tiny_config()
  config.data.name, config.data.path, config.data.val_size = "arrays", str(tmp_path / "d.npz"), 0
  with pytest.raises(ConfigError, match=r"ranks variants on the validation split, and .*d.npz has none: set "
                                        r"config.data.val_size") as e:
    run_sweep(config, tiny_sweep("halving"), str(tmp_path / "w"))
  assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "w")
  x["val"] = rng.integers(0, 256, (32, 20, 20), dtype=np.uint8)   # the same file with a validation split of its own
  np.savez(tmp_path / "v.npz", **{f"{k}_{s}": v for s in x for k, v in (("x", x[s]), ("y", np.arange(len(x[s])) % 10))})
  config.data.path = str(tmp_path / "v.npz")     # val_size stays 0: the search ranks on the file's own split
  out = run_sweep(config, tiny_sweep("halving"), str(tmp_path / "w"))
  assert sorted(r["epochs_trained"] for r in out["results"]) == [1, 1, 1, 2, 2, 3]   # 6 -> 3 -> 1 over rungs 1, 2


def test_search_that_does_not_fit_in_one_program_is_refused(tmp_path, monkeypatch):
  from jcnn.sweep import memory  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(memory, "device_memory_budget", lambda: 1)   # no room: the rule still allows one variant
  with pytest.raises(ConfigError, match=r"trains its 6 variants in one program, but only 1 fit in memory") as e:
    run_sweep(tiny_config(), tiny_sweep("halving"), str(tmp_path / "w"))
  assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "w")
