"""TextCNN (Kim 2014, "Convolutional Neural Networks for Sentence Classification"), CNN-rand: learned embeddings.

  input  int token ids                      [B, T]    (0 = padding)
  embed  Embed(vocab_size, embed_dim)       [B, T, E]
  conv_w 1-D Conv num_filters, window w + act, for w in windows (3, 4, 5), in parallel   [B, T - w + 1, F]
  max over time, concatenate                [B, len(windows) * F]
  dropout (0.5), head Dense(num_classes)    [B, classes] logits
Float inputs are cast to int32, so tools that trace a float input of shape [T] (the summary, init) also work.
"""
import functools
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jcnn.nn import layers


class TextCNN(nn.Module):
  num_classes: int = 2
  vocab_size: int = 20000
  embed_dim: int = 128
  num_filters: int = 100
  windows: Sequence[int] = (3, 4, 5)
  activation: Union[str, int, jax.Array] = "relu"
  dropout_rate: Union[float, jax.Array] = 0.5
  init_scale: Union[float, jax.Array] = 1.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      x = x.astype(jnp.int32)
    x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(x)                        # [B, T, E]
    pooled = []
    for w in self.windows:
      h = layers.Conv(self.num_filters, (w,), init_scale=self.init_scale, name=f"conv{w}")(x)   # [B, T - w + 1, F]
      h = layers.Activation(self.activation, name=f"act{w}")(h, train=train)
      pooled.append(h.max(axis=1))                                                        # [B, F] max over time
    x = jnp.concatenate(pooled, axis=-1)                                                  # [B, len(windows) * F]
    x = layers.Dropout(self.dropout_rate, name="dropout")(x, train=train)
    return layers.Dense(self.num_classes, init_scale=self.init_scale, name="head")(x)    # [B, classes] logits


TextCNNTiny = functools.partial(TextCNN, vocab_size=100, embed_dim=8, num_filters=4)
