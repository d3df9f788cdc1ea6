"""GoogLeNet / Inception v1 (Szegedy et al. 2014) with BatchNorm after every conv and no auxiliary heads, in
torchvision's layout (224x224x3; 6,624,904 params at 1000 classes = torchvision's googlenet without aux heads, its
published count).

  stem   ConvBlock 64 7x7/2, max-pool 3x3/2, ConvBlock 64 1x1, ConvBlock 192 3x3, max-pool 3x3/2  -> [B, 28, 28, 192]
  3a, 3b                                                   -> [B, 28, 28, 480]   max-pool 3x3/2
  4a .. 4e                                                 -> [B, 14, 14, 832]   max-pool 2x2/2
  5a, 5b                                                   -> [B, 7, 7, 1024]
  head   global average pool -> dropout (0.2) -> fc(num_classes)
Pools use SAME padding (= PyTorch's ceil_mode here). `k5=3` is torchvision's (its "5x5" branch is a 3x3); `k5=5`
gives the paper's 5x5 convs (7,005,832 params). `width` divides every channel count (tiny test variants).
"""
import functools
from typing import Callable, Optional, Union

import flax.linen as nn
import jax

from jcnn.nn import blocks, layers

# (c1, c3r, c3, c5r, c5, pool_proj) per Inception module, the paper's Table 1; "pool" marks a max-pool.
MODULES = (("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64)), "pool",
           ("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)), ("4c", (128, 128, 256, 24, 64, 64)),
           ("4d", (112, 144, 288, 32, 64, 64)), ("4e", (256, 160, 320, 32, 128, 128)), "pool",
           ("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128)))


class GoogLeNet(nn.Module):
  num_classes: int = 1000
  activation: Union[str, int, jax.Array] = "relu"
  dropout_rate: Union[float, jax.Array] = 0.2
  init_scale: Union[float, jax.Array] = 1.0
  k5: int = 3
  width: int = 1
  conv: Callable = layers.Conv
  norm: Optional[Callable] = functools.partial(blocks.BATCH_NORM, epsilon=1e-3)   # torchvision's eps

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    parts = dict(activation=self.activation, init_scale=self.init_scale, conv=self.conv, norm=self.norm)
    w = self.width
    x = blocks.ConvBlock(64 // w, (7, 7), 2, **parts, name="conv1")(x, train=train)    # [B, 112, 112, 64]
    x = layers.max_pool(x, (3, 3), 2, "SAME")                                           # [B, 56, 56, 64]
    x = blocks.ConvBlock(64 // w, (1, 1), **parts, name="conv2")(x, train=train)
    x = blocks.ConvBlock(192 // w, (3, 3), **parts, name="conv3")(x, train=train)      # [B, 56, 56, 192]
    x = layers.max_pool(x, (3, 3), 2, "SAME")                                           # [B, 28, 28, 192]
    pools = 0
    for m in MODULES:
      if m == "pool":
        pools += 1
        x = layers.max_pool(x, (3, 3), 2, "SAME") if pools == 1 else layers.max_pool(x, (2, 2), 2, "SAME")
        continue
      name, chans = m
      x = blocks.InceptionBlock(*(c // w for c in chans), k5=self.k5, **parts, name=f"inception{name}")(x, train=train)
    x = layers.global_avg_pool(x)                                                       # [B, 1024]
    x = layers.Dropout(self.dropout_rate, name="dropout")(x, train=train)
    return layers.Dense(self.num_classes, init_scale=self.init_scale, name="head")(x)  # [B, classes] logits


GoogLeNetTiny = functools.partial(GoogLeNet, width=16, num_classes=10)
