"""Layers: activations (by name or by traced index), dropout and noise with traced rates, conv, pooling, initialisers.

Everything here is a pure linen module or a pure function. Hyperparameters that a sweep varies (dropout rate, noise
level, init scale, activation index) may be traced arrays, so `jax.vmap` can run many settings in one program.

Convolutions pick a lowering per backend (`Conv.lowering`). On CPU: oneDNN's convolution through a custom call
(jcnn.nn.onednn) wherever it is built and measured faster for the layer's shape (measured once per machine and cached),
else an im2col ("patches") lowering — strided slices concatenated on the channel axis, then one matrix product — which
XLA:CPU runs faster than its native convolution and, unlike the native one, keeps its speed under `vmap`. Both run the
same code at a program's top level and inside a loop body, so a sweep variant and its standalone run round alike. On
GPU/TPU the native convolution. All use the same HWIO kernel, so parameters are interchangeable.
See benchmarks/conv_lowering.py.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcnn.nn import onednn

Array = jax.Array
Padding = Union[str, int, Sequence[int], Sequence[tuple[int, int]]]

# ----------------------------------------------------------------------------------------------------------------
# Activations. The order of ACTIVATIONS is the meaning of an activation index: do not reorder, only append.
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "rrelu", "elu", "gelu", "swish", "identity")
LEAKY_SLOPE = 0.01        # leaky_relu's fixed slope (Keras/PyTorch default)
PRELU_INIT = 0.25         # prelu's learned slope starts here (He et al. 2015; PyTorch default)
RRELU_RANGE = (1 / 8, 1 / 3)  # rrelu's slope ~ U[l, u] while training, (l + u) / 2 at eval (Xu et al. 2015)


def activation_index(name: str) -> int:
  """The traced-index form of an activation name, for sweeps."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
  return ACTIVATIONS.index(name)


def _apply_named(name: str, x: Array, slope: Array | None, key: Array | None, train: bool) -> Array:
  if name == "sigmoid":
    return jax.nn.sigmoid(x)
  if name == "tanh":
    return jnp.tanh(x)
  if name == "relu":
    return jax.nn.relu(x)
  if name == "leaky_relu":
    return jax.nn.leaky_relu(x, LEAKY_SLOPE)
  if name == "prelu":
    return jnp.where(x >= 0, x, slope * x)
  if name == "rrelu":
    lo, hi = RRELU_RANGE
    if train and key is not None:
      a = jax.random.uniform(key, x.shape, x.dtype, lo, hi)
    else:
      a = (lo + hi) / 2
    return jnp.where(x >= 0, x, a * x)
  if name == "elu":
    return jax.nn.elu(x)
  if name == "gelu":
    return jax.nn.gelu(x, approximate=False)
  if name == "swish":
    return jax.nn.swish(x)
  if name == "identity":
    return x
  raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


class Activation(nn.Module):
  """An activation chosen by name (static) or by index into ACTIVATIONS (may be a traced int, for vmapped sweeps).

  prelu owns one learned slope (a scalar per layer, as PyTorch's default); in index mode the slope parameter always
  exists, so every variant of a sweep has the same parameter tree. rrelu draws from the 'dropout' rng stream.
  """
  fn: Union[str, int, Array] = "relu"

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    if isinstance(self.fn, str):
      name = self.fn
      slope = self.param("slope", nn.initializers.constant(PRELU_INIT), ()) if name == "prelu" else None
      key = self.make_rng("dropout") if (name == "rrelu" and train) else None
      return _apply_named(name, x, slope, key, train)
    # Index mode: every branch is compiled; lax.switch runs one (or selects, under vmap over the index).
    slope = self.param("slope", nn.initializers.constant(PRELU_INIT), ())
    key = self.make_rng("dropout") if train else None
    branches = [functools.partial(_apply_named, name, slope=slope, key=key, train=train) for name in ACTIVATIONS]
    return lax.switch(jnp.asarray(self.fn, jnp.int32), branches, x)


def activation(fn: Union[str, int, Array]) -> Callable[..., Array]:
  """A plain function for parameter-free activations: `activation('relu')(x)`."""
  if isinstance(fn, str) and fn in ("prelu",):
    raise ValueError("prelu has a learned slope: use the Activation module")
  if isinstance(fn, str):
    return lambda x: _apply_named(fn, x, None, None, False)
  return lambda x: lax.switch(jnp.asarray(fn, jnp.int32),
                              [functools.partial(_apply_named, n, slope=PRELU_INIT, key=None, train=False)
                               for n in ACTIVATIONS], x)


