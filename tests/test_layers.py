"""jcnn.nn.layers against hand-computed values and independent implementations (lax, flax.linen, numpy loops)."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_torch
from jax import lax

from jcnn.nn import layers

LOWERINGS = ("patches", "native")


# ----------------------------------------------------------------------------------------------------------------
# Output-size formula.
@pytest.mark.parametrize("n,f,p,s,d,expected", [
    (5, 3, 1, 2, 1, 3),      # CS231n: 5x5 input, 3x3 filter, pad 1, stride 2 -> 3
    (7, 3, 0, 1, 1, 5),      # CS231n: 7x7, 3x3, stride 1 -> 5
    (7, 3, 0, 2, 1, 3),      # stride 2 -> 3
    (28, 3, 0, 1, 1, 26),    # the Keras convnet's first conv
    (32, 5, 2, 1, 1, 32),    # "same" padding p = (f - 1) / 2 keeps the size
    (227, 11, 0, 4, 1, 55),  # AlexNet conv1
    (224, 7, 3, 2, 1, 112),  # ResNet stem
    (6, 3, 0, 2, 1, 2),      # floor((6 - 3) / 2) + 1 = 2: the last column is never visited
    (10, 3, 0, 1, 2, 6),     # dilation 2: effective filter 5 -> 10 - 5 + 1
])
def test_conv_output_size(n, f, p, s, d, expected):
  assert layers.conv_output_size(n, f, p, s, d) == expected
  if d == 1:
    assert expected == (n + 2 * p - f) // s + 1


def _reference_conv(x, kernel, strides, padding, dilation):
  """lax.conv_general_dilated with lax's own padding resolution: an implementation independent of layers.Conv."""
  nd = kernel.ndim - 2
  sp = "HWD"[:nd]
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape, ("N" + sp + "C", sp + "IO", "N" + sp + "C"))
  if isinstance(padding, int):
    padding = [(padding, padding)] * nd
  return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=dn,
                                  precision=lax.Precision.HIGHEST)


CONV_CASES = [
    # spatial, kernel, strides, padding, dilation, expected spatial output
    ((9, 9), (3, 3), (1, 1), "VALID", (1, 1), (7, 7)),
    ((9, 9), (3, 3), (2, 2), "VALID", (1, 1), (4, 4)),
    ((9, 8), (3, 3), (1, 1), "SAME", (1, 1), (9, 8)),
    ((9, 8), (3, 3), (2, 2), "SAME", (1, 1), (5, 4)),       # SAME: ceil(n / s)
    ((9, 9), (3, 3), (2, 2), 1, (1, 1), (5, 5)),            # explicit int padding
    ((9, 10), (3, 2), (2, 3), [(2, 0), (1, 1)], (1, 1), (5, 4)),   # explicit (lo, hi) pairs, per-dim strides
    ((11, 11), (3, 3), (1, 1), "VALID", (2, 2), (7, 7)),    # dilation 2: effective 5x5
    ((11, 11), (3, 3), (1, 1), "SAME", (2, 2), (11, 11)),
    ((20,), (5,), (1,), "VALID", (1,), (16,)),              # 1-d (text)
    ((20,), (3,), (3,), 2, (1,), (8,)),
    ((20,), (3,), (1,), "SAME", (3,), (20,)),
]


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("spatial,ks,strides,padding,dilation,expected", CONV_CASES)
def test_conv_shapes_and_values_match_lax(spatial, ks, strides, padding, dilation, expected, lowering):
  x = jax.random.normal(jax.random.key(0), (2,) + spatial + (3,))
  conv = layers.Conv(4, ks, strides=strides, padding=padding, kernel_dilation=dilation, lowering=lowering)
  variables = conv.init(jax.random.key(1), x)
  y = conv.apply(variables, x)
  assert y.shape == (2,) + expected + (4,)
  # Shapes agree with the formula for explicit integer padding.
  if isinstance(padding, int) or padding == "VALID":
    p = 0 if padding == "VALID" else padding
    assert expected == tuple(layers.conv_output_size(n, k, p, s, d)
                             for n, k, s, d in zip(spatial, ks, strides, dilation))
  ref = _reference_conv(x, variables["params"]["kernel"], strides, padding, dilation) + variables["params"]["bias"]
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_conv_matches_torch():
  torch = require_torch()
  x = np.random.default_rng(0).normal(size=(2, 10, 9, 3)).astype(np.float32)
  conv = layers.Conv(5, (3, 3), strides=2, padding=1, kernel_dilation=2, lowering="patches")
  variables = conv.init(jax.random.key(0), x)
  k, b = (np.asarray(variables["params"][n]) for n in ("kernel", "bias"))
  ref = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(k).permute(3, 2, 0, 1),
                                   torch.from_numpy(b), stride=2, padding=1, dilation=2)
  np.testing.assert_allclose(conv.apply(variables, x), ref.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)


