"""Seeing inside a model: fixed kernels, feature maps, activation maximisation, saliency, retrieval, gradient flow and
the command line, each against an independent reference (numpy loops, hand computations, a second code path)."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jcnn.inspect import cli as inspect_cli, gradflow, retrieval, visualize
from jcnn.models.convnet import ConvNet
from jcnn.nn import kernels, layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def correlate_valid(img, k):
  """Plain numpy loops: out[i, j] = sum_ab k[a, b] img[i + a, j + b] (what a conv layer computes)."""
  kh, kw = k.shape
  out = np.zeros((img.shape[0] - kh + 1, img.shape[1] - kw + 1))
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      out[i, j] = (img[i:i + kh, j:j + kw] * k).sum()
  return out


# ----------------------------------------------------------------------------------------------------------------
# Fixed kernels.
def test_sobel_x_on_a_vertical_step_edge():
  img = np.zeros((5, 6), np.float32)
  img[:, 3:] = 1.0                                   # dark left half, bright right half: a vertical edge
  y = kernels.FixedConv(("sobel_x",), padding="VALID").apply({}, jnp.asarray(img)[None, :, :, None])[0, :, :, 0]
  # Window columns j..j+2: j=0 all dark -> 0; j=1 and j=2 have the bright column under the +1/+2/+1 column and dark
  # under the -1/-2/-1 one -> 1 + 2 + 1 = 4; j=3 all bright -> 4 - 4 = 0.
  np.testing.assert_allclose(y, np.tile([0, 4, 4, 0], (3, 1)))


def test_fixed_conv_has_no_params_and_matches_numpy():
  module = kernels.FixedConv(("sobel_y", "emboss", "gaussian_blur"))
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 7, 6, 2)))
  variables = module.init(jax.random.key(1), jnp.asarray(x))
  assert "params" not in variables and not jax.tree.leaves(variables)
  y = np.asarray(module.apply({}, jnp.asarray(x)))
  assert y.shape == (2, 7, 6, 6)
  hand = {"sobel_y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]], "emboss": [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]],
          "gaussian_blur": np.outer([1, 2, 1], [1, 2, 1]) / 16}
  for b in range(2):
    for c in range(2):
      padded = np.pad(x[b, :, :, c], 1)           # SAME for a 3x3 kernel: one zero on each side
      for k, name in enumerate(("sobel_y", "emboss", "gaussian_blur")):
        np.testing.assert_allclose(y[b, :, :, c * 3 + k], correlate_valid(padded, np.asarray(hand[name])),
                                   rtol=1e-5, atol=1e-5)
  flat = kernels.FixedConv(tuple(kernels.NAMES)).apply({}, jnp.ones((1, 5, 5, 1)))[0, 2, 2]   # interior, flat image
  sums = {n: float(kernels.KERNELS[n].sum()) for n in kernels.NAMES}
  np.testing.assert_allclose(flat, [sums[n] for n in kernels.NAMES], atol=1e-6)
  for n in ("sobel_x", "sobel_y", "horizontal_edge", "vertical_edge", "surround"):
    assert sums[n] == 0                              # edge detectors: zero on flat regions


# ----------------------------------------------------------------------------------------------------------------
# Feature maps, filters.
def small_convnet():
  model = ConvNet(features=(4, 4), dense=8)          # 12x12 input: conv 10, pool 5, conv 3, flatten 36
  variables = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 12, 12, 1)))
  return model, variables


def test_feature_maps_of_conv1_by_hand():
  model, variables = small_convnet()
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 12, 12, 1)))
  k = np.asarray(variables["params"]["conv1"]["kernel"])   # [3, 3, 1, 4]
  bias = np.asarray(variables["params"]["conv1"]["bias"])
  hand = np.stack([np.stack([correlate_valid(x[b, :, :, 0], k[:, :, 0, f]) + bias[f] for f in range(4)], -1)
                   for b in range(2)])                      # [2, 10, 10, 4]
  np.testing.assert_allclose(visualize.feature_maps(model, variables, jnp.asarray(x), "conv1"), hand, atol=1e-5)
  np.testing.assert_allclose(visualize.feature_maps(model, variables, jnp.asarray(x), "act1"), np.maximum(hand, 0),
                             atol=1e-5)
  name, kernel = visualize.first_conv_kernel(model, variables, jnp.asarray(x))
  assert name == "conv1" and np.array_equal(kernel, k)


def test_unknown_layer_names_the_layers():
  model, variables = small_convnet()
  try:
    visualize.feature_maps(model, variables, jnp.zeros((1, 12, 12, 1)), "conv9")
  except ValueError as e:
    assert "conv9" in str(e) and "conv1" in str(e) and "pool1" in str(e)
  else:
    raise AssertionError("no error")


# ----------------------------------------------------------------------------------------------------------------
# Activation maximisation and saliency.
def test_activation_maximisation_increases_every_channel():
  model, variables = small_convnet()
  ims, before, after = visualize.activation_maximisation(model, variables, "conv2", [0, 1, 2, 3], (12, 12, 1),
                                                       jax.random.key(2), steps=30)
  assert ims.shape == (4, 12, 12, 1)
  assert (np.asarray(after) > np.asarray(before)).all(), (before, after)
  # The reported objective is the channel's mean activation of the returned image (second code path).
  for c in range(4):
    direct = visualize.layer_output(model, variables, ims[c:c + 1], "conv2")[..., c].mean()
    np.testing.assert_allclose(after[c], direct, rtol=1e-4, atol=1e-5)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    return layers.Dense(3, name="head")(x.reshape(x.shape[0], -1))


def test_saliency_of_a_linear_model_is_its_weight_row():
  model = Linear()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
  w = np.asarray(variables["params"]["head"]["kernel"])            # [16, 3]
  b = np.asarray(variables["params"]["head"]["bias"])
  x = np.asarray(jax.random.normal(jax.random.key(1), (5, 4, 4, 1)))
  sal, preds = visualize.saliency(model, variables, jnp.asarray(x))
  hand_pred = (x.reshape(5, 16) @ w + b).argmax(1)                   # numpy: logits = x W + b
  assert np.array_equal(np.asarray(preds), hand_pred)
  for i in range(5):                                                 # d(x W + b)[p] / dx = W[:, p]
    np.testing.assert_allclose(sal[i], np.abs(w[:, hand_pred[i]]).reshape(4, 4), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Retrieval.
def test_penultimate_is_the_input_of_the_head():
  model, variables = small_convnet()
  x = jax.random.normal(jax.random.key(3), (3, 12, 12, 1))
  np.testing.assert_allclose(retrieval.penultimate(model, variables, x),
                             visualize.layer_output(model, variables, x, "act_dense1"), atol=1e-6)
  e = retrieval.embed(model, variables, x, batch_size=2)           # a padded last batch
  np.testing.assert_allclose(e, retrieval.penultimate(model, variables, x), atol=1e-6)


def test_query_in_the_index_finds_itself_first():
  index = np.asarray(jax.random.normal(jax.random.key(4), (50, 8)))
  sims, nbrs = retrieval.top_k(jnp.asarray(index[[3, 17, 42]]) * 2.5, jnp.asarray(index), k=5, block=2)
  assert np.asarray(nbrs)[:, 0].tolist() == [3, 17, 42]             # cosine ignores the scale
  np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
  # against a brute-force numpy ranking
  n = index / np.linalg.norm(index, axis=1, keepdims=True)
  np.testing.assert_array_equal(nbrs, np.argsort(-(n[[3, 17, 42]] @ n.T), axis=1)[:, :5])


def test_precision_and_recall_at_k_by_hand():
  # Index: four points on the unit circle (labels 0, 0, 1, 1) and one label-2 point; two queries.
  index = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
  index_labels = np.array([0, 0, 1, 1, 2])
  queries = jnp.array([[1.0, 0.05], [0.6, 0.4]])
  query_labels = np.array([0, 1])
  _, nbrs = retrieval.top_k(queries, index, k=2)
  # Query 0 (angle ~3 deg): nearest are items 0 and 1 (label 0, 0) -> 2 hits. Query 1 (~34 deg): cosines with items
  # 0..3 are .83, .88, .55, .62 -> neighbours 1, 0 (labels 0, 0) -> 0 hits for label 1.
  assert np.asarray(nbrs).tolist() == [[0, 1], [1, 0]]
  m = retrieval.precision_recall_at_k(nbrs, query_labels, index_labels, k=2)
  assert m["precision"] == (2 / 2 + 0 / 2) / 2                      # 0.5
  assert m["recall"] == (2 / 2 + 0 / 2) / 2                         # each label has 2 relevant items in the index
  m1 = retrieval.precision_recall_at_k(nbrs, query_labels, index_labels, k=1)
  assert m1["precision"] == 0.5 and m1["recall"] == (1 / 2 + 0) / 2


# ----------------------------------------------------------------------------------------------------------------
# Gradient flow.
def test_sigmoid_gradients_vanish_toward_the_input():
  x = jax.random.normal(jax.random.key(5), (32, 6, 6, 1))
  y = jnp.arange(32) % 10
  acts = [layers.activation_index(a) for a in ("sigmoid", "tanh", "relu")]
  norms = np.asarray(gradflow.norms_over_training(lambda a: gradflow.DeepMLP(10, 16, activation=a), acts, x, y,
                                                  jax.random.key(6), steps=2, lr=0.05, batch_size=16))
  assert norms.shape == (3, 3, 10)
  assert norms[0, 0, 0] * 100 <= norms[2, 0, 0], norms[:, 0, 0]     # sigmoid's first layer >= 100x below ReLU's
  # Second code path: each activation by name (no switch, no vmap, no scan), plain jax.grad at initialisation.
  for i, name in enumerate(("sigmoid", "tanh", "relu")):
    model = gradflow.DeepMLP(10, 16, activation=name)
    params = model.init(jax.random.key(6), x[:1])["params"]

    def loss(p):
      logits = model.apply({"params": p}, x[:16])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), y[:16]])

    g = jax.grad(loss)(params)
    hand = [float(np.sqrt((np.asarray(g[f"layer{l + 1}"]["kernel"]) ** 2).sum())) for l in range(10)]
    np.testing.assert_allclose(norms[i, 0], hand, rtol=1e-4)


def test_residual_conv_variant_shares_shapes():
  x = jax.random.normal(jax.random.key(7), (8, 6, 6, 1))
  norms = gradflow.norms_over_training(lambda r: gradflow.DeepConv(4, 4, residual=r), [0.0, 1.0], x,
                                       jnp.arange(8) % 10, jax.random.key(8), steps=1, lr=0.01, batch_size=8)
  assert norms.shape == (2, 2, 4) and np.isfinite(norms).all()


# ----------------------------------------------------------------------------------------------------------------
# Command line.
def run_cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "jcnn.inspect", *args], cwd=ROOT, capture_output=True, text=True,
                        env=env, timeout=120)


def test_cli_bad_input_is_one_error_line(tmp_path):
  for args, expect in ((("nonsense",), "invalid choice"),
                       (("filters", f"--workdir={tmp_path}", f"--out={tmp_path}"), "holds no jcnn run (no config.json)"),
                       (("gradient_flow",), "--workdir"),
                       (("summary", "--model=nope"), "unknown model")):
    proc = run_cli(*args)
    assert proc.returncode == 2, (args, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], (args, proc.stderr)


def test_gradient_flow_experiment_config():
  from experiments import gradient_flow  # pylint: disable=g-import-not-at-top
  c = gradient_flow.get_config()
  assert c.name == "gradient_flow" and c.description and "python -m jcnn.inspect gradient_flow" in gradient_flow.__doc__
  assert callable(gradient_flow.main)


def test_a_trained_runs_workdir_feeds_every_capability(tmp_path):
  """--workdir: the run's checkpointed parameters, not a retrained model (feature maps checked against them)."""
  from experiments import fashion_convnet  # pylint: disable=g-import-not-at-top
  from jcnn.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  c = fashion_convnet.get_config()
  c.data.name, c.data.synthetic_size = "synthetic", (64, 32)
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 1, 16, 16
  out = train_and_evaluate(c, str(tmp_path / "run"))
  model, variables, ds = inspect_cli.load_trained(str(tmp_path / "run"))
  leaves = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                        variables["params"], out["state"].params))
  assert all(leaves) and ds.test_x.shape == (32, 28, 28, 1)
  fmaps = visualize.feature_maps(model, variables, ds.test_x[:1], "conv1")
  k, b = np.asarray(variables["params"]["conv1"]["kernel"]), np.asarray(variables["params"]["conv1"]["bias"])
  x = np.asarray(ds.test_x[0, :, :, 0])
  by_hand = sum(x[i:i + 26, j:j + 26, None] * k[i, j, 0] for i in range(3) for j in range(3)) + b   # [26, 26, 32]
  np.testing.assert_allclose(np.asarray(fmaps)[0], by_hand, rtol=1e-4, atol=1e-5)
  assert inspect_cli.main(["filters", f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'pics'}"]) == 0
  assert (tmp_path / "pics" / "filters.png").exists()
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tb" / "inspect"))
  acc.Reload()
  assert acc.Tags()["images"] == ["inspect/filters"]