# ----------------------------------------------------------------------------------------------------------------
# Stochastic layers with traced rates.
def check_rate(rate: float, what: str = "dropout rate") -> None:
  """Config-time check (rates are concrete there); raises ValueError naming the fix."""
  if not 0.0 <= float(rate) < 1.0:
    raise ValueError(f"{what} must be in [0, 1), got {rate}: 0 disables it, 0.5 drops half the units")


class Dropout(nn.Module):
  """Inverted dropout whose rate may be a traced value (flax's nn.Dropout branches in Python on its rate).

  Training: keep each unit with probability 1 - rate and scale kept units by 1 / (1 - rate). Eval: identity.
  A rate of exactly 0 is the identity in both modes (up to float rounding: x / 1).
  """
  rate: Union[float, Array] = 0.0

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if not train or (isinstance(self.rate, (int, float)) and self.rate == 0):
      return x
    rate = jnp.asarray(self.rate, x.dtype)
    keep = jax.random.uniform(self.make_rng("dropout"), x.shape, x.dtype) >= rate
    return jnp.where(keep, x / (1 - rate), jnp.zeros_like(x))


class GaussianNoise(nn.Module):
  """Adds N(0, stddev²) noise while training (stddev may be traced); identity at eval."""
  stddev: Union[float, Array] = 0.0

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if not train or (isinstance(self.stddev, (int, float)) and self.stddev == 0):
      return x
    return x + jnp.asarray(self.stddev, x.dtype) * jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Initialisers.
def scaled(init: Callable, scale: Union[float, Array]) -> Callable:
  """`init` multiplied by `scale` (the course's "multiply the random init by 0.01" is scale=0.01). Scale may be traced."""
  if isinstance(scale, (int, float)) and scale == 1:
    return init

  def scaled_init(key, shape, dtype=jnp.float32):
    return (jnp.asarray(scale, dtype) * init(key, shape, dtype)).astype(dtype)

  return scaled_init


DEFAULT_KERNEL_INIT = nn.initializers.glorot_uniform()  # Keras' default, so the Keras recipes reproduce


# ----------------------------------------------------------------------------------------------------------------
# Convolution.
def conv_output_size(n: int, f: int, p: int = 0, s: int = 1, d: int = 1) -> int:
  """Output length of a convolution: floor((n + 2p - d(f-1) - 1) / s) + 1 (= floor((n + 2p - f) / s) + 1 for d=1)."""
  return (n + 2 * p - d * (f - 1) - 1) // s + 1


def _pairs(padding: Padding, kernel: Sequence[int], dilation: Sequence[int], strides: Sequence[int],
           in_sizes: Sequence[int]) -> list[tuple[int, int]]:
  """Resolve VALID / SAME / int / per-dim padding into explicit (lo, hi) pairs, as lax does."""
  nd = len(kernel)
  if isinstance(padding, str):
    p = padding.upper()
    if p == "VALID":
      return [(0, 0)] * nd
    if p == "SAME":
      return list(lax.padtype_to_pads(in_sizes, [d * (k - 1) + 1 for k, d in zip(kernel, dilation)], strides, "SAME"))
    raise ValueError(f"padding {padding!r}: use 'VALID', 'SAME', an int, or (lo, hi) pairs")
  if isinstance(padding, int):
    return [(padding, padding)] * nd
  out = []
  for q in padding:
    out.append((q, q) if isinstance(q, int) else (int(q[0]), int(q[1])))
  return out


def conv_patches(x: Array, kernel: Array, strides: Sequence[int], pads: Sequence[tuple[int, int]],
                 dilation: Sequence[int]) -> Array:
  """N-d convolution as im2col + one matmul. x: [B, *spatial, C]; kernel: [*k, C, O] -> [B, *out, O].

  The patch tensor is built from kernel-size strided slices (no gather, no grouped conv), so its gradient is pads and
  adds, and a vmap over variants turns the matmul into a batched matmul.
  """
  nd = kernel.ndim - 2
  ks, (c_in, c_out) = kernel.shape[:nd], kernel.shape[nd:]
  x = jnp.pad(x, [(0, 0)] + list(pads) + [(0, 0)])
  out_sizes = [conv_output_size(x.shape[1 + i], ks[i], 0, strides[i], dilation[i]) for i in range(nd)]
  cols = []
  for offs in _ndindex(ks):
    start = [0] + [o * d for o, d in zip(offs, dilation)] + [0]
    limit = [x.shape[0]] + [o * d + (n - 1) * s + 1 for o, d, n, s in zip(offs, dilation, out_sizes, strides)] + [c_in]
    cols.append(lax.slice(x, start, limit, [1] + list(strides) + [1]))
  patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)  # [B, *out, prod(k) * C]
  return jnp.dot(patches, kernel.reshape(-1, c_out))


