"""AlexNet (Krizhevsky et al. 2012), single-tower, in torchvision's layout (224x224x3; 61,100,840 params at 1000
classes, the same as torchvision.models.alexnet).

  conv1 64 11x11/4 pad 2 + act  -> [B, 55, 55, 64]     max-pool 3x3/2 -> 27
  conv2 192 5x5 pad 2 + act     -> [B, 27, 27, 192]    max-pool 3x3/2 -> 13
  conv3 384, conv4 256, conv5 256, 3x3 pad 1 + act -> [B, 13, 13, 256]   max-pool 3x3/2 -> 6
  adaptive average pool to 6x6 -> flatten 9,216 -> dropout, fc6 4096 + act -> dropout, fc7 4096 + act -> head
The adaptive pool (torchvision's AdaptiveAvgPool2d) lets other input sizes (e.g. 64x64) reach the same classifier.
No local response normalisation (torchvision drops it too).
"""
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jcnn.nn import layers


def adaptive_avg_pool(x: jax.Array, out: Sequence[int]) -> jax.Array:
  """PyTorch's AdaptiveAvgPool2d: output cell i averages input rows floor(i n / o) .. ceil((i + 1) n / o) - 1."""
  b, h, w, c = x.shape
  oh, ow = out
  if (h, w) == (oh, ow):
    return x
  rows = []
  for i in range(oh):
    r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
    cols = []
    for j in range(ow):
      c0, c1 = (j * w) // ow, -(-((j + 1) * w) // ow)
      cols.append(x[:, r0:r1, c0:c1, :].mean(axis=(1, 2)))   # [B, C]
    rows.append(jnp.stack(cols, axis=1))                     # [B, ow, C]
  return jnp.stack(rows, axis=1)                             # [B, oh, ow, C]


class AlexNet(nn.Module):
  num_classes: int = 1000
  activation: Union[str, int, jax.Array] = "relu"
  dropout_rate: Union[float, jax.Array] = 0.5
  init_scale: Union[float, jax.Array] = 1.0
  features: Sequence[int] = (64, 192, 384, 256, 256)
  hidden: int = 4096
  pool_size: Sequence[int] = (6, 6)      # the adaptive pool's output

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    f = self.features
    specs = [(f[0], 11, 4, 2, True), (f[1], 5, 1, 2, True), (f[2], 3, 1, 1, False), (f[3], 3, 1, 1, False),
             (f[4], 3, 1, 1, True)]   # (features, kernel, stride, padding, max-pool after)
    for i, (feat, k, s, p, pool) in enumerate(specs):
      x = layers.Conv(feat, (k, k), strides=s, padding=p, init_scale=self.init_scale, name=f"conv{i + 1}")(x)
      x = layers.Activation(self.activation, name=f"act{i + 1}")(x, train=train)
      if pool:
        x = layers.max_pool(x, (3, 3), 2)                    # overlapping pooling; 55 -> 27 -> 13 -> 6 at 224
    x = adaptive_avg_pool(x, tuple(self.pool_size))          # [B, 6, 6, 256]
    x = x.reshape(x.shape[0], -1)                            # [B, 9216]
    for i in range(2):
      x = layers.Dropout(self.dropout_rate, name=f"dropout{i + 1}")(x, train=train)
      x = layers.Dense(self.hidden, init_scale=self.init_scale, name=f"fc{i + 6}")(x)
      x = layers.Activation(self.activation, name=f"act_fc{i + 6}")(x, train=train)
    return layers.Dense(self.num_classes, init_scale=self.init_scale, name="head")(x)   # [B, classes] logits
