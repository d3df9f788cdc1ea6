"""Convolutions through oneDNN on CPU: a `jax.ffi` custom call for the forward pass and both gradients.

    y = conv(x, kernel, strides, pads, dilation, groups)   # x [B, H, W, C], kernel [kh, kw, C/g, O] -> [B, Ho, Wo, O]

The same kernel runs at a program's top level and inside a loop body (`lax.map`, `lax.scan`), so a sweep variant and
its standalone run use the same code and round alike. Float32, 1-d and 2-d; `Conv` falls back to its XLA lowering for
anything else (other dtypes, 3-d, GPU/TPU).

How the native part is built: on first use, `g++` compiles jcnn/nn/onednn_conv.cc against the headers and library of
the `onednn` / `onednn-devel` wheels (the `[onednn]` extra) and jaxlib's XLA FFI headers, into
$JCNN_ONEDNN_CACHE (default ~/.cache/jcnn/onednn), keyed by a hash of the source, the compiler and the versions; later
runs load the cached library. Without a compiler or the wheels, `unavailable()` says why in one line and convolutions
stay on XLA. Under `vmap` the call loops over the mapped axis (a sequential batching rule).

May import: jcnn.errors only.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.nn import measured

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
TARGETS = {"fwd": "JcnnOnednnConvFwd", "bwd_data": "JcnnOnednnConvBwdData", "bwd_weights": "JcnnOnednnConvBwdWeights"}


def _prefixes() -> list[str]:
  """Where pip puts a wheel's data files (headers in include/, libraries in lib/): this environment, then --user."""
  out = []
  for p in (os.environ.get("JCNN_ONEDNN_ROOT"), sys.prefix, sysconfig.get_paths().get("data"),
            sysconfig.get_paths("posix_user").get("data")):
    if p and p not in out:
      out.append(p)
  return out


def locate() -> tuple[str, str] | str:
  """(include dir holding dnnl.hpp, lib dir holding libdnnl.so), or why not."""
  for p in _prefixes():
    inc, lib = os.path.join(p, "include"), os.path.join(p, "lib")
    if os.path.exists(os.path.join(inc, "dnnl.hpp")) and glob.glob(os.path.join(lib, "libdnnl.so*")):
      return inc, lib
  return "the oneDNN wheels are not installed (pip install 'jcnn[onednn]')"


def build_dir() -> str:
  return os.environ.get("JCNN_ONEDNN_CACHE") or os.path.join(measured.cache_root(), "onednn")


def build(verbose: bool = False) -> str:
  """The path of the compiled library (compiled now if no cached one matches). Raises RuntimeError with the reason."""
  where = locate()
  if isinstance(where, str):
    raise RuntimeError(where)
  inc, lib = where
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not cxx:
    raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
  libdnnl = sorted(glob.glob(os.path.join(lib, "libdnnl.so*")))[-1]
  flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-I", jax.ffi.include_dir(), "-I", inc, "-L", lib, "-ldnnl",
           f"-Wl,-rpath,{os.path.realpath(lib)}"]
  with open(SOURCE, "rb") as f:
    digest = hashlib.sha256(f.read() + repr((cxx, flags, os.path.realpath(libdnnl), jax.__version__)).encode())
  out = os.path.join(build_dir(), f"libjcnn_onednn_{digest.hexdigest()[:16]}.so")
  if os.path.exists(out):
    return out
  os.makedirs(build_dir(), exist_ok=True)
  tmp = f"{out}.{os.getpid()}.tmp"
  if verbose:
    print(f"jcnn: compiling the oneDNN convolution into {out}", file=sys.stderr)
  done = subprocess.run([cxx, SOURCE, "-o", tmp] + flags, capture_output=True, text=True)
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise RuntimeError(f"compiling {os.path.basename(SOURCE)} failed: {last}")
  os.replace(tmp, out)              # atomic: a concurrent process loads the old file or the new one, never half
  return out


