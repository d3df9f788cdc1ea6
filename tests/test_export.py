"""Inference and export: predict with the run's own preprocessing, image files, --mode=predict/export, and ONNX files
run by onnxruntime for every zoo family (batch 1 and 3) and for a run with standardisation and padding.

References are computed here independently: the preprocessing from the training split with numpy, the logits from
model.apply, grey levels from ITU-R 601-2's weights, the ONNX outputs by onnxruntime (no jcnn code runs the file).
ONNX files output probabilities; they are compared as logits (log p centred per row, `assert_same_logits`), where a
1e-3 error in one logit fails, not as probabilities (~0.1 each for small models, where such an error is ~1e-4).
"""
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, require_onnxruntime, write_idx_dataset
from PIL import Image

from experiments import fashion_convnet
from jcnn import export, models
from jcnn.experiment import run_sweep, train_and_evaluate
from jcnn.train import checkpoint

def tiny_run(tmp_path, **data):
  c = fashion_convnet.get_config()
  c.data.name, c.data.synthetic_size = "synthetic", (64, 16)
  c.data.update(data)
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 1, 16, 16
  c.model.features, c.model.dense = (4, 4, 4), 8
  workdir = str(tmp_path / "run")
  out = train_and_evaluate(c, workdir)
  return c, workdir, out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """One tiny trained run (fashion_convnet on 28x28x1 synthetic images, `scale`), shared by the tests that only read
  it."""
  return tiny_run(tmp_path_factory.mktemp("tiny"))


def logits(model, variables, x):
  return np.asarray(jax.jit(lambda x: model.apply(variables, x, train=False))(jnp.asarray(x)))


LOGIT_ATOL = 2e-5


