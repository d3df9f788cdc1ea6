"""Blocks: output shapes, parameter counts against hand counts, swappable parts, shortcuts, traced hyperparameters."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.inspect.summary import count_params
from jcnn.nn import blocks

KEY = jax.random.key(0)


def init(block, x):
  """Jitted: one compile is much cheaper than eager op-by-op dispatch of every slice of the im2col convs."""
  return jax.jit(lambda x: block.init({"params": KEY, "dropout": KEY}, x, train=False))(x)


def run(block, x, train=False):
  variables = init(block, x)
  return jax.jit(lambda v, x: block.apply(v, x, train=train, rngs={"dropout": KEY},
                                          mutable=["batch_stats"] if train else False))(variables, x)


def test_conv_block_shapes_and_bias():
  x = jnp.ones((2, 9, 9, 3))
  y = run(blocks.ConvBlock(8, (3, 3), 2), x)
  assert y.shape == (2, 5, 5, 8)                       # ceil(9 / 2), as PyTorch's padding=1
  v = init(blocks.ConvBlock(8, (3, 3)), x)
  assert set(v["params"]["conv"]) == {"kernel"}       # no bias before BatchNorm
  assert count_params(v["params"]) == 3 * 3 * 3 * 8 + 2 * 8
  assert count_params(v["batch_stats"]) == 2 * 8
  v = init(blocks.ConvBlock(8, (3, 3), norm=None), x)
  assert count_params(v["params"]) == 3 * 3 * 3 * 8 + 8 and "batch_stats" not in v


def test_group_norm_swaps_in():
  block = blocks.ConvBlock(8, norm=functools.partial(nn.GroupNorm, num_groups=4))
  v = init(block, jnp.ones((2, 6, 6, 3)))
  assert "batch_stats" not in v and set(v["params"]["norm"]) == {"scale", "bias"}
  assert run(block, jnp.ones((2, 6, 6, 3)), train=True)[0].shape == (2, 6, 6, 8)


def test_batch_norm_train_updates_stats_eval_uses_them():
  """conv -> BN -> relu against numpy: training normalises with the batch's statistics and moves the running ones by
  momentum 0.9 (flax's biased batch variance); evaluation normalises with the UPDATED running statistics:
  relu((h - mu) / sqrt(var + eps) * gamma + beta), eps = 1e-5."""
  block = blocks.ConvBlock(4, norm=blocks.BATCH_NORM)
  x = jax.random.normal(KEY, (4, 6, 6, 3)) * 3 + 1
  v = init(block, x)
  gamma, beta = np.array([1.5, 0.5, 2.0, 1.0], np.float32), np.array([0.1, -0.2, 0.3, 0.0], np.float32)
  v = {"params": {"conv": v["params"]["conv"], "norm": {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)}},
       "batch_stats": v["batch_stats"]}
  h = np.asarray(jax.lax.conv_general_dilated(x, v["params"]["conv"]["kernel"], (1, 1), [(1, 1), (1, 1)],
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")), np.float64)   # [4, 6, 6, 4]
  mu_b, var_b = h.mean((0, 1, 2)), h.var((0, 1, 2))
  y, upd = jax.jit(lambda v, x: block.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
  np.testing.assert_allclose(y, np.maximum((h - mu_b) / np.sqrt(var_b + 1e-5) * gamma + beta, 0), rtol=1e-4,
                             atol=1e-4)
  mu, var = 0.9 * 0.0 + 0.1 * mu_b, 0.9 * 1.0 + 0.1 * var_b                       # from the init's 0 and 1
  np.testing.assert_allclose(upd["batch_stats"]["norm"]["mean"], mu, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["norm"]["var"], var, rtol=1e-4)
  y_eval = jax.jit(lambda v, x: block.apply(v, x, train=False))(dict(v, batch_stats=upd["batch_stats"]), x)
  np.testing.assert_allclose(y_eval, np.maximum((h - mu) / np.sqrt(var + 1e-5) * gamma + beta, 0), rtol=1e-4,
                             atol=1e-4)
  assert not np.allclose(y_eval, y, atol=1e-2)       # the running statistics are not the batch's


def test_basic_block_counts_projection_and_option_a():
  x = jnp.ones((2, 8, 8, 16))
  proj = init(blocks.BasicBlock(32, 2), x)
  # conv1 3x3x16x32 + BN, conv2 3x3x32x32 + BN, projection 1x1x16x32 + BN
  assert count_params(proj["params"]) == 4608 + 64 + 9216 + 64 + 512 + 64
  pad = init(blocks.BasicBlock(32, 2, shortcut="pad"), x)
  assert count_params(pad["params"]) == 4608 + 64 + 9216 + 64
  assert run(blocks.BasicBlock(32, 2, shortcut="pad"), x).shape == (2, 4, 4, 32)
  ident = init(blocks.BasicBlock(16, 1), x)            # same shape: identity, no projection
  assert "proj" not in ident["params"]


def test_pad_shortcut_subsamples_and_pads_evenly():
  x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
  y = blocks.pad_shortcut(x, 6, 2)
  assert y.shape == (2, 2, 2, 6)
  np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2, :])
  assert float(jnp.abs(y[..., :2]).sum() + jnp.abs(y[..., 4:]).sum()) == 0


def test_bottleneck_matches_torchvision_layer1_block0():
  v = init(blocks.Bottleneck(64), jnp.ones((1, 8, 8, 64)))
  assert count_params(v["params"]) == 75_008           # resnet50.layer1[0] in torchvision
  assert run(blocks.Bottleneck(64, 2), jnp.ones((1, 8, 8, 64))).shape == (1, 4, 4, 256)


def test_dense_block_and_transition():
  x = jnp.ones((2, 8, 8, 6))
  y = run(blocks.DenseBlock(3, growth_rate=4), x)
  assert y.shape == (2, 8, 8, 6 + 3 * 4)
  v = init(blocks.DenseBlock(1, growth_rate=4, bottleneck_width=4), x)
  # BN(6) + 1x1 6->16, BN(16) + 3x3 16->4 (no conv biases)
  assert count_params(v["params"]) == 12 + 6 * 16 + 32 + 9 * 16 * 4
  assert run(blocks.Transition(9), y).shape == (2, 4, 4, 9)


@pytest.mark.slow   # two inits and a forward of a 6-conv block: long XLA:CPU compiles
def test_inception_block_concatenates_branches():
  block = blocks.InceptionBlock(4, 3, 5, 2, 3, 2)
  assert run(block, jnp.ones((2, 7, 7, 8))).shape == (2, 7, 7, 4 + 5 + 3 + 2)
  p3, p5 = (count_params(init(blocks.InceptionBlock(4, 3, 5, 2, 3, 2, k5=k), jnp.ones((1, 7, 7, 8)))["params"])
            for k in (3, 5))
  assert p5 - p3 == (25 - 9) * 2 * 3


def test_vgg_block_halves():
  assert run(blocks.VGGBlock(8, 2), jnp.ones((2, 8, 8, 3))).shape == (2, 4, 4, 8)


def test_activation_index_and_dropout_rate_vmap():
  """The activation (as an index into layers.ACTIVATIONS) and the dropout rate are traced: one vmapped program."""
  x = jax.random.normal(KEY, (2, 6, 6, 16))
  v = init(blocks.BasicBlock(16, activation=2, dropout_rate=0.1), x)

  def f(act, rate):
    return blocks.BasicBlock(16, activation=act, dropout_rate=rate).apply(
        v, x, train=True, rngs={"dropout": KEY}, mutable=["batch_stats"])[0]

  ys = jax.jit(jax.vmap(f))(jnp.array([2, 9]), jnp.array([0.0, 0.5]))   # relu / identity
  assert ys.shape == (2, 2, 6, 6, 16)
  assert float(ys[0].min()) >= 0 and float(ys[1].min()) < 0

  # The rate axis: the dropout layer's own output (between the two convs), captured per variant. At identity
  # activation conv1's output has no zeros, so the zeros are dropout's: about the variant's rate (1,152 units per
  # variant: 6 standard deviations at 0.5 is 0.09), and the kept units are conv1's output scaled by 1 / (1 - rate).
  def g(rate):
    _, state = blocks.BasicBlock(16, activation=9, dropout_rate=rate).apply(
        v, x, train=True, rngs={"dropout": KEY}, mutable=["batch_stats", "intermediates"], capture_intermediates=True)
    inter = state["intermediates"]
    return inter["conv1"]["__call__"][0], inter["dropout"]["__call__"][0]

  rates = jnp.array([0.0, 0.25, 0.75])
  before, after = (np.asarray(a) for a in jax.jit(jax.vmap(g))(rates))
  assert (before != 0).all()
  for r, b, a in zip(np.asarray(rates), before, after):
    kept = a != 0
    assert abs((~kept).mean() - r) < 6 * np.sqrt(max(r * (1 - r), 1e-12) / a.size), r
    np.testing.assert_allclose(a[kept], b[kept] / (1 - r), rtol=1e-5, atol=1e-6)


def test_bad_shortcut_is_an_error():
  with pytest.raises(ValueError, match="shortcut"):
    jax.eval_shape(lambda x: blocks.BasicBlock(8, 2, shortcut="nope").init(KEY, x, train=False), jnp.ones((1, 4, 4, 4)))
