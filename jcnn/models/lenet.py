"""LeNet-5 (LeCun et al. 1998) on 32x32x1 (pad 28x28 MNIST by 2 pixels: config.data.pad=2).

  c1  Conv 6@5x5 + act      -> [B, 28, 28, 6]       156 params
  s2  2x2 subsampling       -> [B, 14, 14, 6]
  c3  Conv 16@5x5 + act     -> [B, 10, 10, 16]    2,416 params  (every C3 map sees all six S2 maps, not the paper's
                                                                  sparse table of 1,516 weights)
  s4  2x2 subsampling       -> [B, 5, 5, 16]
  c5  Conv 120@5x5 + act    -> [B, 1, 1, 120]    48,120 params
  f6  Dense 84 + act        -> [B, 84]           10,164 params
  head Dense 10             -> [B, 10]              850 params   (61,706 in all)
Subsampling is average pooling (`pool='avg'`, the paper's, without its trainable coefficient and bias) or max pooling
(`pool='max'`); tanh by default (the paper's scaled tanh 1.7159 tanh(2x/3) is close to it); softmax logits instead of
the paper's RBF output layer.
"""
from typing import Union

import flax.linen as nn
import jax

from jcnn.nn import layers


class LeNet5(nn.Module):
  num_classes: int = 10
  activation: Union[str, int, jax.Array] = "tanh"
  dropout_rate: Union[float, jax.Array] = 0.0     # before f6 and before the head; 0 = off (the paper has none)
  init_scale: Union[float, jax.Array] = 1.0
  pool: str = "avg"                                 # 'avg' | 'max'

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.pool not in ("avg", "max"):
      raise ValueError(f"pool={self.pool!r}: use 'avg' (the paper's subsampling) or 'max'")
    pool = layers.AvgPool if self.pool == "avg" else layers.MaxPool
    conv = lambda f, name: layers.Conv(f, (5, 5), init_scale=self.init_scale, name=name)
    act = lambda name: layers.Activation(self.activation, name=name)
    x = act("act1")(conv(6, "c1")(x), train=train)          # [B, 28, 28, 6]
    x = pool((2, 2), name="s2")(x)                           # [B, 14, 14, 6]
    x = act("act3")(conv(16, "c3")(x), train=train)         # [B, 10, 10, 16]
    x = pool((2, 2), name="s4")(x)                           # [B, 5, 5, 16]
    x = act("act5")(conv(120, "c5")(x), train=train)        # [B, 1, 1, 120]
    x = layers.Flatten(name="flatten")(x)                    # [B, 120]
    x = layers.Dropout(self.dropout_rate, name="dropout1")(x, train=train)
    x = act("act6")(layers.Dense(84, init_scale=self.init_scale, name="f6")(x), train=train)   # [B, 84]
    x = layers.Dropout(self.dropout_rate, name="dropout2")(x, train=train)
    return layers.Dense(self.num_classes, init_scale=self.init_scale, name="head")(x)        # [B, classes] logits