def _ndindex(shape):
  if not shape:
    yield ()
    return
  for i in range(shape[0]):
    for rest in _ndindex(shape[1:]):
      yield (i,) + rest


def conv_native(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  nd = kernel.ndim - 2
  spatial = "HWD"[:nd] if nd <= 3 else None
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape, ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C"))
  return lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation, dimension_numbers=dn)


# XLA:CPU's native convolution is slow for 1x1 kernels (a plain matmul is better: 'patches' is one) and very slow for
# outputs under 4x4 (VGG's 2x2x512 layers: 100x); elsewhere on 3x3 layers it beat im2col 1.0-3.9x in training, at
# the top level of a program (benchmarks/conv_lowering.py, docs/performance.md, 2-core AMD EPYC Zen 5, jax 0.10.2).
# Inside a loop body (lax.scan: chunked steps, CPU sweeps) it ran 16x slower than im2col, so 'auto' stays im2col.
NATIVE_MIN_OUT = 4


def shape_lowering(kernel: Sequence[int], out_spatial: Sequence[int]) -> str:
  """The CPU lowering for one layer: 'native' for kernels of more than one tap whose output is at least
  NATIVE_MIN_OUT in every spatial dim, else 'patches'."""
  return "native" if math.prod(kernel) > 1 and min(out_spatial) >= NATIVE_MIN_OUT else "patches"


def default_lowering() -> str:
  """'native' on GPU/TPU (cuDNN / TPU convs are the fast path); on CPU 'cpu': per layer shape, oneDNN where it is
  available and measured faster (onednn.choose), else 'patches' — the same choice wherever the conv is traced.
  'shape' (XLA's native conv for 3x3 layers at the top level of a program) stays opt-in: inside a loop body native is
  16x slower, so a run and its sweep variant would use different lowerings (docs/performance.md)."""
  if jax.default_backend() != "cpu":
    return "native"
  return "cpu"


_XLA_ONLY = contextvars.ContextVar("jcnn_xla_only", default=False)


@contextlib.contextmanager
def xla_lowering():
  """Within it, convolutions traced on CPU use XLA's own lowering ('patches') instead of the oneDNN custom call: for
  programs that leave JAX (ONNX export: a custom call cannot be exported). Read while tracing, never inside a program."""
  token = _XLA_ONLY.set(True)
  try:
    yield
  finally:
    _XLA_ONLY.reset(token)


def conv_onednn(x: Array, kernel: Array, strides, pads, dilation) -> Array:
  return onednn.conv(x, kernel, strides, pads, dilation)


