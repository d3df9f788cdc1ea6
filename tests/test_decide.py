"""Single runs that decide (jcnn.train.decide): early stopping, reduce-on-plateau and the best checkpoint.

The rules are checked as pure functions against histories computed by hand (Keras' EarlyStopping and
ReduceLROnPlateau with cooldown 0: an improvement is a change by more than min_delta), then in tiny runs: the run stops
where its own history says, a resumed run decides exactly as an uninterrupted one (bit-identical parameters, the same
learning rate), the best checkpoint holds the best epoch's parameters, and bad fields are one-line errors.
"""
import os
import shutil

import numpy as np
import pytest
from conftest import ROOT
from test_checkpoint import interrupt_at, same_tree, tiny_config
from test_launch import assert_one_error, launch

import launch as launch_py
from jcnn import config as config_lib, export
from jcnn.errors import ConfigError, Interrupted, UserError
from jcnn.experiment import run_sweep, train_and_evaluate
from jcnn.train import checkpoint, decide, optim, program as program_lib


def rows(metric, values):
  return [{"epoch": i + 1, metric: v} for i, v in enumerate(values)]


def stop_config(**fields):
  c = config_lib.base_config()
  for k, v in fields.items():
    section, key = k.split("__")
    c[section][key] = v
  return c


# ----------------------------------------------------------------------------------------------------------------
# The rules, by hand.
def test_exactly_min_delta_is_not_an_improvement():
  assert not decide.improves("val_loss", 0.9, 1.0, min_delta=0.1)
  assert decide.improves("val_loss", 0.89, 1.0, min_delta=0.1)
  assert not decide.improves("val_accuracy", 0.6, 0.5, min_delta=0.1)
  assert decide.improves("val_accuracy", 0.61, 0.5, min_delta=0.1)
  assert not decide.improves("val_accuracy", 0.5, 0.5)          # equal: no improvement
  assert not decide.improves("val_loss", float("nan"), 1.0)     # NaN never improves
  assert decide.improves("val_rmse", 5.0, None)                 # the first row always does


@pytest.mark.parametrize("metric,values,min_delta,waits", [
    # lower is better: 0.9 improves; 0.95 does not; 0.85 improves on 0.9 (the best), not on 0.95
    ("val_loss", [1.0, 0.9, 0.95, 0.85, 0.86], 0.0, [0, 0, 1, 0, 1]),
    # min_delta 0.1: 0.9 is exactly 0.1 better (not an improvement); the best stays 1.0, so 0.85 improves
    ("val_loss", [1.0, 0.9, 0.95, 0.85, 0.74], 0.1, [0, 1, 2, 0, 0]),
    # higher is better: the same numbers read the other way
    ("val_accuracy", [1.0, 0.9, 0.95, 0.85, 1.2], 0.0, [0, 1, 2, 3, 0]),
    ("val_mae", [3.0, 2.0, 2.0, 2.5], 0.0, [0, 0, 1, 2]),
    ("train_r2", [0.1, 0.2, 0.2, 0.3], 0.0, [0, 0, 1, 0]),
])
def test_waits(metric, values, min_delta, waits):
  assert decide.waits(rows(metric, values), metric, min_delta) == waits


def test_early_stopping_fires_after_patience_epochs_without_improvement():
  history = rows("val_loss", [1.0, 0.9, 0.95, 0.91, 0.92, 0.5])
  assert decide.stop_epoch(history, stop_config(stop__metric="val_loss", stop__patience=3)) == 5
  assert decide.stop_epoch(history, stop_config(stop__metric="val_loss", stop__patience=4)) is None
  assert decide.stop_epoch(history, stop_config(stop__metric="val_loss", stop__patience=1)) == 3
  assert decide.stop_epoch(history[:4], stop_config(stop__metric="val_loss", stop__patience=3)) is None
  # min_delta 0.1: only epoch 6's 0.5 improves on 1.0 by more than 0.1; patience 2 fires at epoch 3
  assert decide.stop_epoch(history, stop_config(stop__metric="val_loss", stop__patience=2, stop__min_delta=0.1)) == 3
  # higher is better: accuracy falls after epoch 1
  acc = rows("val_accuracy", [0.5, 0.4, 0.45, 0.6])
  assert decide.stop_epoch(acc, stop_config(stop__metric="val_accuracy", stop__patience=2)) == 3
  assert decide.stop_epoch(history, stop_config()) is None    # off


def test_plateau_fires_at_the_right_epochs_and_waits_a_new_window():
  c = stop_config(stop__plateau_metric="val_loss", stop__plateau_patience=2)
  history = rows("val_loss", [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 0.9, 1.0, 1.0])
  # epochs 2, 3 without improvement: fires at 3; a new window of 2: fires at 5 (not at 4); at 7 an improvement;
  # 8, 9 without one: fires at 9
  assert decide.plateau_epochs(history, c) == [3, 5, 9]
  assert [decide.reduce_now(history[:n], c) for n in range(1, 10)] == [
      False, False, True, False, True, False, False, False, True]
  assert decide.plateau_epochs(history, stop_config()) == []   # off


