"""DenseNets (Huang et al. 2017): DenseNet-121 (ImageNet) and DenseNet-BC for CIFAR.

ImageNet (torchvision's layout; DenseNet-121 at 1000 classes: 7,978,856 params, torchvision's count):
  stem   ConvBlock 2k... 64 7x7/2 (conv-BN-act) + max-pool 3x3/2 pad 1 -> [B, 56, 56, 64]
  4 DenseBlocks of (6, 12, 24, 16) bottleneck layers (growth k = 32, 1x1 conv to 4k), Transitions halving the channels
  and the resolution between them; final BN-act, global pool, fc.
CIFAR DenseNet-BC (`stem='cifar'`): a 3x3 conv of 2k channels, three DenseBlocks of (L - 4) / 6 bottleneck layers each,
compression 0.5; L=100, k=12 has 769,162 params at 10 classes (the paper's Table 2: 0.8M).
"""
import functools
from typing import Callable, Optional, Sequence, Union

import flax.linen as nn
import jax

from jcnn.nn import blocks, layers


class DenseNet(nn.Module):
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  init_features: int = 64
  compression: float = 0.5
  bottleneck_width: int = 4     # 0: DenseNet without the B (bottleneck) layers
  stem: str = "imagenet"        # 'imagenet' (7x7/2 conv-BN-act + max-pool) | 'cifar' (3x3 conv)
  num_classes: int = 1000
  activation: Union[str, int, jax.Array] = "relu"
  dropout_rate: Union[float, jax.Array] = 0.0    # after every conv in the dense blocks and transitions
  init_scale: Union[float, jax.Array] = 1.0
  conv: Callable = functools.partial(layers.Conv, kernel_init=blocks.HE_INIT)
  norm: Optional[Callable] = blocks.BATCH_NORM

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    parts = dict(activation=self.activation, init_scale=self.init_scale, conv=self.conv, norm=self.norm)
    if self.stem == "imagenet":
      x = blocks.ConvBlock(self.init_features, (7, 7), 2, **parts, name="stem")(x, train=train)   # [B, H/2, W/2, C]
      x = layers.max_pool(x, (3, 3), 2, [(1, 1), (1, 1)])                                          # [B, H/4, W/4, C]
    elif self.stem == "cifar":   # a plain conv: the first dense layer's BN-act follows it
      x = self.conv(self.init_features, (3, 3), padding=1, use_bias=False, init_scale=self.init_scale,
                    name="stem")(x)                                                                # [B, H, W, C]
    else:
      raise ValueError(f"stem={self.stem!r}: use 'imagenet' (224x224 input) or 'cifar' (32x32 input)")
    for i, n in enumerate(self.block_sizes):
      x = blocks.DenseBlock(n, self.growth_rate, self.bottleneck_width, self.dropout_rate, **parts,
                            name=f"block{i + 1}")(x, train=train)                     # [B, h, w, C + n k]
      if i < len(self.block_sizes) - 1:
        x = blocks.Transition(int(x.shape[-1] * self.compression), self.dropout_rate, **parts,
                              name=f"transition{i + 1}")(x, train=train)             # [B, h/2, w/2, C * compression]
    x = blocks.norm_act(self.norm, layers.Activation, self.activation, x, train, "final_norm", "final_act")
    x = layers.global_avg_pool(x)                                                     # [B, C]
    return layers.Dense(self.num_classes, init_scale=self.init_scale, name="head")(x)  # [B, classes] logits


DenseNet121 = functools.partial(DenseNet, block_sizes=(6, 12, 24, 16), growth_rate=32, init_features=64)


def densenet_bc(depth: int = 100, growth_rate: int = 12, **kw) -> functools.partial:
  """CIFAR DenseNet-BC with depth L (= 6n + 4: three blocks of n bottleneck layers) and growth rate k."""
  if (depth - 4) % 6:
    raise ValueError(f"DenseNet-BC depth must be 6n + 4 (40, 100, 190, 250), got {depth}")
  n = (depth - 4) // 6
  return functools.partial(DenseNet, block_sizes=(n, n, n), growth_rate=growth_rate, init_features=2 * growth_rate,
                           stem="cifar", num_classes=10, **kw)


DenseNetBC100 = densenet_bc(100, 12)
DenseNetTiny = densenet_bc(16, 4)     # 2 layers per block, k = 4: for tests
