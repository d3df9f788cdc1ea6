"""The extended summary: receptive fields and jumps by hand and against a second method (the support of an output
position's input gradient), FLOPs per layer by hand, and the course's layer counts."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jcnn import models
from jcnn.inspect import summary
from jcnn.models.convnet import ConvNet
from jcnn.nn import blocks, layers


def gradient_support(model, variables, layer, input_shape, pos, n=16):
  """The independent reference: rows and columns of the input pixels on which `layer`'s output at spatial position
  `pos` (summed over channels) depends, as (first, last) per axis. The union over n random inputs, so a max-pool's
  gradient (one winner per window) or a dead ReLU still covers the whole field."""
  def feature(x):                                          # x [1, H, W, C] -> the layer's output [1, h, w, c]
    _, inter = model.apply(variables, x, train=False, capture_intermediates=lambda m, _: m.name == layer,
                           mutable=["intermediates"])
    return inter["intermediates"][layer]["__call__"][0]

  grad = jax.jit(jax.vmap(lambda x: jax.grad(lambda x: feature(x)[0, pos[0], pos[1]].sum())(x[None])[0]))
  g = grad(jax.random.normal(jax.random.key(3), (n,) + tuple(input_shape)))
  mask = np.asarray((jnp.abs(g) > 0).any(axis=(0, -1)))   # [H, W]
  rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
  return (rows.min(), rows.max()), (cols.min(), cols.max())


def check_against_gradients(model, input_shape, names, pos_of):
  """For each named layer: the analytic rf equals the gradient support's extent, and the analytic jump equals how far
  the support moves when the output position moves by one."""
  variables = model.init({"params": jax.random.key(0)}, jnp.zeros((1,) + tuple(input_shape)), train=False)
  fields = summary.receptive_fields(model, input_shape)
  for name in names:
    jump, rf = fields[name]
    i, j = pos_of(name)
    (r0, r1), (c0, c1) = gradient_support(model, variables, name, input_shape, (i, j))
    (r0b, _), (c0b, _) = gradient_support(model, variables, name, input_shape, (i + 1, j + 1))
    assert (r1 - r0 + 1, c1 - c0 + 1) == tuple(rf), (name, rf, (r0, r1), (c0, c1))
    assert (r0b - r0, c0b - c0) == tuple(jump), (name, jump)


def test_convnet_fields_by_hand():
  # conv3x3 (rf 1 + 2 = 3, jump 1), pool2 (3 + 1*1 = 4, jump 2), conv3x3 (4 + 2*2 = 8), pool2 (8 + 1*2 = 10, jump 4),
  # conv3x3 (10 + 2*4 = 18): r_out = r_in + (k - 1) * j_in, j_out = j_in * s.
  fields = summary.receptive_fields(ConvNet(), (28, 28, 1))
  hand = {"conv1": (1, 3), "pool1": (2, 4), "conv2": (2, 8), "pool2": (4, 10), "conv3": (4, 18)}
  for name, (jump, rf) in hand.items():
    assert fields[name] == ((jump, jump), (rf, rf)), name
  assert fields["dense1"] == (None, None) and fields["flatten"] == (None, None)   # depends on the whole image


def test_convnet_fields_match_gradient_support():
  check_against_gradients(ConvNet(activation="identity"), (28, 28, 1), ["conv1", "pool1", "conv2", "pool2", "conv3"],
                          lambda name: (0, 0))


def test_convnet_flops_per_layer_by_hand():
  rows = {r["name"]: r for r in summary.analyze(ConvNet(), (28, 28, 1))["rows"]}
  # 2 FLOPs per multiply-add: outputs x kernel taps x input channels.
  assert rows["conv1"]["flops"] == 2 * 26 * 26 * 32 * 3 * 3 * 1
  assert rows["conv2"]["flops"] == 2 * 11 * 11 * 64 * 3 * 3 * 32
  assert rows["conv3"]["flops"] == 2 * 3 * 3 * 64 * 3 * 3 * 64
  assert rows["dense1"]["flops"] == 2 * 576 * 64 and rows["head"]["flops"] == 2 * 64 * 10
  assert rows["pool1"]["flops"] == 0 and rows["act1"]["flops"] == 0


def test_layer_counts():
  # The course's count: conv + dense layers, pooling / BatchNorm / activations / flatten not counted; on a branchy net
  # the longest path (ResNet-18: 17 convs + fc, its three 1x1 projection shortcuts run beside two 3x3 convs).
  assert summary.layer_count(ConvNet(), (28, 28, 1)) == 5
  assert summary.layer_count(models.get({"name": "vgg16"}), (224, 224, 3)) == 16
  assert summary.layer_count(models.get({"name": "resnet18"}), (224, 224, 3)) == 18
  assert summary.layer_count(models.get({"name": "googlenet"}), (224, 224, 3)) == 22   # Szegedy et al.: "22 layers"


class Dilated(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    x = layers.Conv(2, (3, 3), kernel_dilation=2, name="c1")(x)                   # rf 1 + 2*2*1 = 5, jump 1
    x = layers.Conv(2, (3, 3), strides=2, name="c2")(x)                           # rf 5 + 2*1*1 = 7, jump 2
    return layers.Conv(2, (3, 3), kernel_dilation=3, name="c3")(x)                # rf 7 + 2*3*2 = 19, jump 2


def test_dilated_conv_by_hand_and_gradients():
  fields = summary.receptive_fields(Dilated(), (32, 32, 1))
  assert fields["c1"] == ((1, 1), (5, 5)) and fields["c2"] == ((2, 2), (7, 7)) and fields["c3"] == ((2, 2), (19, 19))
  check_against_gradients(Dilated(), (32, 32, 1), ["c1", "c2", "c3"], lambda name: (2, 2))


class WithInception(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    x = layers.Conv(4, (3, 3), strides=2, name="stem")(x)                         # rf 3, jump 2
    # branches: 1x1 (3), 1x1 -> 3x3 (3 + 2*2 = 7), 1x1 -> 5x5 (3 + 4*2 = 11), pool 3x3 -> 1x1 (7): the largest, 11
    return blocks.InceptionBlock(2, 2, 2, 2, 2, 2, k5=5, norm=None, name="inception")(x, train=train)


def test_inception_block_takes_the_largest_branch():
  fields = summary.receptive_fields(WithInception(), (32, 32, 1))
  assert fields["stem"] == ((2, 2), (3, 3)) and fields["inception"] == ((2, 2), (11, 11))
  check_against_gradients(WithInception(), (32, 32, 1), ["stem", "inception"], lambda name: (7, 7))


def test_residual_and_densenet_fields_match_gradient_support():
  # Zoo models with strided shortcuts / concatenations and BatchNorm (eval mode); an interior output position.
  check_against_gradients(models.get({"name": "resnet_tiny"}, activation="identity"), (32, 32, 3),
                          ["stem", "stage1_block1", "stage2_block1"], lambda name: (5, 5))


def test_summary_text_shows_the_new_columns():
  text = summary.summary(ConvNet(), (28, 28, 1), flops=False)
  assert "Jump" in text and "RF" in text and "Layers (conv + dense on the longest path): 5" in text
  line = next(l for l in text.splitlines() if l.startswith("conv3"))
  assert line.split()[-2:] == ["4", "18"]