def assert_same_logits(probabilities, want_logits, atol=LOGIT_ATOL):
  """ONNX files output probabilities p = softmax(z): log p = z - logsumexp(z), the logits up to a per-row constant, so
  log p minus its row mean equals z minus its row mean. Compared there, a 1e-3 error in one logit moves its centred
  value by 1e-3 * (1 - 1/K) >= 5e-4, far above `atol` (test_a_1e3_logit_error_fails_the_comparison)."""
  got = np.log(np.asarray(probabilities, np.float64))
  want = np.asarray(want_logits, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(got - got.mean(-1, keepdims=True), want - want.mean(-1, keepdims=True), rtol=0,
                             atol=atol)


def test_a_1e3_logit_error_fails_the_comparison():
  """The comparison the ONNX tests use catches a 1e-3 error in one logit of 10, which probabilities near 0.1 compared
  at 1e-4 (the old check) let through; an exact copy and a per-row constant (softmax ignores it) pass."""
  z = np.random.default_rng(0).normal(0, 0.1, (3, 10))            # an untrained model's logits: p ~ 0.1 each
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)                  # numpy's softmax, float64
  assert_same_logits(p.astype(np.float32), z)
  assert_same_logits(p, z + np.array([[1.0], [-2.0], [5.0]]))       # a constant per row is no error
  bad = z.copy()
  bad[1, 4] += 1e-3
  with pytest.raises(AssertionError):
    assert_same_logits(p, bad)
  q = np.exp(bad) / np.exp(bad).sum(-1, keepdims=True)
  assert np.abs(q - p).max() < 1e-4                                 # what the probability check at 1e-4 missed


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
  want = logits(model, variables, (test_u8 / 255 - mean) / std)
  assert_same_logits(p.predict(test_u8), want)              # uint8 0..255
  assert_same_logits(p.predict(test_u8 / 255.0), want)      # floats 0..1
  # Inputs with other statistics are not renormalised by their own mean/std.
  half = (test_u8 // 2).astype(np.uint8)
  assert_same_logits(p.predict(half), logits(model, variables, (half / 255 - mean) / std))


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
  """LeNet-5 on 28x28 synthetic images zero-padded to 32x32 and standardised (lenet5_mnist's recipe), one epoch:
  (its predictor, the reference: the model's logits on raw uint8 images [B, 28, 28, 1], computed with numpy's preprocessing)."""
  c = fashion_convnet.get_config()
  c.data.name, c.data.synthetic_size, c.data.pad, c.data.preprocess = "synthetic", (32, 8), 2, "standardize"
  c.model = type(c.model)({"name": "lenet5", "activation": "tanh", "dropout_rate": 0.0, "init_scale": 1.0})
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 1, 16, 8
  workdir = str(tmp_path_factory.mktemp("padded") / "run")
  out = train_and_evaluate(c, workdir)
  stats = checkpoint.load_trained(workdir)["meta"]["data"]["preprocess"]
  assert stats["method"] == "standardize" and abs(stats["shift"][0]) > 0.1     # the border is far from 0
  model, variables = models.get(c.model, num_classes=10), {"params": out["state"].params}

  def reference(x_u8):   # zeros padded before the standardisation, as training pads the raw images
    padded_x = np.pad(x_u8 / 255.0, [(0, 0), (2, 2), (2, 2), (0, 0)])
    return logits(model, variables, (padded_x - stats["shift"][0]) / stats["div"][0])
  return export.load(workdir), reference


def test_predict_pads_like_training(padded):
  """Zeros are padded before the standardisation, as training pads the raw images (lenet5_mnist's recipe): the
  border the model sees is (0 - mean) / std, not 0."""
  p, reference = padded
  assert p.raw_shape == (28, 28, 1) and p.input_shape == (32, 32, 1)
  x = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
  assert_same_logits(p.predict(x), reference(x))


def test_onnx_of_a_standardised_padded_run_matches_on_raw_images(padded, tmp_path):
  """The ONNX file takes raw images at the dataset's size (28x28, in [0, 1]) and pads and standardises inside the
  graph with the saved training statistics: onnxruntime's logits equal the reference's (numpy padding, then
  (x - mean) / std, then model.apply), and its probabilities jcnn's own predict."""
  ort = require_onnxruntime()
  p, reference = padded
  sess = ort.InferenceSession(export.to_onnx(p, str(tmp_path / "padded.onnx")))
  assert [tuple(i.shape)[1:] for i in sess.get_inputs()] == [(28, 28, 1)]
  rng = np.random.default_rng(1)
  for batch in (1, 3):
    x = rng.integers(0, 256, (batch, 28, 28, 1)).astype(np.uint8)
    got = sess.run(["probabilities"], {"images": x.astype(np.float32) / 255})[0]
    assert_same_logits(got, reference(x))
    np.testing.assert_allclose(got, np.asarray(p.predict(x)), rtol=0, atol=1e-6)


def test_export_traces_xla_convolutions_whether_or_not_onednn_is_built(padded, tmp_path, monkeypatch):
  """A custom call cannot be exported: ONNX export traces XLA's convolution lowering, so the file is the same graph
  with oneDNN built (predict then runs oneDNN's convolutions) and without it."""
  import onnx  # pylint: disable=g-import-not-at-top
  from jcnn.nn import onednn  # pylint: disable=g-import-not-at-top
  p, _ = padded
  assert onednn.unavailable() is None
  graphs = []
  for off in (False, True):
    if off:
      monkeypatch.setattr(onednn, "unavailable", lambda: "turned off by JCNN_ONEDNN=0")
    g = onnx.load(export.to_onnx(p, str(tmp_path / f"m{int(off)}.onnx"))).graph
    graphs.append(([n.op_type for n in g.node], [n.domain for n in g.node],
                   sorted((i.name, onnx.numpy_helper.to_array(i).tobytes()) for i in g.initializer)))
  assert graphs[0] == graphs[1] and set(graphs[0][1]) <= {"", "ai.onnx"}        # standard ops only, no custom call
  assert "Conv" not in graphs[0][0] and "MatMul" in graphs[0][0]                # the im2col lowering: slices + MatMul


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
  sess = require_onnxruntime().InferenceSession(os.path.join(workdir, "model.onnx"))
  x = imgs[64:67, :, :, None].astype(np.float32) / 255
  got = sess.run(["probabilities"], {"images": x})[0]
  assert_same_logits(got, logits(p.model, p.variables, x))      # `scale`: the model takes x / 255 as it is
  # docs/inference.md's python block, as printed, in a folder laid out as its commands leave it
  from test_docs import docs_block, run_block  # pylint: disable=g-import-not-at-top
  here = tmp_path / "user"
  os.makedirs(here / "runs")
  os.symlink(workdir, here / "runs" / "mine")
  shutil.copy(paths[0], here / "boot.png")
  printed = run_block(docs_block("ort.InferenceSession"), here)        # "[9] [0.9746713]": top class, its probability
  top, prob = re.fullmatch(r"\[(\d+)\] \[([\d.e-]+)\]\s*", printed).groups()
  assert int(top) == int(np.argmax(want[0])) and abs(float(prob) - want[0].max()) < 1e-5


@pytest.mark.parametrize("args,needle", [
    (lambda t: ["--mode=predict", f"--workdir={t}", f"--images={t / 'a.png'}"], "holds no jcnn run"),
    (lambda t: ["--mode=predict", "--workdir=RUN", f"--images={t / 'not_an_image.png'}"], "is not an image"),
    (lambda t: ["--mode=predict", "--workdir=RUN", f"--images={t / 'big.png'}"], "is 30x30 pixels; the model takes "
                                                                                "28x28 (1 channel)"),
    (lambda t: ["--mode=predict", "--workdir=RUN", f"--images={t / 'clear.png'}"], "clear.png has transparent pixels; "
                                                                                  "flatten it onto a background"),
    (lambda t: ["--mode=predict", "--workdir=RUN"], "--mode=predict needs --images"),
    (lambda t: ["--mode=serve", "--workdir=RUN"], "flag --mode=serve"),
])
def test_bad_input_is_one_line(args, needle, tiny, tmp_path, capsys):
  import launch  # pylint: disable=g-import-not-at-top
  _, workdir, _ = tiny
  (tmp_path / "not_an_image.png").write_text("hello")
  Image.fromarray(np.zeros((30, 30), np.uint8)).save(str(tmp_path / "big.png"))
  clear = np.full((28, 28, 4), 200, np.uint8)
  clear[5, 7, 3] = 254                                       # one pixel not quite opaque
  Image.fromarray(clear, "RGBA").save(str(tmp_path / "clear.png"))
  argv = [a.replace("RUN", workdir) for a in args(tmp_path)]
  capsys.readouterr()
  assert launch.run(["launch.py", *argv]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


def luma601(rgb):
  """ITU-R 601-2 luma, Pillow's documented 'L' conversion: L = R * 299/1000 + G * 587/1000 + B * 114/1000 (float64)."""
  rgb = np.asarray(rgb, np.float64)
  return rgb[..., 0] * 299 / 1000 + rgb[..., 1] * 587 / 1000 + rgb[..., 2] * 114 / 1000


def test_image_files_are_converted_as_documented(tiny, tmp_path):
  """--mode=predict's conversions (README "Inference and export"): colour -> grey with ITU-R 601 luma for a 1-channel
  model, grey -> three equal channels for a 3-channel one, a fully opaque alpha channel dropped, transparency refused.
  Colours with R != G != B, so that other luma weights (BT.709's 0.2126/0.7152/0.0722, the plain mean) fail."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
  rgb[0, :3] = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]              # primaries: luma 76.2, 149.7, 29.1
  grey = rng.integers(0, 256, (4, 5)).astype(np.uint8)
  save = lambda a, name: Image.fromarray(a).save(str(tmp_path / name)) or str(tmp_path / name)   # mode from shape
  opaque = np.concatenate([rgb, np.full((4, 5, 1), 255, np.uint8)], -1)
  files = {"rgb": save(rgb, "rgb.png"), "grey": save(grey, "grey.png"), "rgba": save(opaque, "rgba.png"),
           "la": save(np.stack([grey, np.full_like(grey, 255)], -1), "la.png")}
  # Colour -> grey: Pillow rounds the weighted sum (fixed point), so within 0.5 of the exact value, never further.
  for name in ("rgb", "rgba"):
    got = export.read_image(files[name], (4, 5, 1))
    assert got.shape == (4, 5, 1) and got.dtype == np.uint8
    assert np.abs(got[..., 0] - luma601(rgb)).max() <= 0.5 + 1e-3, name
  assert export.read_image(files["rgb"], (4, 5, 1))[0, :3, 0].tolist() == [76, 150, 29]
  # Grey -> RGB: three channels, each the grey levels exactly; RGB and opaque RGBA into RGB: the pixels as they are.
  for name in ("grey", "la"):
    np.testing.assert_array_equal(export.read_image(files[name], (4, 5, 3)), np.stack([grey] * 3, -1))
    np.testing.assert_array_equal(export.read_image(files[name], (4, 5, 1))[..., 0], grey)
  np.testing.assert_array_equal(export.read_image(files["rgba"], (4, 5, 3)), rgb)
  np.testing.assert_array_equal(export.read_image(files["rgb"], (4, 5, 3)), rgb)
  # Transparency anywhere (RGBA, grey + alpha, a palette's transparent index) is refused, naming the file and the fix.
  see_through = opaque.copy()
  see_through[3, 4, 3] = 254
  la = np.stack([grey, np.full_like(grey, 255)], -1)
  la[0, 0, 1] = 0
  palette = Image.frombytes("P", (5, 4), (grey % 4).tobytes())
  palette.putpalette([0, 0, 0, 90, 90, 90, 180, 180, 180, 255, 255, 255])
  palette.save(str(tmp_path / "p.png"), transparency=int(grey[2, 2] % 4))   # an index the image uses
  for path in (save(see_through, "a.png"), save(la, "b.png"), str(tmp_path / "p.png")):
    for shape in ((4, 5, 1), (4, 5, 3)):
      with pytest.raises(export.ExportError, match=f"^{path} has transparent pixels; flatten it onto a background"):
        export.read_image(path, shape)
  # Through predict_files: a colour file gets the probabilities of its 601 luma image (the tiny run takes 28x28x1).
  # Pixels whose luma lies within 0.01 of a rounding tie are made grey, so rounding the exact luma is Pillow's value.
  p = export.load(tiny[1])
  big = rng.integers(0, 256, (28, 28, 3)).astype(np.uint8)
  tie = np.abs(luma601(big) % 1 - 0.5) < 0.01
  big[tie] = big[tie][:, :1]
  [row] = export.predict_files(p, [save(big, "big.png")], top_k=10)
  want = np.asarray(p.predict(np.round(luma601(big)).astype(np.uint8)[None, :, :, None]))[0]
  got = np.zeros(10)
  got[[t["class"] for t in row["top"]]] = [t["probability"] for t in row["top"]]
  assert sorted(t["class"] for t in row["top"]) == list(range(10))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_export_without_the_extra_names_the_pip_command(tiny, tmp_path, monkeypatch):
  _, workdir, _ = tiny
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
  sess = require_onnxruntime().InferenceSession(path)
  rng = np.random.default_rng(0)
  for batch in (1, 3):
    x = (rng.integers(0, 20, (batch,) + shape).astype(np.int32) if dtype == "int32" else
         rng.random((batch,) + shape).astype(np.float32))
    got = sess.run(["probabilities"], {"images": x})[0]
    assert got.shape == (batch, 10)
    assert_same_logits(got, logits(model, variables, x))
