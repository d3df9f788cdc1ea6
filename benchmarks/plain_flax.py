"""jcnn's train step against the same network written the plain Flax way (the baselines of issues 5 and 23).

  python benchmarks/plain_flax.py                                  # the convnet at batch 64, 7 windows of ~1 s
  python benchmarks/plain_flax.py --batch=64 --windows=5 --window_s=0.5 --out=benchmarks/results/plain_flax.json
  python benchmarks/plain_flax.py --model=resnet20 --batch=128 --windows=3

The plain Flax step: the Keras MNIST convnet as `nn.Conv` / `nn.max_pool` / `nn.Dense` (93,322 parameters), optax
RMSprop with jcnn's settings (lr 1e-3, decay 0.9, eps 1e-7); or ResNet-20 (He et al. 2016, option-A shortcuts) as
`nn.Conv` / `nn.BatchNorm` / `nn.Dense` (269,722 parameters), optax SGD with momentum 0.9 at lr 0.1 — parameter
counts checked equal to jcnn's; softmax cross-entropy, one
`jax.jit` step with the parameters and optimizer state donated, fed batches already on the device. jcnn runs
(1) `train.make_train_step` on the same model config, optimizer and batches, jitted with the state donated
('jcnn_step'), and (2) its real path, the one loop's program step as benchmarks/throughput.py times it (batch
gathered on the device from the resident data; 'jcnn_program'). All warm up, compile times are timed apart, then
windows alternate the three; the ratios are medians of per-window ratios (the machine is shared: ratios from one
window are fair, absolute numbers less so). 'epoch_s' projects a 60,000-image Fashion-MNIST epoch from each median
rate (training steps only: no evaluation, no compile). The JSON names the machine (`jcnn.parallel.machine.record`).
"""
from __future__ import annotations

import argparse
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
import optax  # noqa: E402

import throughput  # noqa: E402  (its jcnn real path, matmul probe and windows helpers)
from jcnn import models, train  # noqa: E402
from jcnn.inspect import summary  # noqa: E402
from jcnn.parallel import machine  # noqa: E402
from jcnn.train import writers  # noqa: E402

EPOCH_IMAGES = 60_000


class PlainConvNet(nn.Module):
  """The Keras MNIST convnet, written with flax.linen's own layers."""

  @nn.compact
  def __call__(self, x):                                               # [B, 28, 28, 1]
    x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x)), (2, 2), (2, 2))   # [B, 13, 13, 32]
    x = nn.max_pool(nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x)), (2, 2), (2, 2))   # [B, 5, 5, 64]
    x = nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x)).reshape((x.shape[0], -1))      # [B, 576]
    x = nn.relu(nn.Dense(64)(x))                                                          # [B, 64]
    return nn.Dense(10)(x)                                                                # [B, 10] logits


class PlainResNet20(nn.Module):
  """CIFAR ResNet-20 written with flax.linen's own layers: 3 stages of 3 basic blocks (16, 32, 64 channels)."""

  @nn.compact
  def __call__(self, x, train: bool = True):                           # [B, 32, 32, 3]
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    x = nn.relu(bn()(nn.Conv(16, (3, 3), padding=1, use_bias=False)(x)))            # [B, 32, 32, 16]
    for width, first_stride in ((16, 1), (32, 2), (64, 2)):
      for i in range(3):
        s = first_stride if i == 0 else 1
        y = nn.relu(bn()(nn.Conv(width, (3, 3), s, padding=1, use_bias=False)(x)))
        y = bn()(nn.Conv(width, (3, 3), padding=1, use_bias=False)(y))
        if s != 1 or x.shape[-1] != width:                             # option A: subsample, zero-pad channels
          x = x[:, ::s, ::s]
          extra = width - x.shape[-1]
          x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        x = nn.relu(x + y)
    return nn.Dense(10)(x.mean(axis=(1, 2)))                           # [B, 10] logits


PLAIN = {  # name -> (module, optimizer)
    "convnet": (PlainConvNet, lambda: optax.rmsprop(1e-3, decay=0.9, eps=1e-7)),
    "resnet20": (PlainResNet20, lambda: optax.sgd(0.1, momentum=0.9)),
}


def build_plain(name, batches_x, batches_y):
  """(train_n, info): the plain Flax step over pre-gathered device batches."""
  module, make_tx = PLAIN[name]
  model, tx = module(), make_tx()
  variables = jax.jit(model.init)(jax.random.key(0), batches_x[0][:1])
  params, stats = variables["params"], variables.get("batch_stats", {})
  box = {"state": (params, stats, tx.init(params)), "i": 0}

  def step_impl(state, x, y):
    params, stats, opt_state = state

    def loss_fn(p):
      if stats:
        logits, new = model.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
      else:
        logits, new = model.apply({"params": p}, x), {"batch_stats": stats}
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, new["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state), {"loss": loss,
                                                                       "accuracy": (logits.argmax(-1) == y).mean()}

  step = jax.jit(step_impl, donate_argnums=0)

  def train_n(n):
    out = None
    for _ in range(n):
      i = box["i"] % len(batches_x)
      box["i"] += 1
      box["state"], out = step(box["state"], batches_x[i], batches_y[i])
    jax.block_until_ready(out)

  t0 = time.perf_counter()
  train_n(1)
  return train_n, {"compile_s": time.perf_counter() - t0, "params": summary.count_params(params)}