def test_the_learning_rate_drops_by_the_factor_and_never_below_the_minimum():
  c = stop_config(stop__plateau_factor=0.5, stop__min_learning_rate=0.3)
  assert decide.next_learning_rate(1.0, c) == 0.5
  assert decide.next_learning_rate(0.5, c) == 0.3       # 0.25 is below the minimum
  assert decide.next_learning_rate(0.3, c) == 0.3       # at the minimum: stays
  assert decide.next_learning_rate(0.1, c) == 0.1       # below it already (a small base rate): never raised


def test_the_plateau_sets_the_injected_learning_rate():
  c = stop_config(stop__plateau_metric="val_loss", stop__plateau_patience=1, stop__plateau_factor=0.5)
  tx = optim.make_optimizer({"name": "adam", "learning_rate": 0.01, "schedule": "cosine"}, total_steps=10)

  class State:   # what `reduced` reads and replaces: opt_state
    def __init__(self, opt_state):
      self.opt_state = opt_state

    def replace(self, opt_state):
      return State(opt_state)

  s = State(tx.init({"w": np.zeros(3, np.float32)}))
  same = decide.reduced(s, rows("val_loss", [1.0]), c)
  assert same is s
  after = decide.reduced(s, rows("val_loss", [1.0, 1.0]), c)
  assert float(optim.learning_rate_of(after.opt_state)) == np.float32(0.005)


def test_best_epoch_and_summary():
  history = [{"epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0}, {"epoch": 2, "val_accuracy": 0.7, "val_loss": 0.8},
             {"epoch": 3, "val_accuracy": 0.7, "val_loss": float("nan")}, {"epoch": 4, "val_accuracy": 0.6,
                                                                           "val_loss": 0.7}]
  assert decide.best_epoch(history, "val_accuracy") == (2, 0.7)   # the first of equal ones
  assert decide.best_epoch(history, "val_loss") == (4, 0.7)       # NaN is never the best
  assert [decide.is_new_best(history[:n], "val_accuracy") for n in range(1, 5)] == [True, True, False, False]
  c = stop_config(stop__metric="val_accuracy", stop__patience=2, checkpoint__best="val_accuracy", train__epochs=10)
  assert decide.summary(history, c) == {"stopped_early_at": 4, "best_epoch": 2, "best": {"val_accuracy": 0.7}}
  c.train.epochs = 4   # it fired at the last epoch: training was not cut short
  assert decide.summary(history, c) == {"best_epoch": 2, "best": {"val_accuracy": 0.7}}


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the fix, before any file is written.
@pytest.mark.parametrize("fields,needle", [
    ({"stop__metric": "val_acc", "data__val_size": 10}, "config.stop.metric='val_acc' is not an epoch-row metric"),
    ({"stop__plateau_metric": "val_rmse", "data__val_size": 10}, "config.stop.plateau_metric='val_rmse' is not"),
    ({"checkpoint__best": "accuracy", "data__val_size": 10}, "use one of val_loss, val_accuracy"),
    ({"checkpoint__best": "val_accuracy", "train__task": "regress", "train__loss": "mse", "data__val_size": 10},
     "use one of val_loss, val_rmse, val_mae, val_r2"),
    ({"stop__metric": "val_loss"}, "set config.data.val_size > 0"),
    ({"checkpoint__best": "val_accuracy"}, "set config.data.val_size > 0"),
    ({"stop__metric": "test_accuracy", "data__val_size": 10}, "would choose by the test split"),
])
def test_a_metric_the_rows_lack_is_refused(fields, needle):
  with pytest.raises(ConfigError) as e:
    config_lib.check_config(stop_config(**fields))
  assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fields", [
    {"stop__metric": "val_loss", "data__val_size": 10, "checkpoint__best": "val_accuracy"},
    {"stop__metric": "train_loss"},
    {"stop__plateau_metric": "val_rmse", "train__task": "regress", "train__loss": "mse", "data__val_size": 10},
    {"checkpoint__best": "val_loss", "data__name": "csv", "data__path": "own_splits"},   # may bring its own val split
])
def test_a_metric_the_rows_hold_is_accepted(fields):
  config_lib.check_config(stop_config(**fields))


def test_data_without_a_validation_split_is_refused_once_loaded():
  c = stop_config(checkpoint__best="val_loss", data__name="csv", data__path="own_splits")
  with pytest.raises(ConfigError, match="set config.data.val_size > 0"):
    config_lib.check_decisions(c, has_val=False)


def test_a_sweep_refuses_decisions(tmp_path):
  c = tiny_config(1)
  c.stop.metric = "val_loss"
  from experiments import ablation_dropout  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=r"for single runs\); set it to ''"):
    run_sweep(c, ablation_dropout.get_sweep(), str(tmp_path / "sweep"))
  assert not os.path.exists(tmp_path / "sweep")