@functools.lru_cache(maxsize=None)
def unavailable() -> str | None:
  """None when the oneDNN convolution is built and registered (once per process), else the reason in a few words.
  JCNN_ONEDNN=0 turns it off."""
  if os.environ.get("JCNN_ONEDNN", "1") in ("0", ""):
    return "turned off by JCNN_ONEDNN=0"
  try:
    path = build(verbose=True)
    so = ctypes.cdll.LoadLibrary(path)
    for name, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(f"jcnn_onednn_conv_{name}", jax.ffi.pycapsule(getattr(so, symbol)), platform="cpu")
  except (RuntimeError, OSError, AttributeError) as e:
    return str(e)
  return None


@functools.lru_cache(maxsize=None)
def notice(reason: str) -> None:
  """One line on stderr, once per process and reason."""
  print(f"jcnn: oneDNN convolutions unavailable ({reason}); convolutions use XLA's lowering", file=sys.stderr)


def supported(x: jax.Array, kernel: jax.Array) -> bool:
  """Whether a convolution of these operands can take the oneDNN path (float32, 1-d or 2-d, CPU backend)."""
  return (x.dtype == jnp.float32 and kernel.dtype == jnp.float32 and x.ndim in (3, 4)
          and jax.default_backend() == "cpu")


def usable(x: jax.Array, kernel: jax.Array) -> bool:
  """Whether this convolution takes the oneDNN path: supported and built. When it is not built, says why once
  (unless JCNN_ONEDNN=0 turned it off)."""
  if not supported(x, kernel):
    return False
  reason = unavailable()
  if reason is not None and not reason.startswith("turned off"):
    notice(reason)
  return reason is None


CHOICE_VERSION = 2       # bump when what `race` times changes: old entries are then measured again
# oneDNN must win the race by this much: its call ends XLA's fusion of the conv with the bias, activation and pooling
# around it, which the race (the conv alone) does not see. On the convnet's 13x13x32 -> 64 layer it won the race by 5%
# yet its step ran 0.8x XLA's (2026-12-02, AMD EPYC Zen 3, benchmarks/throughput.py).
MARGIN = 1.10
MIN_RACE_BATCH = 8


@functools.lru_cache(maxsize=None)
def _cpu() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown CPU")
  except OSError:
    name = "unknown CPU"
  return f"{name}|{len(os.sched_getaffinity(0))} cores"


def race(x_shape, kernel_shape, strides, pads, dilation, xla_conv, reps: int = 5) -> dict:
  """Times one training use (forward + both gradients) of the convolution through oneDNN and through `xla_conv`,
  compile excluded, median of `reps`: {'lowering': oneDNN if it wins by MARGIN, else 'patches'; 'onednn_ms',
  'xla_ms'}."""
  import time  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=tuple(x_shape)), jnp.float32)
  w = jnp.asarray(rng.normal(size=kernel_shape) * 0.1, jnp.float32)
  out = {}
  for name, fn in (("onednn", conv), ("xla", xla_conv)):
    step = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.square(fn(x, w, strides, pads, dilation))), (0, 1)))
    jax.block_until_ready(step(x, w))
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(step(x, w))
      times.append(time.perf_counter() - t0)
    out[f"{name}_ms"] = round(float(np.median(times)) * 1e3, 3)
  return {"lowering": "onednn" if out["onednn_ms"] * MARGIN <= out["xla_ms"] else "patches"} | out


