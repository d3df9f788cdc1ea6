"""The Keras MNIST convnet (Chollet, "Deep Learning with Python", 5.1) and the dense-only baseline it is compared with.

ConvNet on [B, 28, 28, 1]:
  conv1 Conv32 3x3 + act -> [B, 26, 26, 32]      320 params
  pool1 MaxPool 2x2      -> [B, 13, 13, 32]
  conv2 Conv64 3x3 + act -> [B, 11, 11, 64]   18,496 params
  pool2 MaxPool 2x2      -> [B, 5, 5, 64]
  conv3 Conv64 3x3 + act -> [B, 3, 3, 64]     36,928 params   (55,744 before Flatten)
  flatten                -> [B, 576]
  dense1 Dense64 + act   -> [B, 64]          36,928 params
  head  Dense10          -> [B, 10]             650 params   (93,322 in all)
Dropout (rate may be traced; 0 = off) sits before dense1 and before the head.
"""
from typing import Union

import flax.linen as nn
import jax

from jcnn.nn import layers


class ConvNet(nn.Module):
  num_classes: int = 10
  activation: Union[str, int, jax.Array] = "relu"
  dropout_rate: Union[float, jax.Array] = 0.0
  init_scale: Union[float, jax.Array] = 1.0
  features: tuple[int, ...] = (32, 64, 64)
  dense: int = 64
  lowering: str = "auto"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = lambda f, name: layers.Conv(f, (3, 3), init_scale=self.init_scale, lowering=self.lowering, name=name)
    act = lambda name: layers.Activation(self.activation, name=name)
    for i, f in enumerate(self.features):
      x = conv(f, f"conv{i + 1}")(x)                          # [B, H-2, W-2, f]
      x = act(f"act{i + 1}")(x, train=train)
      if i < len(self.features) - 1:
        x = layers.MaxPool((2, 2), name=f"pool{i + 1}")(x)    # [B, H/2, W/2, f]
    x = layers.Flatten(name="flatten")(x)                     # [B, 576] on 28x28 input
    x = layers.Dropout(self.dropout_rate, name="dropout1")(x, train=train)
    x = layers.Dense(self.dense, init_scale=self.init_scale, name="dense1")(x)
    x = act("act_dense1")(x, train=train)
    x = layers.Dropout(self.dropout_rate, name="dropout2")(x, train=train)
    return layers.Dense(self.num_classes, init_scale=self.init_scale, name="head")(x)   # [B, classes] logits


class MLP(nn.Module):
  """Flatten -> Dense512 + act -> Dense10: the dense-only baseline (407,050 params on 28x28x1)."""
  num_classes: int = 10
  hidden: tuple[int, ...] = (512,)
  activation: Union[str, int, jax.Array] = "relu"
  dropout_rate: Union[float, jax.Array] = 0.0
  init_scale: Union[float, jax.Array] = 1.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = layers.Flatten(name="flatten")(x)
    for i, h in enumerate(self.hidden):
      x = layers.Dense(h, init_scale=self.init_scale, name=f"dense{i + 1}")(x)
      x = layers.Activation(self.activation, name=f"act{i + 1}")(x, train=train)
      x = layers.Dropout(self.dropout_rate, name=f"dropout{i + 1}")(x, train=train)
    return layers.Dense(self.num_classes, init_scale=self.init_scale, name="head")(x)