class Conv(nn.Module):
  """N-d convolution (1-d text, 2-d images) with stride, VALID / SAME / explicit zero padding, dilation, init_scale.

  Parameters are `kernel` [*kernel_size, C_in, features] and `bias` [features], the same tree as flax's nn.Conv.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Union[int, Sequence[int]] = 1
  padding: Padding = "VALID"
  kernel_dilation: Union[int, Sequence[int]] = 1
  use_bias: bool = True
  init_scale: Union[float, Array] = 1.0
  kernel_init: Callable = DEFAULT_KERNEL_INIT
  # 'auto' (default_lowering: on CPU oneDNN or im2col per layer shape, measured; native on GPU/TPU) |
  # 'onednn' (jcnn.nn.onednn; im2col where it is unavailable) | 'patches' | 'native' |
  # 'shape' (layers.shape_lowering, wherever traced)
  lowering: str = "auto"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ks = tuple(self.kernel_size)
    nd = len(ks)
    if x.ndim != nd + 2:
      raise ValueError(f"{self.name or 'Conv'}: expected input [batch, {nd} spatial dims, channels], got shape "
                       f"{tuple(x.shape)}")
    strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides)
    dilation = (self.kernel_dilation,) * nd if isinstance(self.kernel_dilation, int) else tuple(self.kernel_dilation)
    pads = _pairs(self.padding, ks, dilation, strides, x.shape[1:-1])
    for n, k, (lo, hi), s, d in zip(x.shape[1:-1], ks, pads, strides, dilation):
      if n + lo + hi < d * (k - 1) + 1:
        raise ValueError(f"{self.name or 'Conv'}: input of spatial size {tuple(x.shape[1:-1])} is smaller than its "
                         f"{ks} kernel (padding {pads}); use a larger input, padding, or fewer downsampling layers")
    kernel = self.param("kernel", scaled(self.kernel_init, self.init_scale), ks + (x.shape[-1], self.features))
    kernel = kernel.astype(x.dtype)
    lowering = default_lowering() if self.lowering == "auto" else self.lowering
    if lowering in ("cpu", "onednn") and _XLA_ONLY.get():
      lowering = "patches"
    if lowering == "cpu":
      lowering = onednn.choose(x, kernel, strides, pads, dilation, conv_patches)
    elif lowering == "onednn":
      lowering = "onednn" if onednn.usable(x, kernel) else "patches"
    elif lowering == "shape":
      out = [conv_output_size(n + lo + hi, k, 0, s, d) for n, k, (lo, hi), s, d in zip(x.shape[1:-1], ks, pads, strides,
                                                                                         dilation)]
      lowering = shape_lowering(ks, out)
    fn = {"patches": conv_patches, "native": conv_native, "onednn": conv_onednn}[lowering]
    y = fn(x, kernel, strides, pads, dilation)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
    return y


class ConvTranspose(nn.Module):
  """Transposed ("fractionally strided") convolution; flax's nn.ConvTranspose with an init_scale. The kernel is flax's
  [kh, kw, in, out]: the output is the input scatter-added through the kernel flipped in space, so PyTorch
  ConvTranspose2d weights [in, out, kh, kw] load as weight.transpose(2, 3, 0, 1)[::-1, ::-1] (tests/test_layers.py
  pins the convention against a scatter-add)."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Union[int, Sequence[int]] = 1
  padding: Padding = "VALID"
  init_scale: Union[float, Array] = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nd = len(self.kernel_size)
    strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides)
    return nn.ConvTranspose(self.features, tuple(self.kernel_size), strides, self.padding,
                            kernel_init=scaled(DEFAULT_KERNEL_INIT, self.init_scale), name="conv")(x)


