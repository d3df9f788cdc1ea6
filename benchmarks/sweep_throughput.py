"""Sweep throughput: V variants of the Keras convnet in one program vs the same V trained one after another.

  python benchmarks/sweep_throughput.py                      # V = 1 2 4 8 16, batch 64, strategies vmap and map
  python benchmarks/sweep_throughput.py --variants=1,4 --windows=3 --out=/tmp/sweep.json

"Sequential" is the single-model step of train.train_and_evaluate (jitted, donated, batch gathered on the device); V
models trained one after another run at its model-images/s. "Sweep" is jcnn.sweep's compiled group step (dropout rate
and seed vary per variant). Windows alternate between the two in one process; each number is the median over windows;
compile time (first call) is reported separately. Data: synthetic 28x28x1 (the step does not depend on pixel values).
"""
import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import fashion_convnet  # noqa: E402
from jcnn import data as data_lib, models, sweep, train  # noqa: E402


def timed(fn, steps):
  t = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - t


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default="1,2,4,8,16")
  p.add_argument("--strategies", default="vmap,map")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--windows", type=int, default=5)
  p.add_argument("--model_images", type=int, default=2048, help="model-images per window (sets steps per window)")
  p.add_argument("--out", default="")
  args = p.parse_args()

  config = fashion_convnet.get_config()
  with config.unlocked():
    config.data.synthetic_size = (4096, 64)
  config.data.name = "synthetic"
  config.train.batch_size = args.batch
  config.model.dropout_rate = 0.25   # both sides draw dropout masks: the sweep's rate is traced, the baseline's a float
  ds = data_lib.load(config.data)

  # Sequential baseline: exactly train_and_evaluate's step.
  model = models.get(config.model, num_classes=10)
  tx = train.make_optimizer(config.optim)
  step_fn = train.make_train_step(model, tx)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def single(state, batches, rng):
    idx = batches[state.step % batches.shape[0]]
    return step_fn(state, ds.train_x[idx], ds.train_y[idx], rng)[0]

  batches1 = data_lib.epoch_batches(jax.random.key(0), len(ds.train_y), args.batch)
  st = [train.init_state(model, tx, jax.random.key(0), ds.train_x[:1])]
  t = time.perf_counter()
  st[0] = single(st[0], batches1, jax.random.key(1))
  jax.block_until_ready(st[0])
  single_compile = time.perf_counter() - t

  def run_single():
    st[0] = single(st[0], batches1, jax.random.key(1))
    return st[0].step

  print(f"backend {jax.default_backend()}, batch {args.batch}; single-model compile {single_compile:.1f}s", flush=True)
  rows = []
  for V in [int(v) for v in args.variants.split(",")]:
    sw = sweep.default_sweep()
    sw.seeds = V
    sw.dropout_rate = (0.25,)
    variants = sweep.variants_of(config, sw)
    hp = sweep.variant_arrays(variants)
    progs = {}
    for strategy in args.strategies.split(","):
      fns = sweep.make_group_fns(config, ds, ["dropout_rate"], strategy)
      t = time.perf_counter()
      carry = [fns.init(hp), jnp.zeros((V,), bool), {k: jnp.zeros((V,)) for k in ("loss_sum", "correct", "count")}]
      b = fns.batches(hp, 1)
      carry = list(fns.step(*carry, hp, b))
      jax.block_until_ready(carry)
      compile_s = time.perf_counter() - t

      def run(fns=fns, carry=carry, b=b):
        carry[:] = fns.step(*carry, hp, b)
        return carry[2]

      progs[strategy] = (run, compile_s)
    steps = max(1, args.model_images // (args.batch * V))
    single_steps = max(1, args.model_images // args.batch)
    rates = {"sequential": []} | {s: [] for s in progs}
    run_single()
    for _ in range(args.windows):  # alternate: sequential, then each strategy
      rates["sequential"].append(single_steps * args.batch / timed(run_single, single_steps))
      for s, (run, _) in progs.items():
        rates[s].append(steps * args.batch * V / timed(run, steps))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    for s, (_, compile_s) in progs.items():
      row = {"V": V, "strategy": s, "sweep_model_images_per_s": med[s],
             "sequential_model_images_per_s": med["sequential"], "ratio": med[s] / med["sequential"],
             "compile_s": compile_s}
      rows.append(row)
      print(f"V={V:<3} {s:<5} sweep {med[s]:8.0f} model-img/s | sequential {med['sequential']:8.0f} | "
            f"ratio {row['ratio']:.2f} | compile {compile_s:.1f}s", flush=True)
  result = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "batch": args.batch,
            "windows": args.windows, "single_compile_s": single_compile, "rows": rows, "jax": jax.__version__}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