def test_conv_rejects_input_smaller_than_kernel():
  with pytest.raises(ValueError, match="smaller than"):
    layers.Conv(2, (3, 3)).init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))
  with pytest.raises(ValueError, match="expected input"):
    layers.Conv(2, (3, 3)).init(jax.random.key(0), jnp.zeros((2, 2, 1)))


# ----------------------------------------------------------------------------------------------------------------
# The CS231n worked example: a 5x5x3 input, zero-padded by 1 to 7x7x3, two 3x3x3 filters, stride 2 -> 3x3x2.
# Input and filters are written channel by channel (X[c] is the c-th colour channel).
CS_X = np.array([
    [[0, 1, 2, 0, 1], [2, 2, 0, 0, 1], [1, 0, 1, 2, 2], [0, 2, 1, 1, 0], [2, 0, 0, 1, 2]],    # channel 0
    [[1, 0, 0, 2, 1], [0, 1, 2, 1, 0], [2, 2, 0, 0, 1], [1, 0, 2, 1, 2], [0, 1, 1, 0, 2]],    # channel 1
    [[2, 1, 0, 1, 0], [1, 0, 1, 2, 2], [0, 2, 2, 0, 1], [2, 1, 0, 0, 1], [1, 1, 2, 2, 0]],    # channel 2
], np.float32)
CS_W0 = np.array([[[1, 0, -1], [0, 1, 0], [-1, 1, 1]],
                  [[0, -1, 0], [1, 0, 1], [0, 1, -1]],
                  [[-1, 1, 0], [0, -1, 1], [1, 0, 0]]], np.float32)
CS_W1 = np.array([[[0, 1, 1], [-1, 0, 1], [1, -1, 0]],
                  [[1, 1, 0], [0, 0, -1], [-1, 0, 1]],
                  [[0, 0, 1], [1, -1, 0], [0, 1, -1]]], np.float32)
CS_B = np.array([1, 0], np.float32)


