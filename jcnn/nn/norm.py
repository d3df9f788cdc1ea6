"""BatchNorm with its own VJP, optionally fused with the ReLU that follows it (a CPU speed option, docs/performance.md).

`BatchNorm` has flax `nn.BatchNorm`'s variables (params scale, bias; batch_stats mean, var), its statistics
(full-batch, biased variance E[x^2] - E[x]^2 clipped at 0, as flax's fast variance) and its running-average update,
so parameters and checkpoints move between the two unchanged (tests/test_norm.py checks forward, gradients and running
statistics against flax). Training forward: one pass of sums (Σx, Σx^2 per channel), one elementwise pass. Backward,
with g = dy (times the ReLU mask when fused) and x̂ = (x - mean) * inv:
  dbias = Σg,  dscale = Σ g x̂,  dx = scale * inv * (g - (dbias + x̂ dscale) / N)
one pass of two sums, one elementwise pass; nothing but x (and the per-channel vectors) is kept for it.
"""
from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_act(x, scale, bias, epsilon: float, relu: bool):
  """Training-mode batch norm over all axes but the last, then ReLU if `relu`. x [..., C]; scale, bias [C]."""
  return _forward(x, scale, bias, epsilon, relu)[0]


def _stats(x):
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  var = jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)
  return mean, var


def _forward(x, scale, bias, epsilon, relu):
  mean, var = _stats(x)
  inv = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (inv * scale) + bias
  return (jnp.maximum(y, 0) if relu else y), (x, mean, inv, scale, bias)


def _fwd(x, scale, bias, epsilon, relu):
  return _forward(x, scale, bias, epsilon, relu)


def _bwd(epsilon, relu, res, dy):
  del epsilon
  x, mean, inv, scale, bias = res
  xhat = (x - mean) * inv
  g = jnp.where(xhat * scale + bias > 0, dy, 0) if relu else dy
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  dbias, dscale = g.sum(axes), (g * xhat).sum(axes)      # one pass over g and x: two sums per channel
  dx = (scale * inv) * (g - (dbias + xhat * dscale) / n)
  return dx, dscale, dbias


batch_norm_act.defvjp(_fwd, _bwd)


class BatchNorm(nn.Module):
  """Drop-in for `nn.BatchNorm(momentum, epsilon)` on [..., C] (feature axis last), same variables and statistics.

  `__call__(x, use_running_average, act=None)`: act='relu' applies the ReLU inside the same VJP (ConvBlock and
  PreActConv pass it when the activation that follows is a plain 'relu'). `fuses_act` tells blocks they may.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  fuses_act = True

  @nn.compact
  def __call__(self, x, use_running_average: bool = False, act: Optional[str] = None):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    if act not in (None, "relu"):
      raise ValueError(f"BatchNorm fuses only act='relu', got {act!r}")
    if use_running_average:   # in x's dtype (statistics may arrive wider, e.g. float64 when traced for ONNX export)
      mean, inv = ra_mean.value.astype(x.dtype), jax.lax.rsqrt(ra_var.value + self.epsilon).astype(x.dtype)
      y = (x - mean) * (inv * scale.astype(x.dtype)) + bias.astype(x.dtype)
      return jnp.maximum(y, 0) if act else y
    if not self.is_initializing():
      mean, var = jax.lax.stop_gradient(_stats(x))        # the same sums as inside batch_norm_act: XLA CSEs them
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return batch_norm_act(x, scale.astype(x.dtype), bias.astype(x.dtype), self.epsilon, act == "relu")