def choose(x: jax.Array, kernel: jax.Array, strides, pads, dilation, xla_conv) -> str:
  """The CPU lowering of one convolution, 'onednn' or 'patches':
    1. 'patches' where oneDNN cannot take it (usable);
    2. with no machine cache (JCNN_MACHINE_CACHE=0, as in tests): 'onednn', nothing measured;
    3. 'patches' for batches under MIN_RACE_BATCH (model.init traces a batch of 1);
    4. else the cached winner of `race` for (CPU, cores, jax, the layer's shapes) in <cache_dir>/conv_lowering.json,
       raced the first time (a line on stderr says so). A sweep variant sees its standalone run's shapes (the same
       per-variant batch, chunked alike), so both take the same lowering."""
  if not usable(x, kernel):
    return "patches"
  if measured.cache_dir() is None:
    return "onednn"
  if x.shape[0] < MIN_RACE_BATCH:      # model.init's batch of 1, a tiny eval tail: not worth a race
    return "patches"
  key = (f"{_cpu()}|jax {jax.__version__}|v{CHOICE_VERSION}|x {tuple(x.shape)} k {tuple(kernel.shape)} "
         f"s {tuple(strides)} p {tuple(map(tuple, pads))} d {tuple(dilation)}")

  def measure():
    print(f"jcnn: timing oneDNN against XLA for a new conv shape (once per machine): {key.split('|')[-1]}",
          file=sys.stderr)
    return race(x.shape, kernel.shape, tuple(strides), [tuple(p) for p in pads], tuple(dilation), xla_conv)
  memo = (measured.cache_dir(), key)    # the table is read once per process and shape, not once per traced conv
  if memo not in _CHOSEN:
    _CHOSEN[memo] = measured.lookup("conv_lowering.json", key, measure)["lowering"]
  return _CHOSEN[memo]


_CHOSEN: dict[tuple, str] = {}          # (cache dir, key) -> lowering: choose()'s answers in this process


def _out_size(n: int, k: int, lo: int, hi: int, s: int, d: int) -> int:
  return (n + lo + hi - d * (k - 1) - 1) // s + 1


def _call(name: str, shape, geometry: tuple, *args):
  reason = unavailable()                       # builds and registers the targets on first use
  if reason is not None:
    raise RuntimeError(f"the oneDNN convolution is unavailable: {reason}")
  strides, lo, hi, dilation, groups = geometry
  call = jax.ffi.ffi_call(f"jcnn_onednn_conv_{name}", jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method="sequential")
  return call(*args, strides=np.asarray(strides, np.int64), pad_lo=np.asarray(lo, np.int64),
              pad_hi=np.asarray(hi, np.int64), dilation=np.asarray(dilation, np.int64), groups=np.int64(groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d(x, kernel, geometry):
  strides, lo, hi, dilation, _ = geometry
  b, h, w, _ = x.shape
  kh, kw, _, o = kernel.shape
  ho = _out_size(h, kh, lo[0], hi[0], strides[0], dilation[0])
  wo = _out_size(w, kw, lo[1], hi[1], strides[1], dilation[1])
  return _call("fwd", (b, ho, wo, o), geometry, x, kernel)


def _conv2d_fwd(x, kernel, geometry):
  return _conv2d(x, kernel, geometry), (x, kernel)


def _conv2d_bwd(geometry, saved, dy):
  x, kernel = saved
  dx = _call("bwd_data", x.shape, geometry, dy, kernel)
  dw = _call("bwd_weights", kernel.shape, geometry, x, dy)
  return dx, dw


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], pads: Sequence[tuple[int, int]],
         dilation: Sequence[int], groups: int = 1) -> jax.Array:
  """Cross-correlation as lax.conv_general_dilated with NHWC / HWIO / NHWC and feature_group_count=groups.
  x: [B, H, W, C] (or [B, L, C]); kernel [kh, kw, C/groups, O] (or [k, C/groups, O]); explicit (lo, hi) pads.
  Call only where `supported(x, kernel)`; raises RuntimeError where `unavailable()` gives a reason."""
  if x.ndim == 3:                                                   # 1-d: a 1 x L image
    y = conv(x[:, None], kernel[None], (1,) + tuple(strides), [(0, 0)] + list(pads), (1,) + tuple(dilation), groups)
    return y[:, 0]
  geometry = (tuple(int(s) for s in strides), tuple(int(p[0]) for p in pads), tuple(int(p[1]) for p in pads),
              tuple(int(d) for d in dilation), int(groups))
  return _conv2d(x, kernel, geometry)
