"""The course's foundations through the whole stack: a regression run on a CSV with two target columns (features and
targets standardised) checked against numpy by hand — the saved model's predictions, predict from the command line
and the ONNX file by onnxruntime, all in the target's units within 1e-4; its metrics, TensorBoard scalars and
picture; a regression sweep's variant against its standalone run; and the bad inputs of the issue, each one line and
exit status 2 with nothing written."""
import csv
import json
import os

import jax
import numpy as np
import pytest

import launch
from conftest import require_onnxruntime
from jcnn import config as config_lib, export, sweep
from jcnn.experiment import run_sweep, train_and_evaluate
from jcnn.inspect import pictures
from jcnn.train import checkpoint


def write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def table(n, seed):
  """Features a ~ U(-1, 1), b ~ U(0, 100) (scales 1 and 100); targets y1 = 3a + 0.02b + 50 (+ noise),
  y2 = 10 sin(a) - 0.01b. -> [n, 4] columns a, b, y1, y2."""
  r = np.random.default_rng(seed)
  a, b = r.uniform(-1, 1, n), r.uniform(0, 100, n)
  return np.stack([a, b, 3 * a + 0.02 * b + 50 + r.normal(0, 0.1, n), 10 * np.sin(a) - 0.01 * b], 1)


def regress_config(path):
  c = config_lib.base_config()
  c.name = "csv_regression"
  c.model.name = "mlp"
  c.model.hidden = (8,)
  c.model.activation = "tanh"
  c.data.name, c.data.path, c.data.target = "csv", path, "y1,y2"
  c.data.preprocess = c.data.target_preprocess = "standardize"
  c.train.task, c.train.loss = "regress", "mse"
  c.train.epochs, c.train.batch_size, c.train.log_every = 3, 16, 8
  c.optim.name, c.optim.learning_rate = "adam", 0.01
  return c


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("regress")
  train, test = table(256, 0), table(64, 1)
  write_csv(root / "train.csv", ["a", "b", "y1", "y2"], train)
  write_csv(root / "test.csv", ["a", "b", "y1", "y2"], test)
  write_csv(root / "inputs.csv", ["b", "a"], test[:, [1, 0]])        # columns by name, in another order
  workdir = str(root / "run")
  out = train_and_evaluate(regress_config(str(root)), workdir)
  return root, workdir, out, train, test


def by_hand(workdir, train, x):
  """The MLP of the newest checkpoint in numpy: inputs z-scored with the training CSV's mean and std, tanh hidden
  layer, outputs times the training targets' std plus their mean (population std, as the course writes it)."""
  p = checkpoint.load_trained(workdir)["variables"]["params"]
  z = (x - train[:, :2].mean(0)) / train[:, :2].std(0)
  h = np.tanh(z @ np.asarray(p["dense1"]["kernel"], np.float64) + np.asarray(p["dense1"]["bias"]))
  o = h @ np.asarray(p["head"]["kernel"], np.float64) + np.asarray(p["head"]["bias"])
  return o * train[:, 2:].std(0) + train[:, 2:].mean(0)                     # [N, 2] in the target's units


