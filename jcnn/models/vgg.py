"""VGG-11/13/16/19 (Simonyan & Zisserman 2015, configurations A, B, D, E), with optional BatchNorm.

Five VGGBlocks (3x3 convs at padding 1, then a 2x2 max-pool) of 64, 128, 256, 512, 512 channels, then a head:
  head='imagenet' (224x224x3): adaptive average pool to 7x7 -> flatten 25,088 -> [dropout, fc 4096, act] x 2 -> fc
                  (torchvision's layout; VGG-16 without BN at 1000 classes: 138,357,544 params)
  head='cifar'    (32x32 input, the five pools leave 1x1x512): global average pool -> dropout -> fc(num_classes);
                  (VGG-11-BN at 10 classes, `vgg11_cifar`: 9,228,362 params), a common CIFAR variant
With batch_norm=True the convs have no bias (BN's shift replaces it): VGG-16-BN has 138,361,768 params, torchvision's
vgg16_bn 138,365,992 (it keeps the 4,224 redundant conv biases).
`width` divides every channel count (tiny test variants).
"""
import functools
from typing import Callable, Optional, Union

import flax.linen as nn
import jax

from jcnn.nn import blocks, layers
from jcnn.models.alexnet import adaptive_avg_pool

# Convs per stage: configurations A, B, D, E of the paper's Table 1.
CONFIGS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
  depth: int = 16
  batch_norm: bool = False
  head: str = "imagenet"        # 'imagenet' | 'cifar'
  num_classes: int = 1000
  activation: Union[str, int, jax.Array] = "relu"
  dropout_rate: Union[float, jax.Array] = 0.5
  init_scale: Union[float, jax.Array] = 1.0
  width: int = 1                # divides the channel counts
  hidden: int = 4096            # the ImageNet head's fc width
  conv: Callable = functools.partial(layers.Conv, kernel_init=blocks.HE_INIT)
  norm: Optional[Callable] = blocks.BATCH_NORM   # used only when batch_norm=True

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.depth not in CONFIGS:
      raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {self.depth}")
    norm = self.norm if self.batch_norm else None
    for i, (n, w) in enumerate(zip(CONFIGS[self.depth], WIDTHS)):
      x = blocks.VGGBlock(w // self.width, n, activation=self.activation, init_scale=self.init_scale, conv=self.conv,
                          norm=norm, name=f"stage{i + 1}")(x, train=train)       # [B, H/2^(i+1), W/2^(i+1), w]
    if self.head == "cifar":
      x = layers.global_avg_pool(x)                                              # [B, 512]
      x = layers.Dropout(self.dropout_rate, name="dropout")(x, train=train)
      return layers.Dense(self.num_classes, init_scale=self.init_scale, name="head")(x)
    if self.head != "imagenet":
      raise ValueError(f"head={self.head!r}: use 'imagenet' (224x224 input) or 'cifar' (32x32 input)")
    x = adaptive_avg_pool(x, (7, 7))                                             # [B, 7, 7, 512]
    x = x.reshape(x.shape[0], -1)                                                # [B, 25088]
    for i in range(2):
      x = layers.Dense(self.hidden // self.width, init_scale=self.init_scale, name=f"fc{i + 1}")(x)
      x = layers.Activation(self.activation, name=f"act_fc{i + 1}")(x, train=train)
      x = layers.Dropout(self.dropout_rate, name=f"dropout{i + 1}")(x, train=train)
    return layers.Dense(self.num_classes, init_scale=self.init_scale, name="head")(x)   # [B, classes] logits


VGG11 = functools.partial(VGG, depth=11)
VGG13 = functools.partial(VGG, depth=13)
VGG16 = functools.partial(VGG, depth=16)
VGG19 = functools.partial(VGG, depth=19)
VGG11CIFAR = functools.partial(VGG, depth=11, batch_norm=True, head="cifar", num_classes=10)
VGGTiny = functools.partial(VGG, depth=11, batch_norm=True, head="cifar", num_classes=10, width=16)