def _numpy_conv_loop(x_chw, filters, bias, stride, pad):
  """Plain loops: out[i, j, k] = sum over (c, u, v) of padded[c, s*i + u, s*j + v] * filters[k][c, u, v] + bias[k]."""
  c, h, w = x_chw.shape
  xp = np.zeros((c, h + 2 * pad, w + 2 * pad), np.float64)
  xp[:, pad:pad + h, pad:pad + w] = x_chw
  f = filters[0].shape[-1]
  oh, ow = (h + 2 * pad - f) // stride + 1, (w + 2 * pad - f) // stride + 1
  out = np.zeros((oh, ow, len(filters)))
  for k, wk in enumerate(filters):
    for i in range(oh):
      for j in range(ow):
        total = bias[k]
        for ch in range(c):
          for u in range(f):
            for v in range(f):
              total += xp[ch, stride * i + u, stride * j + v] * wk[ch, u, v]
        out[i, j, k] = total
  return out


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_cs231n_worked_example(lowering):
  x = CS_X.transpose(1, 2, 0)[None]                              # [1, 5, 5, 3] (HWC)
  kernel = np.stack([CS_W0, CS_W1], -1).transpose(1, 2, 0, 3)    # [3, 3, 3 in, 2 out] (HWIO)
  conv = layers.Conv(2, (3, 3), strides=2, padding=1, lowering=lowering)
  y = np.asarray(conv.apply({"params": {"kernel": kernel, "bias": CS_B}}, x))[0]
  assert y.shape == (3, 3, 2)

  # Output (0, 0) of filter 0: the window is padded rows/cols 0..2.
  #   channel 0 window [[0,0,0],[0,0,1],[0,2,2]] * W0[0] = 1*0 + 2*1 + 2*1            =  4
  #   channel 1 window [[0,0,0],[0,1,0],[0,0,1]] * W0[1] = 1*0 + 1*(-1)                = -1
  #   channel 2 window [[0,0,0],[0,2,1],[0,1,0]] * W0[2] = 2*(-1) + 1*1 + 1*0          = -1
  #   4 - 1 - 1 + bias 1 = 3
  assert y[0, 0, 0] == 3
  # Output (1, 1) of filter 0: padded rows/cols 2..4.
  #   channel 0 [[2,0,0],[0,1,2],[2,1,1]] * W0[0] = 2 + 1 - 2 + 1 + 1                 =  3
  #   channel 1 [[1,2,1],[2,0,0],[0,2,1]] * W0[1] = -2 + 2 + 2 - 1                     =  1
  #   channel 2 [[0,1,2],[2,2,0],[1,0,0]] * W0[2] = 1 - 2 + 1                          =  0
  #   3 + 1 + 0 + bias 1 = 5
  assert y[1, 1, 0] == 5
  # Output (2, 2) of filter 1: padded rows/cols 4..6 (the last two rows/cols are padding).
  #   channel 0 [[1,0,0],[1,2,0],[0,0,0]] * W1[0] = 0 - 1 + 0                          = -1
  #   channel 1 [[1,2,0],[0,2,0],[0,0,0]] * W1[1] = 1 + 2 + 0                          =  3
  #   channel 2 [[0,1,0],[2,0,0],[0,0,0]] * W1[2] = 0 + 2                              =  2
  #   -1 + 3 + 2 + bias 0 = 4
  assert y[2, 2, 1] == 4
  expected = np.array([[[3, -1], [5, -1], [7, 1]],
                       [[8, 3], [5, 9], [3, 0]],
                       [[3, 2], [0, 4], [3, 4]]], np.float32)
  np.testing.assert_array_equal(_numpy_conv_loop(CS_X, [CS_W0, CS_W1], CS_B, 2, 1), expected)
  np.testing.assert_allclose(y, expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Pooling.
POOL_X = np.array([[1, 1, 2, 4],
                   [5, 6, 7, 8],
                   [3, 2, 1, 0],
                   [1, 2, 3, 4]], np.float32)[None, :, :, None]     # [1, 4, 4, 1], CS231n's max-pool example


def test_pool_values_by_hand():
  np.testing.assert_array_equal(layers.max_pool(POOL_X)[0, :, :, 0], [[6, 8], [3, 4]])
  # (1+1+5+6)/4, (2+4+7+8)/4, (3+2+1+2)/4, (1+0+3+4)/4
  np.testing.assert_allclose(layers.avg_pool(POOL_X)[0, :, :, 0], [[3.25, 5.25], [2.0, 2.0]])
  np.testing.assert_allclose(layers.global_avg_pool(POOL_X), [[POOL_X.mean()]])


def test_pool_overlapping_windows():
  # 3x3 windows at stride 1 on 4x4 -> 2x2; max over rows 0-2/cols 0-2 is 7, rows 0-2/cols 1-3 is 8, ...
  np.testing.assert_array_equal(layers.max_pool(POOL_X, (3, 3), strides=1)[0, :, :, 0], [[7, 8], [7, 8]])
  # mean over rows 0-2 / cols 0-2 = (1+1+2+5+6+7+3+2+1)/9 = 28/9
  avg = layers.avg_pool(POOL_X, (3, 3), strides=1)[0, :, :, 0]
  np.testing.assert_allclose(avg[0, 0], 28 / 9, rtol=1e-6)
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
  for window, strides in (((2, 2), (1, 1)), ((3, 3), (2, 2)), ((3, 2), (1, 2))):
    np.testing.assert_allclose(layers.max_pool(x, window, strides), nn.max_pool(x, window, strides), rtol=1e-6)
    np.testing.assert_allclose(layers.avg_pool(x, window, strides), nn.avg_pool(x, window, strides), rtol=1e-5, atol=1e-6)


def test_pool_same_padding():
  # SAME 3x3 stride 1 keeps 4x4; the corner window sees only x[0:2, 0:2] = 1, 1, 5, 6.
  mx = layers.max_pool(POOL_X, (3, 3), strides=1, padding="SAME")[0, :, :, 0]
  av = layers.avg_pool(POOL_X, (3, 3), strides=1, padding="SAME")[0, :, :, 0]
  assert mx.shape == (4, 4) and mx[0, 0] == 6
  np.testing.assert_allclose(av[0, 0], 13 / 4)            # padding is not counted in the average
  x = jax.random.normal(jax.random.key(1), (2, 5, 7, 2)) - 3.0   # negative: a zero-padded max would be wrong
  for window, strides in (((3, 3), (1, 1)), ((2, 2), (2, 2)), ((3, 3), (2, 2))):
    got_max = layers.max_pool(x, window, strides, "SAME")
    got_avg = layers.avg_pool(x, window, strides, "SAME")
    np.testing.assert_allclose(got_max, nn.max_pool(x, window, strides, "SAME"), rtol=1e-6)
    np.testing.assert_allclose(got_avg, nn.avg_pool(x, window, strides, "SAME", count_include_pad=False), rtol=1e-5)


def test_max_pool_gradient_goes_to_argmax_only():
  g = jax.grad(lambda x: layers.max_pool(x).sum())(jnp.asarray(POOL_X))[0, :, :, 0]
  np.testing.assert_array_equal(g, [[0, 0, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1]])
  # A weighted upstream gradient lands, value for value, on each window's arg-max.
  w = jnp.array([[10.0, 20.0], [30.0, 40.0]])[None, :, :, None]
  g = jax.grad(lambda x: (layers.max_pool(x) * w).sum())(jnp.asarray(POOL_X))[0, :, :, 0]
  np.testing.assert_array_equal(g, [[0, 0, 0, 0], [0, 10, 0, 20], [30, 0, 0, 0], [0, 0, 0, 40]])
  # Overlapping 3x3/stride-1 windows: 7 at (1, 2) wins two windows, 8 at (1, 3) the other two.
  g = jax.grad(lambda x: layers.max_pool(x, (3, 3), 1).sum())(jnp.asarray(POOL_X))[0, :, :, 0]
  expected = np.zeros((4, 4))
  expected[1, 2], expected[1, 3] = 2, 2
  np.testing.assert_array_equal(g, expected)


def test_pool_modules_and_errors():
  np.testing.assert_array_equal(layers.MaxPool((2, 2)).apply({}, POOL_X), layers.max_pool(POOL_X))
  np.testing.assert_array_equal(layers.AvgPool((2, 2)).apply({}, POOL_X), layers.avg_pool(POOL_X))
  assert layers.Flatten().apply({}, jnp.zeros((3, 2, 2, 5))).shape == (3, 20)
  with pytest.raises(ValueError, match="larger than its input"):
    layers.max_pool(POOL_X, (5, 5))


# ----------------------------------------------------------------------------------------------------------------
# Activations: values and derivatives against closed forms evaluated with the math module.
def _sig(x):
  return 1 / (1 + math.exp(-x))


def _phi(x):   # standard normal CDF
  return 0.5 * (1 + math.erf(x / math.sqrt(2)))


RRELU_MEAN = (1 / 8 + 1 / 3) / 2
HAND = {   # name: (f(x), f'(x)) for x != 0
    "sigmoid": (_sig, lambda x: _sig(x) * (1 - _sig(x))),
    "tanh": (math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    "relu": (lambda x: max(x, 0.0), lambda x: float(x > 0)),
    "leaky_relu": (lambda x: x if x > 0 else 0.01 * x, lambda x: 1.0 if x > 0 else 0.01),
    "prelu": (lambda x: x if x > 0 else 0.25 * x, lambda x: 1.0 if x > 0 else 0.25),
    "rrelu": (lambda x: x if x > 0 else RRELU_MEAN * x, lambda x: 1.0 if x > 0 else RRELU_MEAN),
    "elu": (lambda x: x if x > 0 else math.exp(x) - 1, lambda x: 1.0 if x > 0 else math.exp(x)),
    "gelu": (lambda x: x * _phi(x), lambda x: _phi(x) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "swish": (lambda x: x * _sig(x), lambda x: _sig(x) + x * _sig(x) * (1 - _sig(x))),
    "identity": (lambda x: x, lambda x: 1.0),
}
POINTS = np.array([-2.0, -0.5, 0.3, 1.5], np.float32)


def test_activation_names_are_all_covered():
  assert set(HAND) == set(layers.ACTIVATIONS)
  assert [layers.activation_index(n) for n in layers.ACTIVATIONS] == list(range(len(layers.ACTIVATIONS)))
  with pytest.raises(ValueError, match="unknown activation"):
    layers.activation_index("relu6")


@pytest.mark.parametrize("name", layers.ACTIVATIONS)
def test_activation_value_and_derivative(name):
  f, df = HAND[name]
  module = layers.Activation(name)
  variables = module.init(jax.random.key(0), jnp.asarray(POINTS))
  y = module.apply(variables, jnp.asarray(POINTS))
  dy = jax.vmap(jax.grad(lambda x: module.apply(variables, x)))(jnp.asarray(POINTS))
  np.testing.assert_allclose(y, [f(float(p)) for p in POINTS], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dy, [df(float(p)) for p in POINTS], rtol=1e-5, atol=1e-6)
  if name != "prelu":
    np.testing.assert_allclose(layers.activation(name)(jnp.asarray(POINTS)), y, rtol=1e-6)


def test_prelu_slope_is_learned():
  module = layers.Activation("prelu")
  variables = module.init(jax.random.key(0), jnp.asarray(POINTS))
  assert float(variables["params"]["slope"]) == 0.25
  # d/da of sum(prelu(x)) = sum of the negative inputs.
  g = jax.grad(lambda v: module.apply(v, jnp.asarray(POINTS)).sum())(variables)["params"]["slope"]
  np.testing.assert_allclose(g, -2.5)
  y = module.apply({"params": {"slope": jnp.float32(0.5)}}, jnp.asarray(POINTS))
  np.testing.assert_allclose(y, [-1.0, -0.25, 0.3, 1.5])
  with pytest.raises(ValueError, match="learned slope"):
    layers.activation("prelu")


def test_rrelu_training_slopes_within_range():
  x = -jnp.ones((10000,))
  module = layers.Activation("rrelu")
  y = module.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
  slopes = np.asarray(-y)
  lo, hi = layers.RRELU_RANGE
  assert slopes.min() >= lo and slopes.max() <= hi
  assert slopes.std() > 0.01                                         # drawn per element, not one constant
  assert abs(slopes.mean() - (lo + hi) / 2) < 0.01                   # U[l, u] has mean (l + u) / 2
  np.testing.assert_array_equal(module.apply({}, -x, train=True, rngs={"dropout": jax.random.key(0)}), -x)
  np.testing.assert_allclose(module.apply({}, x, train=False), -(lo + hi) / 2 * np.ones(10000))


def test_activation_index_mode_matches_names_and_vmaps():
  x = jnp.asarray(POINTS)
  slope = {"params": {"slope": jnp.float32(layers.PRELU_INIT)}}
  by_name = []
  for i, name in enumerate(layers.ACTIVATIONS):
    named = layers.Activation(name)
    v = named.init(jax.random.key(0), x)
    by_name.append(named.apply(v, x))
    indexed = layers.Activation(jnp.int32(i))
    assert jax.tree.map(jnp.shape, indexed.init(jax.random.key(0), x)) == {"params": {"slope": ()}}
    np.testing.assert_allclose(indexed.apply(slope, x), by_name[-1], rtol=1e-6, err_msg=name)
  by_name = np.stack(by_name)
  idx = jnp.arange(len(layers.ACTIVATIONS), dtype=jnp.int32)
  vmapped = jax.vmap(lambda i: layers.Activation(i).apply(slope, x))(idx)
  np.testing.assert_allclose(vmapped, by_name, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(lambda i: layers.activation(i)(x))(idx), by_name, rtol=1e-6)
  # Derivatives through the switch, vmapped over the index too.
  grads = jax.vmap(lambda i: jax.vmap(jax.grad(lambda t: layers.Activation(i).apply(slope, t)))(x))(idx)
  expected = [[HAND[n][1](float(p)) for p in POINTS] for n in layers.ACTIVATIONS]
  np.testing.assert_allclose(grads, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Dropout and noise.
N = 20000


def _dropout(rate, x, key=0, train=True):
  return layers.Dropout(rate).apply({}, x, train=train, rngs={"dropout": jax.random.key(key)})


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_keep_fraction_and_scaling(rate):
  x = jnp.ones((N,))
  y = np.asarray(_dropout(rate, x))
  kept = y != 0
  # Binomial(N, 1 - rate): 6 standard deviations.
  assert abs(kept.mean() - (1 - rate)) < 6 * math.sqrt(rate * (1 - rate) / N)
  np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)
  assert not np.array_equal(kept, np.asarray(_dropout(rate, x, key=1)) != 0)   # a new key, a new mask


def test_dropout_identity_at_eval_and_rate_zero():
  x = jax.random.normal(jax.random.key(0), (4, 5))
  np.testing.assert_array_equal(layers.Dropout(0.5).apply({}, x, train=False), x)
  np.testing.assert_array_equal(layers.Dropout(0.0).apply({}, x, train=True), x)   # no rng needed at rate 0
  np.testing.assert_allclose(_dropout(jnp.float32(0.0), x), x)                    # traced zero


def test_dropout_traced_rate_under_vmap():
  rates = jnp.array([0.0, 0.25, 0.5, 0.75])
  x = jnp.ones((N,))
  y = np.asarray(jax.vmap(lambda r: _dropout(r, x))(rates))
  for r, row in zip(np.asarray(rates), y):
    kept = row != 0
    assert abs(kept.mean() - (1 - r)) < 6 * math.sqrt(r * (1 - r) / N) + 1e-9
    np.testing.assert_allclose(row[kept], 1 / (1 - r), rtol=1e-6)


def test_traced_rate_and_activation_index_trace_once():
  """DESIGN 11: new VALUES of a dropout rate, a noise level and an activation index reuse the compiled program (one
  trace), where a rate that the layer turned into a Python number would need a trace per value. The companion below
  shows the counter does catch a retrace: the same function with the rate static traces once per value."""
  import chex  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (64,))
  traces = []

  def net(rate, std, act):
    traces.append(1)                                 # runs only while tracing
    y = layers.Activation(act).apply({"params": {"slope": jnp.float32(0.25)}}, x, train=False)
    y = layers.GaussianNoise(std).apply({}, y, train=True, rngs={"dropout": jax.random.key(1)})
    return layers.Dropout(rate).apply({}, y, train=True, rngs={"dropout": jax.random.key(2)})

  traced = jax.jit(chex.assert_max_traces(net, n=1))
  outs = [traced(jnp.float32(r), jnp.float32(s), jnp.int32(a))
          for r, s, a in ((0.1, 0.0, 2), (0.7, 0.5, 0), (0.0, 2.0, 9))]
  assert len(traces) == 1
  # The values really reached the program: relu (index 2) leaves nothing below zero; rate 0.7 zeroes about 70% of
  # the elements; identity (index 9) at rate 0 leaves x plus noise of standard deviation 2 (64 draws: within 35%).
  assert float(outs[0].min()) >= 0 and 0.5 < float((outs[1] == 0).mean()) < 0.9
  assert (outs[2] != 0).all() and 1.3 < float((outs[2] - x).std()) < 2.7
  vmapped = jax.jit(jax.vmap(chex.assert_max_traces(lambda *a: net(*a), n=1)))
  vmapped(jnp.array([0.1, 0.5]), jnp.array([0.0, 1.0]), jnp.array([2, 9]))
  vmapped(jnp.array([0.3, 0.0]), jnp.array([0.2, 0.0]), jnp.array([0, 1]))
  assert len(traces) == 2                            # one more trace, for the vmapped program only
  # The companion: a static rate traces once per value, and chex's counter says so.
  static = jax.jit(chex.assert_max_traces(lambda *a: net(*a), n=1), static_argnums=0)
  static(0.1, jnp.float32(0.0), jnp.int32(2))
  static(0.1, jnp.float32(0.5), jnp.int32(0))        # the same static value: no retrace
  assert len(traces) == 3
  with pytest.raises(AssertionError, match="traced"):
    static(0.2, jnp.float32(0.0), jnp.int32(2))      # a new static value: a second trace, refused by chex


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_check_rate_rejects(rate):
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    layers.check_rate(rate)


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.999])
def test_check_rate_accepts(rate):
  layers.check_rate(rate)


