"""BatchNorm speed options on CPU: the same model and parameters trained with each option, against PyTorch.

  python benchmarks/bn_options.py --models=resnet20:128 --windows=5
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/bn_options.py --options=flax   # a runtime flag: one process
                                                                                        # per setting; the PyTorch
                                                                                        # twin is the yardstick

Options (all exact: full-batch statistics in training, the same variables; tests/test_norm.py):
  flax    flax nn.BatchNorm, activation separate
  vjp     jcnn.nn.norm.BatchNorm: one-pass-of-sums custom VJP, activation separate
  fused   jcnn.nn.norm.BatchNorm with the following ReLU inside the same VJP (blocks.norm_act; blocks.FUSED_BATCH_NORM)
  none    no normalisation (not the same model: shows what BatchNorm costs)
  OPTION+LOWERING   the same with layers.Conv.lowering set: native, patches, shape (layers.shape_lowering per layer)
Each is `train.make_train_step` jitted with the state donated (no chunking: BatchNorm), timed in alternating windows
with the PyTorch twin of benchmarks/throughput.py (best of 1 and all threads per window); ratios are medians of
per-window ratios. Prints a table naming the machine; --out writes JSON with the machine record.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import throughput  # noqa: E402
from jcnn import models, train  # noqa: E402
from jcnn.nn import blocks, layers, norm  # noqa: E402
from jcnn.parallel import machine  # noqa: E402


class UnfusedBatchNorm(norm.BatchNorm):
  fuses_act = False


NORMS = {"flax": functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5),
         "vjp": functools.partial(UnfusedBatchNorm, momentum=0.9, epsilon=1e-5),
         "fused": functools.partial(norm.BatchNorm, momentum=0.9, epsilon=1e-5),
         "none": None}   # no normalisation at all: what BatchNorm costs (a different model; for the profile only)


def build(name, option, batch, x, y):
  cfg, _, optim = throughput.CASES[name]
  norm_name, _, lowering = option.partition("+")
  model = models.get(cfg, num_classes=10)
  if hasattr(model, "norm"):
    model = model.clone(norm=NORMS[norm_name])
  if lowering and hasattr(model, "lowering"):   # the convnet names its lowering
    model = model.clone(lowering=lowering)
  elif lowering:   # layers.Conv.lowering: 'patches' (im2col + matmul), 'native', 'shape' (per layer), 'auto'
    model = model.clone(conv=functools.partial(layers.Conv, kernel_init=blocks.HE_INIT, lowering=lowering))
  tx = train.make_optimizer(optim)
  state = train.init_state(model, tx, jax.random.key(0), x[:batch])
  step = jax.jit(train.make_train_step(model, tx), donate_argnums=0)
  n = x.shape[0] // batch
  box = {"s": state, "i": 0}
  t0 = time.perf_counter()
  box["s"] = jax.block_until_ready(step(box["s"], x[:batch], y[:batch], jax.random.key(1))[0])
  compile_s = time.perf_counter() - t0

  def run(k):
    for _ in range(k):
      i = box["i"] % n
      box["i"] += 1
      box["s"] = step(box["s"], x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch], jax.random.key(1))[0]
    jax.block_until_ready(box["s"])
  return run, compile_s


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="resnet20:128")
  p.add_argument("--options", default="flax,vjp,fused")
  p.add_argument("--windows", type=int, default=5)
  p.add_argument("--window_s", type=float, default=1.0)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  threads = sorted({1, machine.cores()})
  rows = []
  for item in args.models.split(","):
    name, batch = item.split(":")
    batch = int(batch)
    shape = throughput.CASES[name][1]
    rng = np.random.default_rng(0)
    n_img = max(4 * batch, 512)
    xs = rng.random((n_img,) + shape, np.float32)
    ys = rng.integers(0, 10, n_img).astype(np.int32)
    order = rng.permutation(n_img)[: (n_img // batch) * batch].reshape(-1, batch)
    fns, compile_s = {}, {}
    for opt in args.options.split(","):
      fns[opt], compile_s[opt] = build(name, opt, batch, jnp.asarray(xs), jnp.asarray(ys))
    t_train, _, _ = throughput.build_torch(name, torch.from_numpy(xs.transpose(0, 3, 1, 2).copy()),
                                           torch.from_numpy(ys.astype(np.int64)), torch.from_numpy(order))
    for t in threads:
      fns[f"torch{t}"] = throughput.with_threads(t_train, t)
    for f in fns.values():
      f(1)
    steps = {k: throughput.calibrate(f, args.window_s) for k, f in fns.items()}
    rates = {k: [] for k in fns}
    for _ in range(args.windows):
      for k, f in fns.items():
        rates[k].append(steps[k] * batch / throughput.timed(f, steps[k]))
    rates["torch"] = list(np.max([rates[f"torch{t}"] for t in threads], axis=0))
    first = args.options.split(",")[0]
    for opt in args.options.split(","):
      row = {"model": name, "batch": batch, "option": opt, "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "jcnn_img_per_s": float(np.median(rates[opt])), "torch_img_per_s": float(np.median(rates["torch"])),
             "ratio_vs_torch": float(np.median(np.array(rates[opt]) / np.array(rates["torch"]))),
             "ratio_vs_first": float(np.median(np.array(rates[opt]) / np.array(rates[first]))),
             "compile_s": compile_s[opt], "windows": {k: [round(v, 1) for v in rates[k]] for k in (opt, "torch")}}
      rows.append(row)
      print(f"{name:15s} b{batch:<4d} {opt:6s} jcnn {row['jcnn_img_per_s']:7.1f} img/s | torch "
            f"{row['torch_img_per_s']:7.1f} | jcnn/torch {row['ratio_vs_torch']:.2f} | vs {first} "
            f"{row['ratio_vs_first']:.2f} | compile {row['compile_s']:.1f}s", flush=True)
  rec = machine.record()
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; machine: {machine.describe(rec)}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "machine": rec, "rows": rows, "windows": args.windows, "torch_threads": threads}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
