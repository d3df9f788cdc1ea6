"""ResNets (He et al. 2016): the ImageNet family (ResNet-18/34/50/101) and the CIFAR family (6n+2 layers, §4.2).

ImageNet layout (torchvision's; 224x224x3 -> 1000 classes; ResNet-18 11,689,512 params, ResNet-50 25,557,032):
  stem   ConvBlock 64 7x7/2 + max-pool 3x3/2     -> [B, 56, 56, 64]
  stage1..4: stage_sizes blocks of widths 64, 128, 256, 512 (x4 for Bottleneck), the first of stages 2-4 strided
  head   global average pool -> Dense(num_classes)
CIFAR stem (`stem='cifar'`, for 32x32 input): one ConvBlock 3x3/1 of widths[0] channels and no max-pool, so the
stages see 32x32, 16x16, 8x8, 4x4 (He et al.'s CIFAR nets; ResNet18 with this stem is the common "ResNet-18 on CIFAR").

CIFAR ResNets (`ResNet20` & co.): stem 3x3 16, three stages of n BasicBlocks with 16/32/64 channels (strides 1, 2, 2),
option-A (zero-padding, parameter-free) shortcuts, global pool, Dense: 6n + 2 weighted layers; ResNet-20 at 10
classes has 269,722 params (the paper's 0.27M).
"""
import functools
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax

from jcnn.nn import blocks, layers


class ResNet(nn.Module):
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: Any = blocks.BasicBlock
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"             # 'imagenet' (7x7/2 + max-pool) | 'cifar' (3x3/1, no pool)
  shortcut: str = "projection"       # 'projection' (1x1 conv + BN) | 'pad' (option A)
  num_classes: int = 1000
  activation: Union[str, int, jax.Array] = "relu"
  dropout_rate: Union[float, jax.Array] = 0.0     # inside each block (between its convs), as wide ResNets
  init_scale: Union[float, jax.Array] = 1.0
  conv: Callable = functools.partial(layers.Conv, kernel_init=blocks.HE_INIT)
  norm: Optional[Callable] = blocks.BATCH_NORM

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    parts = dict(activation=self.activation, init_scale=self.init_scale, conv=self.conv, norm=self.norm)
    if self.stem == "imagenet":
      x = blocks.ConvBlock(self.widths[0], (7, 7), 2, **parts, name="stem")(x, train=train)   # [B, H/2, W/2, 64]
      x = layers.max_pool(x, (3, 3), 2, [(1, 1), (1, 1)])                                       # [B, H/4, W/4, 64]
    elif self.stem == "cifar":
      x = blocks.ConvBlock(self.widths[0], (3, 3), 1, **parts, name="stem")(x, train=train)   # [B, H, W, w0]
    else:
      raise ValueError(f"stem={self.stem!r}: use 'imagenet' (224x224 input) or 'cifar' (32x32 input)")
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block(width, strides, shortcut=self.shortcut, dropout_rate=self.dropout_rate, **parts,
                       name=f"stage{i + 1}_block{j + 1}")(x, train=train)      # [B, H/2^i, W/2^i, width * expansion]
    x = layers.global_avg_pool(x)                                                               # [B, C]
    return layers.Dense(self.num_classes, name="head")(x)                                      # [B, classes] logits


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=blocks.BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=blocks.BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=blocks.Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=blocks.Bottleneck)
ResNet18CIFAR = functools.partial(ResNet18, stem="cifar", num_classes=10)


def cifar_resnet(depth: int, **kw) -> functools.partial:
  """He et al.'s CIFAR ResNet with depth = 6n + 2 (20, 32, 44, 56, 110, ...)."""
  if (depth - 2) % 6:
    raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
  n = (depth - 2) // 6
  return functools.partial(ResNet, stage_sizes=(n, n, n), block=blocks.BasicBlock, widths=(16, 32, 64),
                           stem="cifar", shortcut="pad", num_classes=10, **kw)


ResNet20 = cifar_resnet(20)
ResNet32 = cifar_resnet(32)
ResNet44 = cifar_resnet(44)
ResNet56 = cifar_resnet(56)
ResNet110 = cifar_resnet(110)
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), block=blocks.BasicBlock, widths=(8, 16), stem="cifar",
                               shortcut="pad", num_classes=10)   # ResNet-6 with 8/16 channels, for tests
