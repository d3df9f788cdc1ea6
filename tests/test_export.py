"""Inference and export: predict with the run's own preprocessing, image files, --mode=predict/export, and ONNX files
run by onnxruntime for every zoo family (batch 1 and 3, max abs difference <= 1e-4 against jcnn).

References are computed here independently: the preprocessing from the training split with numpy, the probabilities
from model.apply, the ONNX outputs by onnxruntime (no jcnn code runs the file).
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, write_idx_dataset
from PIL import Image

from experiments import fashion_convnet
from jcnn import export, models
from jcnn.experiment import run_sweep, train_and_evaluate
from jcnn.train import checkpoint

ort = pytest.importorskip("onnxruntime", reason="the [export] extra is not installed (pip install -e '.[export]')")


def tiny_run(tmp_path, **data):
  c = fashion_convnet.get_config()
  c.data.name, c.data.synthetic_size = "synthetic", (64, 16)
  c.data.update(data)
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 1, 16, 16
  c.model.features, c.model.dense = (4, 4, 4), 8
  workdir = str(tmp_path / "run")
  out = train_and_evaluate(c, workdir)
  return c, workdir, out


def probs(model, variables, x):
  return np.asarray(jax.nn.softmax(jax.jit(lambda x: model.apply(variables, x, train=False))(jnp.asarray(x)), -1))


def test_predict_reuses_the_training_statistics(tmp_path):
  c, workdir, out = tiny_run(tmp_path, preprocess="standardize")
  p = export.load(workdir)
  from jcnn import data as data_lib  # pylint: disable=g-import-not-at-top
  raw = data_lib.synthetic((28, 28, 1), n_train=64, n_test=16)      # the same synthetic images, uint8
  train_u8, test_u8 = raw[0], raw[2]
  mean = train_u8.astype(np.float64).mean() / 255
  std = (train_u8.astype(np.float64) / 255).std()
  model = models.get(c.model, num_classes=10)
  variables = {"params": out["state"].params}
  want = probs(model, variables, (test_u8 / 255 - mean) / std)
  np.testing.assert_allclose(np.asarray(p.predict(test_u8)), want, atol=1e-5)              # uint8 0..255
  np.testing.assert_allclose(np.asarray(p.predict(test_u8 / 255.0)), want, atol=1e-5)      # floats 0..1
  # Inputs with other statistics are not renormalised by their own mean/std.
  half = (test_u8 // 2).astype(np.uint8)
  np.testing.assert_allclose(np.asarray(p.predict(half)), probs(model, variables, (half / 255 - mean) / std),
                             atol=1e-5)


def test_predict_pads_like_training(tmp_path):
  """Zeros are padded before the standardisation, as training pads the raw images (lenet5_mnist's recipe): the
  border the model sees is (0 - mean) / std, not 0."""
  c = fashion_convnet.get_config()
  c.data.name, c.data.synthetic_size, c.data.pad, c.data.preprocess = "synthetic", (32, 8), 2, "standardize"
  c.model = type(c.model)({"name": "lenet5", "activation": "tanh", "dropout_rate": 0.0, "init_scale": 1.0})
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 1, 16, 8
  out = train_and_evaluate(c, str(tmp_path / "run"))
  p = export.load(str(tmp_path / "run"))
  assert p.raw_shape == (28, 28, 1) and p.input_shape == (32, 32, 1)
  x = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
  padded = np.pad(x / 255.0, [(0, 0), (2, 2), (2, 2), (0, 0)])
  stats = checkpoint.load_trained(str(tmp_path / "run"))["meta"]["data"]["preprocess"]
  assert stats["method"] == "standardize" and abs(stats["shift"][0]) > 0.1     # the border is far from 0
  want = probs(models.get(c.model, num_classes=10), {"params": out["state"].params},
               (padded - stats["shift"][0]) / stats["div"][0])
  np.testing.assert_allclose(np.asarray(p.predict(x)), want, atol=1e-5)


def test_mode_predict_and_export_end_to_end(tmp_path):
  """The README's three steps: train, predict on PNG files, export and run the file with onnxruntime alone."""
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (80, 28, 28), dtype=np.uint8)
  labels = (np.arange(80) % 10).astype(np.uint8)
  write_idx_dataset(tmp_path / "fashion_mnist", imgs[:64], labels[:64], imgs[64:], labels[64:])
  env = dict(os.environ, JCNN_DATA_DIR=str(tmp_path))
  workdir = str(tmp_path / "run")
  launch = lambda *a: subprocess.run([sys.executable, "launch.py", *a], cwd=ROOT, env=env, capture_output=True,
                                     text=True, timeout=300)
  assert launch("--experiment=fashion_convnet", "--config.train.epochs=1", "--config.train.batch_size=16",
                f"--workdir={workdir}").returncode == 0
  paths = []
  for i in range(3):
    paths.append(str(tmp_path / f"test{i}.png"))
    Image.fromarray(imgs[64 + i]).save(paths[-1])
  Image.fromarray(np.stack([imgs[64]] * 3, -1)).save(str(tmp_path / "rgb.png"))   # colour -> grey, documented
  proc = launch("--mode=predict", f"--workdir={workdir}", f"--images={','.join(paths)},{tmp_path / 'rgb.png'}",
                "--top_k=2")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  p = export.load(workdir)
  want = np.asarray(p.predict(imgs[64:67, :, :, None]))
  for line, row in zip(lines, want):
    top = int(np.argmax(row))
    assert f"{export.CLASS_NAMES['fashion_mnist'][top]} ({top}) {row[top]:.4f}" in line.split(": ", 1)[1].split(",")[0]
  assert lines[3].split(": ", 1)[1] == lines[0].split(": ", 1)[1]      # the grey-converted RGB copy: same answer
  proc = launch("--mode=export", f"--workdir={workdir}")
  assert proc.returncode == 0 and "input 'images' float32 [batch, 28, 28, 1]" in proc.stdout, proc.stderr
  sess = ort.InferenceSession(os.path.join(workdir, "model.onnx"))
  x = imgs[64:67, :, :, None].astype(np.float32) / 255
  got = sess.run(["probabilities"], {"images": x})[0]
  assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("args,needle", [
    (lambda t: ["--mode=predict", f"--workdir={t}", f"--images={t / 'a.png'}"], "holds no jcnn run"),
    (lambda t: ["--mode=predict", "--workdir=RUN", f"--images={t / 'not_an_image.png'}"], "is not an image"),
    (lambda t: ["--mode=predict", "--workdir=RUN", f"--images={t / 'big.png'}"], "is 30x30 pixels; the model takes "
                                                                                "28x28 (1 channel)"),
    (lambda t: ["--mode=predict", "--workdir=RUN"], "--mode=predict needs --images"),
    (lambda t: ["--mode=serve", "--workdir=RUN"], "flag --mode=serve"),
])
def test_bad_input_is_one_line(args, needle, tmp_path, capsys):
  import launch  # pylint: disable=g-import-not-at-top
  _, workdir, _ = tiny_run(tmp_path)
  (tmp_path / "not_an_image.png").write_text("hello")
  Image.fromarray(np.zeros((30, 30), np.uint8)).save(str(tmp_path / "big.png"))
  argv = [a.replace("RUN", workdir) for a in args(tmp_path)]
  capsys.readouterr()
  assert launch.run(["launch.py", *argv]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


def test_export_without_the_extra_names_the_pip_command(tmp_path, monkeypatch):
  _, workdir, _ = tiny_run(tmp_path)
  monkeypatch.setitem(sys.modules, "jax2onnx", None)      # as if not installed
  with pytest.raises(export.ExportError, match=r"pip install -e '.\[export\]'"):
    export.to_onnx(export.load(workdir), str(tmp_path / "m.onnx"))


def test_sweep_variant_by_index_or_hyperparameters_and_failed_refused(tmp_path):
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  c = fashion_convnet.get_config()
  c.data.name, c.data.synthetic_size = "synthetic", (32, 16)
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 1, 16, 16
  c.model.features, c.model.dense = (4, 4, 4), 8
  c.optim.name = "sgd"
  s = sweep.default_sweep()
  s.seeds = 1
  s.learning_rate = (0.01, 1e12)
  run_sweep(c, s, str(tmp_path / "sw"))
  a = export.load(str(tmp_path / "sw"), 0)
  b = export.load(str(tmp_path / "sw"), {"learning_rate": 0.01})
  x = np.zeros((1, 28, 28, 1), np.uint8)
  np.testing.assert_array_equal(np.asarray(a.predict(x)), np.asarray(b.predict(x)))
  from jcnn.train.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  with pytest.raises(CheckpointError, match="diverged at step"):
    export.load(str(tmp_path / "sw"), {"learning_rate": 1e12})


FAMILIES = [  # (zoo name, fields, one example's shape, dtype): each family's small member
    ("convnet", {"features": (4, 8, 8), "dense": 16}, (28, 28, 1), "float32"),
    ("lenet5", {}, (32, 32, 1), "float32"),
    ("alexnet", {"features": (8, 8, 8, 8, 8), "hidden": 16}, (64, 64, 3), "float32"),
    ("vgg_tiny", {}, (32, 32, 3), "float32"),                                   # VGG with BatchNorm
    ("vgg_tiny", {"batch_norm": False}, (32, 32, 3), "float32"),               # and without
    ("googlenet_tiny", {}, (32, 32, 3), "float32"),
    ("resnet18", {"widths": (4, 8, 8, 8)}, (64, 64, 3), "float32"),             # ImageNet layout (7x7 stem, max-pool)
    ("resnet_tiny", {}, (32, 32, 3), "float32"),                                # CIFAR layout (option A shortcuts)
    ("densenet_tiny", {}, (32, 32, 3), "float32"),
    ("textcnn_tiny", {}, (20,), "int32"),                                       # 1-d convolutions over token ids
]


@pytest.mark.slow
@pytest.mark.parametrize("name,fields,shape,dtype", FAMILIES, ids=[f"{f[0]}{'-nobn' if f[1].get('batch_norm') is False else ''}"
                                                                   for f in FAMILIES])
def test_every_family_exports_and_onnxruntime_matches(name, fields, shape, dtype, tmp_path):
  model = models.get({"name": name, **fields}, num_classes=10)
  x0 = jnp.zeros((1,) + shape, dtype)
  variables = jax.jit(lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x))(x0)
  if "batch_stats" in variables:   # non-trivial running statistics, so the inference form of BatchNorm matters
    variables = dict(variables, batch_stats=jax.tree.map(
        lambda a: a + jax.random.uniform(jax.random.key(3), a.shape, minval=0.1, maxval=0.5), variables["batch_stats"]))
  p = export.predictor(model, variables, preprocess={"method": "scale", "scale": 255.0}, input_shape=shape,
                       input_dtype=dtype)
  path = export.to_onnx(p, str(tmp_path / f"{name}.onnx"))
  sess = ort.InferenceSession(path)
  rng = np.random.default_rng(0)
  for batch in (1, 3):
    x = (rng.integers(0, 20, (batch,) + shape).astype(np.int32) if dtype == "int32" else
         rng.random((batch,) + shape).astype(np.float32))
    got = sess.run(["probabilities"], {"images": x})[0]
    want = probs(model, variables, x)
    assert got.shape == (batch, 10) and np.abs(got - want).max() <= 1e-4
