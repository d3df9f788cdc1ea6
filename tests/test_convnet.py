"""The Keras MNIST convnet and the MLP baseline: layer shapes, published parameter counts, and a PyTorch replica."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_torch

from jcnn import models
from jcnn.errors import ConfigError
from jcnn.inspect import summary
from jcnn.models.convnet import MLP, ConvNet


def _param_count(model, shape=(28, 28, 1)):
  v = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1,) + shape)))
  return summary.count_params(v["params"])


def test_convnet_layer_shapes_and_params():
  rows = {r["name"]: r for r in summary.layer_rows(ConvNet(), (28, 28, 1))}
  expected = [("conv1", "(26, 26, 32)", 320), ("pool1", "(13, 13, 32)", 0), ("conv2", "(11, 11, 64)", 18496),
              ("pool2", "(5, 5, 64)", 0), ("conv3", "(3, 3, 64)", 36928), ("flatten", "(576,)", 0),
              ("dense1", "(64,)", 36928), ("head", "(10,)", 650)]
  for name, shape, params in expected:
    assert rows[name]["output_shape"] == shape, name
    assert rows[name]["params"] == params, name
  # The same counts from the architecture, by hand: (3*3*C_in + 1) * C_out per conv along the channel chain
  # 1 -> 32 -> 64 -> 64, flatten of 28 -> 26 -> 13 -> 11 -> 5 -> 3 spatial, (in + 1) * out per dense.
  chain, side = (1, 32, 64, 64), 28
  for i, name in enumerate(("conv1", "conv2", "conv3")):
    assert rows[name]["params"] == (3 * 3 * chain[i] + 1) * chain[i + 1], name
    side = side - 2 if i == 2 else (side - 2) // 2
  assert rows["flatten"]["output_shape"] == f"({side * side * 64},)"
  assert rows["dense1"]["params"] == (side * side * 64 + 1) * 64 and rows["head"]["params"] == (64 + 1) * 10
  names = list(rows)
  before_flatten = sum(rows[n]["params"] for n in names[:names.index("flatten")])
  assert before_flatten == 55_744                       # Chollet's summary: "Total params: 55,744" before Flatten
  assert sum(r["params"] for r in rows.values()) == 93_322
  assert _param_count(ConvNet()) == 93_322             # "Total params: 93,322" with the dense head
  text = summary.summary(ConvNet(), (28, 28, 1), flops=False)
  assert "Total params: 93,322" in text


def test_mlp_params():
  assert _param_count(MLP()) == 407_050                # (784 + 1) * 512 + (512 + 1) * 10
  rows = {r["name"]: r for r in summary.layer_rows(MLP(), (28, 28, 1))}
  assert rows["flatten"]["output_shape"] == "(784,)" and rows["dense1"]["params"] == 401_920


def test_prelu_adds_one_slope_per_activation_layer():
  assert _param_count(ConvNet(activation="prelu")) == 93_322 + 4     # act1..act3 and act_dense1
  assert _param_count(MLP(activation="prelu")) == 407_050 + 1
  # Index mode always holds the slope, so every variant of a sweep has the same tree.
  assert _param_count(ConvNet(activation=jnp.int32(2))) == 93_322 + 4


def test_models_get():
  m = models.get({"name": "convnet", "activation": "tanh", "dropout_rate": 0.1}, num_classes=5)
  assert isinstance(m, ConvNet) and m.num_classes == 5 and m.activation == "tanh"
  with pytest.raises(ConfigError, match="unknown model"):
    models.get({"name": "convnett"})
  with pytest.raises(ConfigError, match="does not take"):
    models.get({"name": "mlp", "featurez": 3})


@pytest.fixture(scope="module")
def convnet_and_vars():
  x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  model = ConvNet(lowering="patches")
  return model, jax.jit(model.init)(jax.random.key(1), x), x


def test_convnet_matches_torch_replica(convnet_and_vars):
  torch = require_torch()
  F = torch.nn.functional
  model, variables, x = convnet_and_vars
  p = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), variables["params"])
  conv = lambda t, name: F.relu(F.conv2d(t, p[name]["kernel"].permute(3, 2, 0, 1), p[name]["bias"]))
  t = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)                  # NCHW
  t = F.max_pool2d(conv(t, "conv1"), 2)
  t = F.max_pool2d(conv(t, "conv2"), 2)
  t = conv(t, "conv3")
  t = t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)                     # flatten in HWC order, as the JAX model
  t = F.relu(t @ p["dense1"]["kernel"] + p["dense1"]["bias"])
  ref = (t @ p["head"]["kernel"] + p["head"]["bias"]).numpy()
  y = model.apply(variables, x)
  assert y.shape == (3, 10)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
  y_native = ConvNet(lowering="native").apply(variables, x)             # the two lowerings share parameters
  np.testing.assert_allclose(y_native, y, rtol=1e-4, atol=1e-5)


def test_convnet_dropout_only_in_training(convnet_and_vars):
  _, variables, x = convnet_and_vars
  model = ConvNet(dropout_rate=0.5, lowering="patches")
  eval_out = model.apply(variables, x, train=False)
  np.testing.assert_allclose(eval_out, ConvNet(lowering="patches").apply(variables, x), rtol=1e-6)
  a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
  b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a, eval_out) and not np.allclose(a, b)


def test_convnet_too_small_input_is_a_clear_error():
  with pytest.raises(ValueError, match="smaller than"):
    # 6x6 -> conv1 4x4 -> pool1 2x2 -> conv2's 3x3 kernel does not fit: layers.Conv's own check names it.
    jax.eval_shape(lambda: ConvNet().init(jax.random.key(0), jnp.zeros((1, 6, 6, 1))))
  with pytest.raises(ValueError, match="pooling window"):
    jax.eval_shape(lambda: ConvNet().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))  # 8 -> 6 -> 3 -> 1: pool2
