"""Reusable blocks: ConvBlock (conv-norm-act), BasicBlock / Bottleneck (residual), DenseBlock + Transition,
InceptionBlock, VGGBlock.

Every block takes its parts as fields, so a sweep or an ablation swaps them without editing a block:
  conv        a module factory with layers.Conv's signature (e.g. `partial(layers.Conv, kernel_init=HE_INIT)`)
  norm        a module factory or None: `BATCH_NORM` (momentum 0.9), `FUSED_BATCH_NORM` (same, one-pass VJP fused
              with ReLU), `partial(nn.GroupNorm, num_groups=8)`, ...
              BatchNorm gets `use_running_average=not train`; any other norm is called as `norm(name=...)(x)`
  act         a module factory taking the activation: `layers.Activation` (name or traced index)
  activation  the name ('relu') or an index into layers.ACTIVATIONS (may be traced, for vmapped sweeps)
  init_scale  multiplies every conv's initial kernel (may be traced)
All blocks are called as `block(x, train=...)` on [B, H, W, C] and name their submodules, so parameter paths are stable.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jcnn.nn import layers, norm as norm_lib

Array = jax.Array
Act = Union[str, int, Array]

BATCH_NORM = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)   # PyTorch's defaults (its momentum 0.1)
# jcnn.nn.norm.BatchNorm: the same variables and statistics with a one-pass VJP fused with a following plain ReLU
# (norm_act): 1.17-1.21x on DenseNet-BC's CPU step, even on ResNet-20 / VGG-11-BN (docs/performance.md). Opt-in
# (`norm=FUSED_BATCH_NORM`) until its ONNX export is fixed (jax2onnx emitted a float64 Pad after it for vgg_tiny).
FUSED_BATCH_NORM = functools.partial(norm_lib.BatchNorm, momentum=0.9, epsilon=1e-5)
HE_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")       # torchvision's ResNet/VGG conv init


def apply_norm(norm: Optional[Callable], x: Array, train: bool, name: str) -> Array:
  """Calls `norm(name=name)` on x; BatchNorm uses batch statistics while training and running ones at eval."""
  if norm is None:
    return x
  module = norm(name=name)
  if isinstance(module, (nn.BatchNorm, norm_lib.BatchNorm)):
    return module(x, use_running_average=not train)
  return module(x)


def fuses_relu(norm: Optional[Callable], act: Callable, activation: Act) -> bool:
  """Whether norm -> act can run as one fused op: a norm that says it fuses (norm.BatchNorm) and a plain 'relu'."""
  cls = getattr(norm, "func", norm)
  return (getattr(cls, "fuses_act", False) is True and act is layers.Activation and isinstance(activation, str)
          and activation == "relu")


def norm_act(norm: Optional[Callable], act: Callable, activation: Act, x: Array, train: bool, norm_name: str,
             act_name: str) -> Array:
  """norm then activation; where `fuses_relu`, BatchNorm+ReLU in one VJP (same variables, same values)."""
  if fuses_relu(norm, act, activation):
    return norm(name=norm_name)(x, use_running_average=not train, act="relu")
  return act(activation, name=act_name)(apply_norm(norm, x, train, norm_name), train=train)


def same_pads(kernel_size: Sequence[int]) -> list[tuple[int, int]]:
  """PyTorch's `padding=k // 2`: symmetric, so a stride-2 conv samples the same pixels as torchvision's."""
  return [(k // 2, k // 2) for k in kernel_size]


class ConvBlock(nn.Module):
  """conv -> norm -> act. The conv has no bias when a norm follows (the norm's shift replaces it).

  `padding=None` pads k // 2 on each side (output = ceil(input / stride) for odd k). `use_act=False` stops after the
  norm (the last conv of a residual branch, whose activation comes after the addition).
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: int = 1
  padding: Any = None
  use_act: bool = True
  activation: Act = "relu"
  init_scale: Union[float, Array] = 1.0
  conv: Callable = layers.Conv
  norm: Optional[Callable] = BATCH_NORM
  act: Callable = layers.Activation

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    ks = tuple(self.kernel_size)
    padding = same_pads(ks) if self.padding is None else self.padding
    x = self.conv(self.features, ks, strides=self.strides, padding=padding, use_bias=self.norm is None,
                  init_scale=self.init_scale, name="conv")(x)                          # [B, H/s, W/s, features]
    if self.use_act:
      return norm_act(self.norm, self.act, self.activation, x, train, "norm", "act")
    return apply_norm(self.norm, x, train, "norm")


def _parts(m: nn.Module) -> dict:
  """The fields a block passes on to its ConvBlocks."""
  return dict(activation=m.activation, init_scale=m.init_scale, conv=m.conv, norm=m.norm, act=m.act)


def pad_shortcut(x: Array, features: int, strides: int) -> Array:
  """He et al. 2016's option A: subsample by `strides`, zero-pad channels evenly on both sides. No parameters."""
  x = x[:, ::strides, ::strides, :]                                                    # [B, H/s, W/s, C]
  extra = features - x.shape[-1]
  return jnp.pad(x, [(0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)])        # [B, H/s, W/s, features]


def shortcut(m: nn.Module, x: Array, y: Array, features: int, train: bool) -> Array:
  """Identity when shapes match; else 'projection' (1x1 conv + norm, option B) or 'pad' (option A)."""
  if x.shape == y.shape:
    return x
  if m.shortcut == "pad":
    return pad_shortcut(x, features, m.strides)
  if m.shortcut != "projection":
    raise ValueError(f"shortcut={m.shortcut!r}: use 'projection' (1x1 conv) or 'pad' (zero-padding, option A)")
  return ConvBlock(features, (1, 1), m.strides, padding="VALID", use_act=False, **_parts(m), name="proj")(x,
                                                                                                      train=train)


class BasicBlock(nn.Module):
  """Two 3x3 ConvBlocks with a shortcut (ResNet-18/34, CIFAR ResNets): act(F(x) + shortcut(x)).

  `dropout_rate` (may be traced) sits between the two convs, as in wide ResNets; 0 = none.
  """
  features: int
  strides: int = 1
  shortcut: str = "projection"     # 'projection' | 'pad' (option A), used only where the shape changes
  dropout_rate: Union[float, Array] = 0.0
  activation: Act = "relu"
  init_scale: Union[float, Array] = 1.0
  conv: Callable = layers.Conv
  norm: Optional[Callable] = BATCH_NORM
  act: Callable = layers.Activation
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    y = ConvBlock(self.features, (3, 3), self.strides, **_parts(self), name="conv1")(x, train=train)
    y = layers.Dropout(self.dropout_rate, name="dropout")(y, train=train)
    y = ConvBlock(self.features, (3, 3), 1, use_act=False, **_parts(self), name="conv2")(y, train=train)
    y = y + shortcut(self, x, y, self.features, train)                                 # [B, H/s, W/s, features]
    return self.act(self.activation, name="act")(y, train=train)


class Bottleneck(nn.Module):
  """1x1 (features) -> 3x3 (features, stride) -> 1x1 (4 * features) with a shortcut (ResNet-50/101).

  The stride sits on the 3x3 conv (torchvision's "ResNet v1.5").
  """
  features: int
  strides: int = 1
  shortcut: str = "projection"
  dropout_rate: Union[float, Array] = 0.0
  activation: Act = "relu"
  init_scale: Union[float, Array] = 1.0
  conv: Callable = layers.Conv
  norm: Optional[Callable] = BATCH_NORM
  act: Callable = layers.Activation
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    out = self.features * self.expansion
    y = ConvBlock(self.features, (1, 1), **_parts(self), name="conv1")(x, train=train)
    y = ConvBlock(self.features, (3, 3), self.strides, **_parts(self), name="conv2")(y, train=train)
    y = layers.Dropout(self.dropout_rate, name="dropout")(y, train=train)
    y = ConvBlock(out, (1, 1), use_act=False, **_parts(self), name="conv3")(y, train=train)
    y = y + shortcut(self, x, y, out, train)                                           # [B, H/s, W/s, 4 * features]
    return self.act(self.activation, name="act")(y, train=train)


class PreActConv(nn.Module):
  """norm -> act -> conv (DenseNet's composite function; the conv has no bias when a norm precedes it)."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  activation: Act = "relu"
  init_scale: Union[float, Array] = 1.0
  conv: Callable = layers.Conv
  norm: Optional[Callable] = BATCH_NORM
  act: Callable = layers.Activation

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = norm_act(self.norm, self.act, self.activation, x, train, "norm", "act")
    ks = tuple(self.kernel_size)
    return self.conv(self.features, ks, padding=same_pads(ks), use_bias=False, init_scale=self.init_scale,
                     name="conv")(x)


class DenseBlock(nn.Module):
  """`num_layers` DenseNet layers, each seeing the concatenation of all earlier outputs (Huang et al. 2017).

  With `bottleneck_width` > 0 (DenseNet-B/BC) a layer is BN-act-Conv1x1(bottleneck_width * k) then BN-act-Conv3x3(k);
  else BN-act-Conv3x3(k). Dropout (rate may be traced) follows each conv. Output channels: C + num_layers * k.
  """
  num_layers: int
  growth_rate: int = 12
  bottleneck_width: int = 4
  dropout_rate: Union[float, Array] = 0.0
  activation: Act = "relu"
  init_scale: Union[float, Array] = 1.0
  conv: Callable = layers.Conv
  norm: Optional[Callable] = BATCH_NORM
  act: Callable = layers.Activation

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    for i in range(self.num_layers):
      y = x
      if self.bottleneck_width:
        y = PreActConv(self.bottleneck_width * self.growth_rate, (1, 1), **_parts(self), name=f"layer{i + 1}_conv1")(
            y, train=train)
        y = layers.Dropout(self.dropout_rate, name=f"layer{i + 1}_dropout1")(y, train=train)
      y = PreActConv(self.growth_rate, (3, 3), **_parts(self), name=f"layer{i + 1}_conv2")(y, train=train)
      y = layers.Dropout(self.dropout_rate, name=f"layer{i + 1}_dropout2")(y, train=train)
      x = jnp.concatenate([x, y], axis=-1)                                             # [B, H, W, C + (i + 1) k]
    return x


class Transition(nn.Module):
  """BN-act-Conv1x1(features)-AvgPool2x2 between dense blocks; features = compression * C in DenseNet-C/BC."""
  features: int
  dropout_rate: Union[float, Array] = 0.0
  activation: Act = "relu"
  init_scale: Union[float, Array] = 1.0
  conv: Callable = layers.Conv
  norm: Optional[Callable] = BATCH_NORM
  act: Callable = layers.Activation

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = PreActConv(self.features, (1, 1), **_parts(self), name="conv")(x, train=train)  # [B, H, W, features]
    x = layers.Dropout(self.dropout_rate, name="dropout")(x, train=train)
    return layers.avg_pool(x, (2, 2))                                                   # [B, H/2, W/2, features]


class InceptionBlock(nn.Module):
  """Inception v1 module (Szegedy et al. 2014), four parallel branches concatenated on channels:
    1x1 (c1) | 1x1 (c3r) -> 3x3 (c3) | 1x1 (c5r) -> k5 x k5 (c5) | 3x3 max-pool (stride 1) -> 1x1 (pool_proj)
  Each conv is a ConvBlock (conv-BN-act, as torchvision's). `k5=3` reproduces torchvision's googlenet, whose "5x5"
  branch is a 3x3 (a known slip kept for its weights); `k5=5` is the paper's. Output: c1 + c3 + c5 + pool_proj.
  """
  c1: int
  c3r: int
  c3: int
  c5r: int
  c5: int
  pool_proj: int
  k5: int = 5
  activation: Act = "relu"
  init_scale: Union[float, Array] = 1.0
  conv: Callable = layers.Conv
  norm: Optional[Callable] = BATCH_NORM
  act: Callable = layers.Activation

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    block = lambda f, k, name: ConvBlock(f, (k, k), **_parts(self), name=name)
    b1 = block(self.c1, 1, "b1")(x, train=train)
    b2 = block(self.c3, 3, "b2_conv2")(block(self.c3r, 1, "b2_conv1")(x, train=train), train=train)
    b3 = block(self.c5, self.k5, "b3_conv2")(block(self.c5r, 1, "b3_conv1")(x, train=train), train=train)
    b4 = block(self.pool_proj, 1, "b4")(layers.max_pool(x, (3, 3), 1, "SAME"), train=train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)                                  # [B, H, W, sum of branches]


class VGGBlock(nn.Module):
  """A VGG stage: `num_convs` 3x3 ConvBlocks (norm=None for the original VGG, BATCH_NORM for VGG-BN), then 2x2
  max-pool."""
  features: int
  num_convs: int = 2
  activation: Act = "relu"
  init_scale: Union[float, Array] = 1.0
  conv: Callable = layers.Conv
  norm: Optional[Callable] = None
  act: Callable = layers.Activation

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    for i in range(self.num_convs):
      x = ConvBlock(self.features, (3, 3), **_parts(self), name=f"conv{i + 1}")(x, train=train)  # [B, H, W, f]
    return layers.max_pool(x, (2, 2))                                                  # [B, H/2, W/2, features]