def test_launch_refuses_a_val_metric_without_a_val_split(tmp_path):
  """The one subprocess: launch.py exits 2 with one error line before any data is loaded or file written."""
  workdir = tmp_path / "w"
  assert_one_error(launch("--experiment=fashion_convnet", "--config.stop.metric=val_loss", f"--workdir={workdir}"),
                   "config.stop.metric='val_loss' needs a validation split", "config.data.val_size > 0")
  assert not workdir.exists()


# ----------------------------------------------------------------------------------------------------------------
# Tiny runs. 5 steps of 16 per epoch. min_delta 1e9: only epoch 1 counts as an improvement, so by hand: the plateau
# (patience 1, factor 0.5, floor 0.3 x the base rate) fires at epochs 2 (x 0.5), 3 (0.25 -> the floor 0.3) and 4
# (at the floor: stays); early stopping (patience 3) fires after epoch 4, two epochs before train.epochs.
def deciding_config():
  c = tiny_config(6)
  c.stop.metric = "val_loss"
  c.stop.patience = 3
  c.stop.min_delta = 1e9
  c.stop.plateau_metric = "val_loss"
  c.stop.plateau_patience = 1
  c.stop.plateau_factor = 0.5
  c.stop.min_learning_rate = 0.3 * c.optim.learning_rate
  c.checkpoint.best = "val_loss"
  c.checkpoint.keep = 10    # every epoch's checkpoint stays: the best epoch's parameters to compare with
  return c


@pytest.fixture(scope="module")
def decided(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("decided") / "run")
  return workdir, train_and_evaluate(deciding_config(), workdir)


def test_the_run_stops_where_its_history_says(decided):
  _, out = decided
  history = out["history"]
  assert [r["epoch"] for r in history] == [1, 2, 3, 4]
  assert out["results"]["stopped_early_at"] == 4
  base = deciding_config().optim.learning_rate
  assert float(optim.learning_rate_of(out["state"].opt_state)) == np.float32(np.float32(0.3 * base))
  assert decide.plateau_epochs(history, deciding_config()) == [2, 3, 4]


def test_a_run_with_patience_stops_at_the_epoch_its_own_losses_give(tmp_path):
  c = tiny_config(4)
  c.stop.metric, c.stop.patience = "val_loss", 1   # random labels: the validation loss soon stops falling
  history = train_and_evaluate(c, str(tmp_path / "run"))["history"]
  losses = [r["val_loss"] for r in history]
  rises = [i + 1 for i in range(1, len(losses)) if losses[i] >= min(losses[:i])]   # epochs (1-based) not improving
  assert rises and len(history) == rises[0] < 4, losses


def test_the_best_checkpoint_holds_the_best_epoch(decided):
  workdir, out = decided
  losses = [r["val_loss"] for r in out["history"]]
  epoch = int(np.argmin(losses)) + 1
  assert out["results"]["best_epoch"] == epoch and out["results"]["best"] == {"val_loss": min(losses)}
  best = checkpoint.load_trained(workdir, checkpoint="best")
  assert best["step"] == 5 * epoch
  captured = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).restore_untyped(5 * epoch)
  assert same_tree(best["variables"]["params"], captured["state"]["train"]["params"])
  assert sorted(os.listdir(checkpoint.best_directory(workdir))) == [str(5 * epoch)]
  latest = checkpoint.load_trained(workdir)
  assert latest["step"] == 20 and same_tree(latest["variables"]["params"], out["state"].params)
  assert export.load(workdir, checkpoint="best").task == "classify"


def test_asking_for_best_where_there_is_none_is_one_line(decided, tmp_path, capsys):
  workdir, _ = decided
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(".lock"))
  shutil.rmtree(checkpoint.best_directory(copy))
  with pytest.raises(UserError, match="keeps no best checkpoint"):
    checkpoint.load_trained(copy, checkpoint="best")
  png = str(tmp_path / "x.png")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((20, 20), np.uint8)).save(png)
  assert launch_py.run(["launch.py", "--mode=predict", f"--workdir={copy}", f"--images={png}",
                        "--checkpoint=best"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "--checkpoint=latest" in err[0]
  assert launch_py.run(["launch.py", "--mode=predict", f"--workdir={workdir}", f"--images={png}",
                        "--checkpoint=best"]) == 0


def test_a_resumed_run_decides_as_the_uninterrupted_one(decided, tmp_path, monkeypatch):
  ref_dir, ref = decided
  workdir = str(tmp_path / "run")
  with monkeypatch.context() as m:
    interrupt_at(m, program_lib, "single_program", at=13)    # inside epoch 3, after the plateau at epoch 2
    with pytest.raises(Interrupted):
      train_and_evaluate(deciding_config(), workdir)
  out = train_and_evaluate(deciding_config(), workdir)
  strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]
  assert strip(out["history"]) == strip(ref["history"])
  assert same_tree(out["state"], ref["state"])   # parameters and the learning rate in the optimizer state
  assert out["results"]["stopped_early_at"] == 4 and out["results"]["best_epoch"] == ref["results"]["best_epoch"]
  assert same_tree(checkpoint.load_trained(workdir, checkpoint="best")["variables"],
                   checkpoint.load_trained(ref_dir, checkpoint="best")["variables"])
