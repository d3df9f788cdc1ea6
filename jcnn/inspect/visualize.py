"""Seeing inside a CNN: feature maps of any named layer, first-layer filters, activation maximisation, saliency.

Every function takes the model and live variables ({"params": ..., "batch_stats": ...}); nothing reads global state.
`python -m jcnn.inspect` (jcnn/inspect/cli.py) draws them as PNG grids.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn.nn import kernels as kernels_lib


# ----------------------------------------------------------------------------------------------------------------
# Looking at layers.
def layer_output(model: nn.Module, variables, x: jax.Array, layer: str):
  """The output of the submodule named `layer` ("conv1", or a path "stage1_block1/conv1") on x, in eval mode.

  Raises ValueError naming the layers there are when no submodule has that name."""
  found, names = {}, []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path:
      name = "/".join(context.module.path)
      names.append(name)
      if name == layer and layer not in found:
        found[layer] = out
    return out

  with nn.intercept_methods(record):
    model.apply(variables, x, train=False)
  if layer not in found:
    shown = [n for n in dict.fromkeys(names) if "/" not in n]
    raise ValueError(f"no layer named {layer!r} in {type(model).__name__}; layers: {', '.join(shown)}")
  return found[layer]


def feature_maps(model: nn.Module, variables, x: jax.Array, layer: str) -> jax.Array:
  """Feature maps of `layer` for images x [B, H, W, C] -> [B, h, w, F] (after whatever that layer computes: for the
  convnet's `conv1` the conv and its bias; `act1` adds the activation)."""
  return layer_output(model, variables, x, layer)


def first_conv_kernel(model: nn.Module, variables, x: jax.Array) -> tuple[str, jax.Array]:
  """(name, kernel [kh, kw, C_in, F]) of the first convolution the model calls on x."""
  order = []

  def record(next_fun, args, kwargs, context):
    order.append(tuple(context.module.path))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x, train=False)
  for path in order:
    node = variables["params"]
    for p in path:
      node = node.get(p, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict) and "kernel" in node and node["kernel"].ndim == 4:
      return "/".join(path), node["kernel"]
  raise ValueError(f"{type(model).__name__} has no 2-d convolution")


# ----------------------------------------------------------------------------------------------------------------
# What a filter responds to.
def blur(x: jax.Array) -> jax.Array:
  """3x3 Gaussian blur of one image [H, W, C] (zero padding), per channel."""
  return kernels_lib.FixedConv(("gaussian_blur",)).apply({}, x[None])[0]


def activation_maximisation(model: nn.Module, variables, layer: str, channels: Sequence[int], image_shape,
                            key: jax.Array, steps: int = 200, lr: float = 0.05, l2: float = 1e-3,
                            blur_weight: float = 0.1):
  """Images that maximise each channel's mean activation, found by gradient ascent on the input (parameters frozen).

  From x0 ~ 0.1 N(0, 1), each step: x += lr * g / rms(g) with g = grad of [mean of the channel's output - l2 * mean
  x^2], then x = (1 - blur_weight) x + blur_weight * blur(x) (the blur regulariser: high-frequency noise decays).
  All channels run together: one jitted program, vmapped over the channel index.

  Returns:
    images [K, *image_shape], objective before [K] and after [K] (the channel's mean activation).
  """
  channels = jnp.asarray(channels, jnp.int32)

  def objective(x, c):                                           # x [H, W, C] -> scalar
    y = layer_output(model, variables, x[None], layer)           # [1, h, w, F] or [1, F]
    return jnp.take(y, c, axis=-1).mean()

  def ascend(x, c):
    def step(x, _):
      g = jax.grad(lambda x: objective(x, c) - l2 * jnp.mean(x ** 2))(x)
      x = x + lr * g / (jnp.sqrt(jnp.mean(g ** 2)) + 1e-12)
      return (1 - blur_weight) * x + blur_weight * blur(x), None

    final, _ = lax.scan(step, x, None, length=steps)
    return final, objective(x, c), objective(final, c)

  x0 = 0.1 * jax.random.normal(key, (channels.shape[0],) + tuple(image_shape))
  return jax.jit(jax.vmap(ascend))(x0, channels)


def saliency(model: nn.Module, variables, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """|d logit[predicted class] / d input|, max over input channels: x [B, H, W, C] -> ([B, H, W], predictions [B])."""
  def score(xi):
    logits = model.apply(variables, xi[None], train=False)[0]
    return logits[jnp.argmax(logits)]                            # the argmax is a constant index to autodiff

  grads = jax.jit(jax.vmap(jax.grad(score)))(x)
  preds = jnp.argmax(model.apply(variables, x, train=False), -1)
  return jnp.abs(grads).max(-1), preds