def build_jcnn_step(name, batches_x, batches_y):
  """(train_n, info): train.make_train_step on jcnn's model (same config, optimizer settings, batches)."""
  cfg, _, optim = throughput.CASES[name]
  model = models.get(cfg, num_classes=10)
  tx = train.make_optimizer(optim)
  state = train.init_state(model, tx, jax.random.key(0), batches_x[0])
  step = jax.jit(train.make_train_step(model, tx), donate_argnums=0)
  box = {"state": state, "i": 0}
  rng = jax.random.key(1)

  def train_n(n):
    out = None
    for _ in range(n):
      i = box["i"] % len(batches_x)
      box["i"] += 1
      box["state"], out = step(box["state"], batches_x[i], batches_y[i], rng)
    jax.block_until_ready(out)

  t0 = time.perf_counter()
  train_n(1)
  return train_n, {"compile_s": time.perf_counter() - t0, "params": summary.count_params(state.params),
                   "train_chunk": train.micro_batch_size(batches_x[0].shape[0], 0, bool(state.batch_stats))}


def run(batch: int, windows: int, window_s: float, name: str = "convnet") -> dict:
  rng = np.random.default_rng(0)
  n = throughput.N_IMAGES
  x = rng.random((n,) + throughput.CASES[name][1], np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  order = rng.permutation(n)[: (n // batch) * batch].reshape(-1, batch)
  bx = [jnp.asarray(x[o]) for o in order]
  by = [jnp.asarray(y[o]) for o in order]
  plain_train, plain_info = build_plain(name, bx, by)
  step_train, step_info = build_jcnn_step(name, bx, by)
  prog_train, _, prog_info = throughput.build_jcnn(name, batch, jnp.asarray(x), jnp.asarray(y),
                                                   jnp.asarray(order))
  if not plain_info["params"] == step_info["params"] == prog_info["params"]:
    raise AssertionError(f"parameter counts differ: plain {plain_info['params']:,}, jcnn {step_info['params']:,}")
  fns = {"plain_flax": plain_train, "jcnn_step": step_train, "jcnn_program": prog_train}
  for f in fns.values():   # warm-up
    f(3)
  steps = {k: throughput.calibrate(f, window_s) for k, f in fns.items()}
  rates = {k: [] for k in fns}
  for _ in range(windows):
    for k, f in fns.items():
      rates[k].append(steps[k] * batch / throughput.timed(f, steps[k]))
  med = {k: float(np.median(v)) for k, v in rates.items()}
  ratio = {k: float(np.median(np.array(rates[k]) / np.array(rates["plain_flax"]))) for k in ("jcnn_step",
                                                                                              "jcnn_program")}
  return {"model": name, "batch": batch, "params": plain_info["params"], "train_chunk": step_info["train_chunk"],
          "images_per_s": med, "steps_per_s": {k: v / batch for k, v in med.items()},
          "ratio_over_plain_flax": ratio,
          "epoch_s": {k: EPOCH_IMAGES / v for k, v in med.items()},
          "compile_s": {"plain_flax": plain_info["compile_s"], "jcnn_step": step_info["compile_s"],
                        "jcnn_program": prog_info["compile_train_s"]},
          "windows": {k: [round(v, 1) for v in vs] for k, vs in rates.items()}, "steps_per_window": steps}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="convnet", choices=sorted(PLAIN))
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--windows", type=int, default=7, help="timed windows per implementation (median)")
  p.add_argument("--window_s", type=float, default=1.0, help="seconds per window")
  p.add_argument("--out", default="", help="write the results as JSON here")
  args = p.parse_args(argv)
  mm = throughput.make_matmul()
  matmul = mm()
  r = run(args.batch, args.windows, args.window_s, args.model)
  rec = machine.record(float(np.median([matmul, mm()])))
  m, q, e = r["images_per_s"], r["ratio_over_plain_flax"], r["epoch_s"]
  print(f"{r['model']} batch {r['batch']} (chunk {r['train_chunk']}), {args.windows} windows of ~{args.window_s}s, "
        f"medians; ratio = median of per-window ratios")
  for k in ("plain_flax", "jcnn_step", "jcnn_program"):
    print(f"  {k:13s} {m[k]:8.0f} img/s  {m[k] / r['batch']:6.1f} steps/s  epoch ~{e[k]:5.1f} s  compile "
          f"{r['compile_s'][k]:.1f} s" + (f"  {q[k]:.2f}x plain Flax" if k in q else ""))
  print(f"machine: {machine.describe(rec)}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "rows": [r], "machine": rec, "record": writers.run_record(), "windows": args.windows,
                 "window_s": args.window_s}, f, indent=2)
    print(f"wrote {args.out}")
  return r


if __name__ == "__main__":
  main()