def test_regression_predictions_metrics_and_onnx_in_the_target_units(regression_run, capsys):
  root, workdir, out, train, test = regression_run
  want = by_hand(workdir, train, test[:, :2])                                # [64, 2]
  p = export.load(workdir)
  got = np.asarray(p.predict(test[:, None, None, :2].astype(np.float32)))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  # The run's test metrics are the hand predictions' against the test targets.
  final = out["results"]["final"]
  err = want - test[:, 2:]
  assert final["test_rmse"] == pytest.approx(np.sqrt((err ** 2).mean()), rel=1e-4)
  assert final["test_mae"] == pytest.approx(np.abs(err).mean(), rel=1e-4)
  sst = ((test[:, 2:] - test[:, 2:].mean(0)) ** 2).sum()
  assert final["test_r2"] == pytest.approx(1 - (err ** 2).sum() / sst, rel=1e-4)
  assert final["test_r2"] > 0.5 and "test_accuracy" not in final
  # predict from the command line: a CSV of features (named columns, any order), values in the target's units.
  capsys.readouterr()
  assert launch.run(["launch.py", "--mode=predict", f"--workdir={workdir}", f"--inputs={root / 'inputs.csv'}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  printed = np.array([[float(v) for v in line.split(": ")[1].split(", ")] for line in lines])
  np.testing.assert_allclose(printed, want, rtol=1e-5)
  # ONNX: the preprocessing and the inverse target transform inside the graph; run by onnxruntime alone.
  path = export.to_onnx(p, os.path.join(workdir, "model.onnx"))
  sess = require_onnxruntime().InferenceSession(path)
  onnx_out = sess.run(["values"], {"features": test[:, None, None, :2].astype(np.float32)})[0]
  np.testing.assert_allclose(onnx_out, want, rtol=0, atol=1e-4)


def test_regression_run_writes_rmse_to_tensorboard_and_draws_its_surface(regression_run):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  _, workdir, out, train, _ = regression_run
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tb"))
  acc.Reload()
  assert {"train/rmse", "test/rmse", "test/r2", "test/mae"} <= set(acc.Tags()["scalars"])
  assert acc.Scalars("test/rmse")[-1].value == pytest.approx(out["results"]["final"]["test_rmse"], rel=1e-6)
  assert os.path.getsize(os.path.join(workdir, "surface.png")) > 10_000
  ds = type("D", (), {})   # the picture's points are the CSV's own values (features and targets transformed back)
  from jcnn import data as data_lib  # pylint: disable=g-import-not-at-top
  ds = data_lib.load(regress_config(os.path.dirname(workdir)).data, task="regress")
  x, y = pictures.data_points(ds)
  np.testing.assert_allclose(x, train[:, :2], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(y, train[:, 2:], rtol=1e-5, atol=1e-4)


def test_regression_sweep_variant_equals_its_standalone_run(tmp_path):
  c = config_lib.base_config()
  c.model.name, c.model.hidden, c.model.activation = "mlp", (8,), "tanh"
  c.data.name, c.data.synthetic_size, c.data.noise = "toy:sin", (128, 32), 0.1
  c.data.target_preprocess = "center"
  c.train.task, c.train.loss, c.train.epochs, c.train.batch_size = "regress", "huber", 2, 16
  c.optim.name = "adam"
  s = sweep.default_sweep()
  s.seeds, s.learning_rate, s.tolerance = 1, (0.003, 0.03), 0.9
  out = run_sweep(c, s, str(tmp_path / "sweep"))
  assert "test rmse" in out["table"] and "steps to RMSE ≤ 0.9" in out["table"]
  variant = sweep.variants_of(c, s)[1]
  alone = train_and_evaluate(config_lib.variant_config(c, variant), str(tmp_path / "alone"))
  final = out["results"][1]["final"]
  for k in ("test_rmse", "test_mae", "test_r2", "train_rmse", "test_loss"):
    assert final[k] == pytest.approx(alone["results"]["final"][k], rel=1e-4), k
  swept = checkpoint.load_trained(str(tmp_path / "sweep"), 1)["variables"]["params"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), swept, alone["state"].params)
  # Ranked by RMSE, lowest first.
  rows = sorted(out["rows"], key=lambda r: r["rank"])
  assert rows[0]["test_rmse_mean"] <= rows[1]["test_rmse_mean"]


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the fix, exit status 2, nothing written.
@pytest.fixture(scope="module")
def bad_tables(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  write_csv(root / "words.csv", ["x", "y"], [[1, 2], [2, "high"], [3, 4], [4, 5], [5, 6]])
  write_csv(root / "reals.csv", ["x", "y"], [[i, i * 0.5] for i in range(10)])
  write_csv(root / "three.csv", ["x", "y"], [[i, i % 3] for i in range(10)])
  return root


CASES = {
    "non-numeric target": (["--experiment=linear_regression", "--config.data.name=csv", "--config.data.path=T/words.csv",
                            "--config.data.target=y"], "row 3, column 'y' is 'high', not a number; targets are numbers"),
    "classify real labels": (["--experiment=binary_classification", "--config.train.task=classify",
                              "--config.data.name=csv", "--config.data.path=T/reals.csv", "--config.data.target=y"],
                             "is not an integer: labels are class numbers 0, 1, ... (real-valued targets: set "
                             "config.train.task=regress)"),
    "binary three classes": (["--experiment=binary_classification", "--config.data.name=csv",
                              "--config.data.path=T/three.csv", "--config.data.target=y"],
                             "config.train.task=binary needs the classes 0 and 1, but T/three.csv has 3 classes; set "
                             "config.train.task=classify"),
    "log of non-positive": (["--experiment=linear_regression", "--config.data.preprocess=log"],
                            "config.data.preprocess=log needs values > 0"),
    "target transform, classify": (["--experiment=binary_classification", "--config.data.target_preprocess=minmax"],
                                   "set config.data.target_preprocess=none (or config.train.task=regress)"),
    "a convnet on vectors": (["--experiment=fashion_convnet", "--config.data.name=toy:moons"],
                             "feature vectors [1, 1, D] (tables, toy:NAME) go to Dense-only models: set "
                             "config.model.name=mlp"),
    "cross-entropy for regress": (["--experiment=linear_regression", "--config.train.loss=cross_entropy"],
                                  "config.train.loss=cross_entropy does not fit config.train.task=regress: set "
                                  "config.train.loss to one of mse, mae, huber"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(case, bad_tables, tmp_path, capsys):
  args, needle = CASES[case]
  workdir = tmp_path / "wd"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("mine")
  argv = [a.replace("T/", f"{bad_tables}/") for a in args] + [f"--workdir={workdir}"]
  capsys.readouterr()
  assert launch.run(["launch.py", *argv]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: "), err
  assert needle.replace("T/", f"{bad_tables}/") in err, err
  written = sorted(f for f in os.listdir(workdir) if f != ".lock")   # .lock: the workdir's lock (jcnn.train.workdir)
  assert written == ["notes.txt"] and (workdir / "notes.txt").read_text() == "mine"


def test_predict_on_vectors_names_the_right_flag(regression_run, capsys):
  _, workdir, _, _, _ = regression_run
  capsys.readouterr()
  assert launch.run(["launch.py", "--mode=predict", f"--workdir={workdir}", "--images=x.png"]) == 2
  assert "this model takes feature vectors, not images: pass --inputs=FILE.csv" in capsys.readouterr().err
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["config"]["train"]["task"] == "regress"


def test_regression_run_resumes_to_the_same_numbers(tmp_path, capsys):
  """Stopped after epoch 1 and resumed to 2 (the metric sums, R²'s included, are in the checkpoint): the same final
  metrics and parameters as 2 epochs in one go."""
  c = config_lib.base_config()
  c.model.name, c.model.hidden = "mlp", (8,)
  c.data.name, c.data.synthetic_size, c.data.target_preprocess = "toy:surface", (96, 32), "minmax"
  c.train.task, c.train.loss, c.train.epochs, c.train.batch_size, c.train.log_every = "regress", "mae", 2, 16, 4
  once = train_and_evaluate(c, str(tmp_path / "once"))
  c.train.epochs = 1
  train_and_evaluate(c, str(tmp_path / "twice"))
  os.remove(tmp_path / "twice" / "results.json")   # as if killed after epoch 1's checkpoint
  c.train.epochs = 2
  capsys.readouterr()
  again = train_and_evaluate(c, str(tmp_path / "twice"))
  assert "resumed from the checkpoint at step 6" in capsys.readouterr().out
  assert again["results"]["final"] == pytest.approx({k: v for k, v in once["results"]["final"].items()} |
                                                    {"epoch_seconds": again["results"]["final"]["epoch_seconds"]})
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again["state"].params,
               once["state"].params)


def test_linear_regression_recovers_the_generators_line(tmp_path):
  """The experiment's recipe (5 of its 20 epochs): one neuron's weights, in results.json, are w and b of y = 2x - 1."""
  from experiments import linear_regression  # pylint: disable=g-import-not-at-top
  from jcnn.data import toys  # pylint: disable=g-import-not-at-top
  c = linear_regression.get_config()
  c.train.epochs = 5
  train_and_evaluate(c, str(tmp_path / "lin"))
  with open(tmp_path / "lin" / "results.json") as f:
    weights = json.load(f)["weights"]
  assert abs(weights["kernel"][0][0] - toys.LINE_W) < 1e-2 and abs(weights["bias"][0] - toys.LINE_B) < 1e-2