class Dense(nn.Module):
  """Fully connected layer with an init_scale (glorot-uniform kernel as Keras, zero bias)."""
  features: int
  use_bias: bool = True
  init_scale: Union[float, Array] = 1.0
  kernel_init: Callable = DEFAULT_KERNEL_INIT

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", scaled(self.kernel_init, self.init_scale), (x.shape[-1], self.features))
    y = jnp.dot(x, kernel.astype(x.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
    return y


# ----------------------------------------------------------------------------------------------------------------
# Pooling. Non-overlapping VALID windows use a reshape + reduce; other windows use strided slices. Both are much faster
# on XLA:CPU than reduce_window, whose gradient is select-and-scatter. Non-overlapping max pooling has its own VJP
# (`_window_max`): autodiff of reduce_max splits the gradient among ties, which costs a compare pass, a count reduction
# and a divide over the full-size input; ours routes it to the first maximum of each window (what flax's max_pool,
# PyTorch and TF do) in one elementwise pass that XLA fuses with the activation's backward. benchmarks/throughput.py.
def _window_view(x: Array, window: Sequence[int]) -> tuple[Array, tuple[int, ...]]:
  """[B, *spatial, C] (each spatial size a multiple of its window) -> [B, H/2, 2, W/2, 2, C] view and window axes."""
  shape = [x.shape[0]]
  for n, w in zip(x.shape[1:-1], window):
    shape += [n // w, w]
  return x.reshape(shape + [x.shape[-1]]), tuple(2 + 2 * i for i in range(len(window)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: Array, window: tuple[int, ...]) -> Array:
  xr, axes = _window_view(x, window)
  return xr.max(axes)


def _window_max_fwd(x, window):
  y = _window_max(x, window)
  return y, (x, y)


def _window_max_bwd(window, res, dy):
  x, y = res
  xr, axes = _window_view(x, window)
  yb = jnp.expand_dims(y, axes)                          # [B, H/2, 1, W/2, 1, C]
  onehot_shape = [1] * xr.ndim
  for a, w in zip(axes, window):
    onehot_shape[a] = w
  taken, sel = None, None
  for pos in _ndindex(tuple(window)):                    # window positions in row-major order
    idx = [slice(None)] * xr.ndim
    for a, p in zip(axes, pos):
      idx[a] = slice(p, p + 1)
    eq = xr[tuple(idx)] == yb                            # this window mate holds the maximum
    first = eq if taken is None else eq & ~taken         # ... and no earlier mate does
    onehot = np.zeros(onehot_shape, bool)
    onehot[tuple(pos[axes.index(a)] if a in axes else 0 for a in range(xr.ndim))] = True
    term = jnp.asarray(onehot) & first
    sel = term if sel is None else sel | term
    taken = eq if taken is None else taken | eq
  dxr = jnp.where(sel, jnp.expand_dims(dy, axes), jnp.zeros((), dy.dtype))
  return (dxr.reshape(x.shape),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def _pool(x: Array, window: Sequence[int], strides: Sequence[int] | None, padding: Padding, reduce: str) -> Array:
  nd = len(window)
  strides = tuple(window) if strides is None else ((strides,) * nd if isinstance(strides, int) else tuple(strides))
  pads = _pairs(padding, window, (1,) * nd, strides, x.shape[1:-1])
  init = -jnp.inf if reduce == "max" else 0.0
  if any(lo or hi for lo, hi in pads):
    x = jnp.pad(x, [(0, 0)] + list(pads) + [(0, 0)], constant_values=init)
  out = [conv_output_size(x.shape[1 + i], window[i], 0, strides[i]) for i in range(nd)]
  if any(o < 1 for o in out):
    raise ValueError(f"pooling window {tuple(window)} is larger than its input {tuple(x.shape[1:-1])}")
  if tuple(strides) == tuple(window) and (reduce == "max" or not any(lo or hi for lo, hi in pads)):
    x = lax.slice(x, [0] * x.ndim, [x.shape[0]] + [o * w for o, w in zip(out, window)] + [x.shape[-1]])
    if reduce == "max":
      return _window_max(x, tuple(window))
    x, axes = _window_view(x, window)         # [B, H/2, 2, W/2, 2, C] for a 2x2 window
    return x.mean(axes)
  cols = []
  for offs in _ndindex(tuple(window)):
    start = [0] + list(offs) + [0]
    limit = [x.shape[0]] + [o + (n - 1) * s + 1 for o, n, s in zip(offs, out, strides)] + [x.shape[-1]]
    cols.append(lax.slice(x, start, limit, [1] + list(strides) + [1]))
  stacked = jnp.stack(cols)                   # [prod(window), B, *out, C]
  if reduce == "max":
    return stacked.max(0)
  if any(lo or hi for lo, hi in pads):        # average over real (not padded) elements, like count_include_pad=False
    real = tuple(n - lo - hi for n, (lo, hi) in zip(x.shape[1:-1], pads))
    ones = jnp.pad(jnp.ones((1,) + real + (1,), x.dtype), [(0, 0)] + list(pads) + [(0, 0)])
    counts = sum(lax.slice(ones, [0] + list(offs) + [0],
                           [1] + [o + (n - 1) * s + 1 for o, n, s in zip(offs, out, strides)] + [1],
                           [1] + list(strides) + [1]) for offs in _ndindex(tuple(window)))
    return stacked.sum(0) / counts
  return stacked.mean(0)


def max_pool(x: Array, window: Sequence[int] = (2, 2), strides=None, padding: Padding = "VALID") -> Array:
  """Max pooling over [B, *spatial, C]; strides default to the window (non-overlapping); stride < window overlaps."""
  return _pool(x, tuple(window), strides, padding, "max")


def avg_pool(x: Array, window: Sequence[int] = (2, 2), strides=None, padding: Padding = "VALID") -> Array:
  """Average pooling; with padding, the average counts only real elements."""
  return _pool(x, tuple(window), strides, padding, "avg")


def global_avg_pool(x: Array) -> Array:
  """[B, *spatial, C] -> [B, C]."""
  return x.mean(axis=tuple(range(1, x.ndim - 1)))


class MaxPool(nn.Module):
  """max_pool as a module, so it shows as a row in the summary table."""
  window: Sequence[int] = (2, 2)
  strides: Any = None
  padding: Padding = "VALID"

  def __call__(self, x: Array) -> Array:
    return max_pool(x, self.window, self.strides, self.padding)


class AvgPool(nn.Module):
  window: Sequence[int] = (2, 2)
  strides: Any = None
  padding: Padding = "VALID"

  def __call__(self, x: Array) -> Array:
    return avg_pool(x, self.window, self.strides, self.padding)


class Flatten(nn.Module):
  """[B, ...] -> [B, prod(...)]; a module so it shows in the summary."""

  def __call__(self, x: Array) -> Array:
    return x.reshape(x.shape[0], -1)