def test_gaussian_noise_std():
  x = jnp.full((N,), 3.0)
  for std in (0.1, 1.0, jnp.float32(0.5)):
    y = layers.GaussianNoise(std).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    noise = np.asarray(y - x)
    assert abs(noise.std() - float(std)) < 0.05 * float(std)    # sd of the sample sd ~ std / sqrt(2N) = 0.5%
    assert abs(noise.mean()) < 6 * float(std) / math.sqrt(N)
  np.testing.assert_array_equal(layers.GaussianNoise(1.0).apply({}, x, train=False), x)
  stds = jnp.array([0.0, 2.0])
  y = jax.vmap(lambda s: layers.GaussianNoise(s).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))(stds)
  np.testing.assert_array_equal(y[0], x)
  assert abs(float((y[1] - x).std()) - 2.0) < 0.1


# ----------------------------------------------------------------------------------------------------------------
# init_scale.
def test_init_scale_scales_kernel_exactly():
  x = jnp.zeros((1, 6, 6, 3))
  base = layers.Conv(4, (3, 3)).init(jax.random.key(7), x)["params"]
  small = layers.Conv(4, (3, 3), init_scale=0.01).init(jax.random.key(7), x)["params"]
  np.testing.assert_array_equal(small["kernel"], jnp.float32(0.01) * base["kernel"])
  np.testing.assert_array_equal(small["bias"], base["bias"])
  assert float(jnp.abs(base["kernel"]).max()) > 0.05     # the scaled kernel really is different
  d1 = layers.Dense(5).init(jax.random.key(3), jnp.zeros((1, 8)))["params"]["kernel"]
  d2 = layers.Dense(5, init_scale=0.01).init(jax.random.key(3), jnp.zeros((1, 8)))["params"]["kernel"]
  np.testing.assert_array_equal(d2, jnp.float32(0.01) * d1)
  # A traced scale, vmapped: one kernel per scale, each the base kernel times its scale.
  scales = jnp.array([1.0, 0.1, 0.01])
  ks = jax.vmap(lambda s: layers.Dense(5, init_scale=s).init(jax.random.key(3), jnp.zeros((1, 8)))["params"]
                ["kernel"])(scales)
  np.testing.assert_allclose(ks, scales[:, None, None] * d1[None], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# ConvTranspose and the Glorot-uniform base initialiser (README: layers table).
def _scatter_add_transpose(x, kernel, stride):
  """Transposed convolution by hand: every input pixel adds x[i, j] . K (a [kh, kw, C_out] patch) to the output at
  (i * stride, j * stride). [B, H, W, C_in] -> [B, (H - 1) * stride + kh, (W - 1) * stride + kw, C_out], VALID."""
  b, h, w, _ = x.shape
  kh, kw, _, c_out = kernel.shape
  out = np.zeros((b, (h - 1) * stride + kh, (w - 1) * stride + kw, c_out))
  for i in range(h):
    for j in range(w):
      out[:, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum("bc,hwco->bhwo", x[:, i, j], kernel)
  return out


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_transpose_is_a_scatter_add(stride):
  x = jax.random.normal(jax.random.key(0), (2, 4, 5, 2))
  module = layers.ConvTranspose(3, (3, 3), strides=stride, init_scale=0.5)
  v = module.init(jax.random.key(1), x)
  kernel = np.asarray(v["params"]["conv"]["kernel"], np.float64)                        # [3, 3, 2, 3]
  bias = np.array([0.5, -1.0, 2.0], np.float32)
  v = {"params": {"conv": {"kernel": v["params"]["conv"]["kernel"], "bias": jnp.asarray(bias)}}}
  y = module.apply(v, x)
  assert y.shape == (2, 3 * stride + 3, 4 * stride + 3, 3)
  # flax's convention (transpose_kernel=False): the scatter uses the kernel flipped in space, i.e. PyTorch's
  # ConvTranspose2d with this kernel flipped; the unflipped scatter is a different map.
  want = _scatter_add_transpose(np.asarray(x, np.float64), kernel[::-1, ::-1], stride) + bias
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(y, _scatter_add_transpose(np.asarray(x, np.float64), kernel, stride) + bias, atol=1e-3)
  np.testing.assert_allclose(y, jax.lax.conv_transpose(x, v["params"]["conv"]["kernel"], (stride, stride), "VALID",
                                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias, rtol=1e-5,
                             atol=1e-6)
  # init_scale multiplies the Glorot-uniform kernel and leaves the zero bias alone.
  base = layers.ConvTranspose(3, (3, 3), strides=stride).init(jax.random.key(1), x)["params"]["conv"]
  np.testing.assert_allclose(kernel, 0.5 * np.asarray(base["kernel"]), rtol=1e-6)
  np.testing.assert_array_equal(base["bias"], 0)


@pytest.mark.parametrize("make,shape,fans", [
    (lambda s: layers.Conv(64, (3, 3), init_scale=s), (1, 3, 3, 32), (9 * 32, 9 * 64)),
    (lambda s: layers.Dense(300, init_scale=s), (1, 200), (200, 300)),
    (lambda s: layers.ConvTranspose(64, (3, 3), init_scale=s), (1, 1, 1, 32), (9 * 32, 9 * 64)),
])
@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_glorot_uniform_bound_and_variance(make, shape, fans, scale):
  """Kernels ~ U[-b, b] with b = sqrt(6 / (fan_in + fan_out)) x init_scale (Glorot & Bengio 2010, Keras' default):
  every value within b, the extremes near +-b, and the variance b^2 / 3 (N >= 18,432 draws: its relative standard
  deviation is sqrt(0.8 / N) < 0.7%, so 5% is > 7 sigma)."""
  params = make(scale).init(jax.random.key(0), jnp.zeros(shape))["params"]
  kernel = np.asarray(params["conv"]["kernel"] if "conv" in params else params["kernel"], np.float64).ravel()
  b = math.sqrt(6 / sum(fans)) * scale
  assert kernel.size >= 18_432
  assert kernel.max() <= b * (1 + 1e-6) and kernel.min() >= -b * (1 + 1e-6)
  assert kernel.max() > 0.99 * b and kernel.min() < -0.99 * b
  assert abs(kernel.var() / (b * b / 3) - 1) < 0.05
  assert abs(kernel.mean()) < 6 * b / math.sqrt(3 * kernel.size)
