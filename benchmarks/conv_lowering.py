"""Convolution lowerings per layer shape, alone and under `jax.vmap` over V variants (issue 5; DESIGN "Performance").

  python benchmarks/conv_lowering.py                    # convnet + resnet20 layer shapes, batch 64, V=4
  python benchmarks/conv_lowering.py --quick --out=conv_lowering.json

For each layer shape and lowering it times the forward and the training-time backward (gradients for the kernel and,
except for the first layer, whose input needs none, for the input) at V=1 and vmapped over V variants (each variant its
own kernel and input, as in a sweep), and prints ms per call and the vmapped cost per variant relative to one
unvmapped call (<= 1.0: the vmapped program is at least as fast as V separate runs). Lowerings:
  native   lax.conv_general_dilated (XLA:CPU's convolution; under vmap a grouped convolution)
  patches  im2col from kernel-size strided slices + one matmul (jcnn's CPU default; a batched matmul under vmap)
  shifted  sum over kernel offsets of (shifted slice @ kernel[offset]); no patch tensor
  onednn   oneDNN's convolution through a custom call (jcnn.nn.onednn; a sequential loop under vmap)
Windows alternate between lowerings; medians of --windows windows. Each V=1 time is also given as GFLOP/s and as a
share of the 2048^3 float32 matmul rate measured in the same run ("matmul_share"; the conv's multiply-adds x 2:
forward 1 conv, training 2 (kernel gradient) or 3 (and the input's)).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from jcnn.nn import layers  # noqa: E402
from jcnn.parallel import machine  # noqa: E402


def conv_shifted(x, kernel, strides, pads, dilation):
  """sum_k slice_k(x) @ kernel[k]: no patch tensor, prod(kernel) small matmuls (accumulated in a fusion)."""
  nd = kernel.ndim - 2
  ks = kernel.shape[:nd]
  x = jnp.pad(x, [(0, 0)] + list(pads) + [(0, 0)])
  out = [layers.conv_output_size(x.shape[1 + i], ks[i], 0, strides[i], dilation[i]) for i in range(nd)]
  y = None
  for offs in layers._ndindex(ks):  # pylint: disable=protected-access
    start = [0] + [o * d for o, d in zip(offs, dilation)] + [0]
    limit = [x.shape[0]] + [o * d + (n - 1) * s + 1 for o, d, n, s in zip(offs, dilation, out, strides)] + [x.shape[-1]]
    t = jnp.dot(lax.slice(x, start, limit, [1] + list(strides) + [1]), kernel[offs])
    y = t if y is None else y + t
  return y


LOWERINGS = {"native": layers.conv_native, "patches": layers.conv_patches, "shifted": conv_shifted,
             "onednn": layers.conv_onednn}
SHAPES = {  # name -> (spatial in, C_in, C_out, kernel, stride, padding, needs input grad)
    "convnet/conv1": (28, 1, 32, 3, 1, "VALID", False),
    "convnet/conv2": (13, 32, 64, 3, 1, "VALID", True),
    "convnet/conv3": (5, 64, 64, 3, 1, "VALID", True),
    "resnet20/stage1": (32, 16, 16, 3, 1, "SAME", True),
    "resnet20/stage2_down": (32, 16, 32, 3, 2, "SAME", True),
    "resnet20/stage2": (16, 32, 32, 3, 1, "SAME", True),
    "resnet20/stage3": (8, 64, 64, 3, 1, "SAME", True),
    "vgg11/conv1": (32, 3, 64, 3, 1, "SAME", False),
    "vgg11/conv2": (16, 64, 128, 3, 1, "SAME", True),
    "vgg11/conv3": (8, 128, 256, 3, 1, "SAME", True),
    "vgg11/conv5": (4, 256, 512, 3, 1, "SAME", True),
    "vgg11/conv7": (2, 512, 512, 3, 1, "SAME", True),
    "densenet/b1_1x1": (32, 120, 48, 1, 1, "VALID", True),
    "densenet/b1_3x3": (32, 48, 12, 3, 1, "SAME", True),
    "densenet/b3_3x3": (8, 48, 12, 3, 1, "SAME", True),
}


def flops(shape, mode, batch) -> float:
  """Floating-point operations of one call: 2 x multiply-adds of the conv, times the passes the mode runs."""
  n, c_in, c_out, k, s, padding, input_grad = shape
  out = layers.conv_output_size(n, k, (k - 1) // 2 if padding == "SAME" else 0, s)
  one = 2.0 * batch * out * out * c_out * k * k * c_in
  return one * (1 if mode == "fwd" else 3 if input_grad else 2)


def make_fn(lowering, shape, mode, v):
  n, c_in, c_out, k, s, padding, input_grad = shape
  pads = layers._pairs(padding, (k, k), (1, 1), (s, s), (n, n))  # pylint: disable=protected-access
  conv = lambda x, w: LOWERINGS[lowering](x, w, (s, s), pads, (1, 1))
  if mode == "fwd":
    f = conv
  else:
    argnums = (0, 1) if input_grad else 1    # grad wrt the kernel (and the input, but not for a first layer)
    f = jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums)
  return jax.jit(jax.vmap(f) if v > 1 else f)


def bench(fns, args, windows, reps):
  for f in fns.values():
    jax.block_until_ready(f(*args))
  times = {k: [] for k in fns}
  for _ in range(windows):
    for k, f in fns.items():
      t0 = time.perf_counter()
      for _ in range(reps):
        out = f(*args)
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t0) / reps * 1e3)
  return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--variants", type=int, default=4, help="V, the vmapped axis")
  p.add_argument("--windows", type=int, default=5)
  p.add_argument("--shapes", default="", help="comma list of layer names (default all)")
  p.add_argument("--lowerings", default=",".join(LOWERINGS))
  p.add_argument("--quick", action="store_true", help="convnet layers only, 3 windows")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  names = args.shapes.split(",") if args.shapes else [n for n in SHAPES if not args.quick or n.startswith("convnet")]
  windows = 3 if args.quick else args.windows
  lowerings = args.lowerings.split(",")
  rows = []
  key = jax.random.key(0)
  matmul = machine.matmul_gflops()
  print(f"batch {args.batch}, V={args.variants}; ms per call (median of {windows}); 'per variant' = vmapped time / V "
        f"/ unvmapped time")
  for name in names:
    shape = SHAPES[name]
    n, c_in, c_out, k = shape[:4]
    for mode in ("fwd", "train"):
      row = {"layer": name, "mode": mode}
      for v in sorted({1, args.variants}):
        lead = (v,) if v > 1 else ()
        x = jax.random.normal(key, lead + (args.batch, n, n, c_in))
        w = jax.random.normal(key, lead + (k, k, c_in, c_out)) * 0.1
        ms = bench({lo: make_fn(lo, shape, mode, v) for lo in lowerings}, (x, w), windows, reps=3)
        row[f"V{v}"] = ms
      row["per_variant"] = {lo: row[f"V{args.variants}"][lo] / args.variants / row["V1"][lo] for lo in lowerings}
      row["gflops"] = {lo: flops(shape, mode, args.batch) / row["V1"][lo] / 1e6 for lo in lowerings}
      row["matmul_share"] = {lo: g / matmul for lo, g in row["gflops"].items()}
      row["native_over_patches"] = (row["V1"]["patches"] / row["V1"]["native"]
                                    if {"native", "patches"} <= set(lowerings) else None)
      rows.append(row)
      cells = "  ".join(f"{lo} {row['V1'][lo]:7.2f} / {row[f'V{args.variants}'][lo]:8.2f} ({row['per_variant'][lo]:.2f}; "
                        f"{row['matmul_share'][lo]:.0%})" for lo in lowerings)
      print(f"{name:22s} {mode:5s} V1 / V{args.variants} ms: {cells}", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      rec = machine.record(matmul)
      print(f"machine: {machine.describe(rec)}")
      json.dump({"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "machine": rec, "batch": args.batch, "variants": args.variants, "windows": windows, "rows": rows,
                 "jax": jax.__version__}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
