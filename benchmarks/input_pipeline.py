"""What the input pipeline costs a training step (issue 5: it must be under 5%).

  python benchmarks/input_pipeline.py                   # Keras convnet, batch 64 and 256, 9 windows
  python benchmarks/input_pipeline.py --batches=64 --out=pipeline.json

"gathered" is train_and_evaluate's step: the 60,000-image training set lives on the device and each step gathers its
batch there from an epoch's [steps, B] index array. "fixed" is the same jitted step on one batch gathered beforehand (no
data work at all). Windows alternate in one process; the cost is 1 - median(gathered / fixed) over windows.
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

from jcnn import data, models, train  # noqa: E402
from jcnn.parallel import machine  # noqa: E402


def measure(batch: int, windows: int, steps: int) -> dict:
  model = models.get({"name": "convnet"}, num_classes=10)
  tx = train.make_optimizer({"name": "rmsprop", "learning_rate": 1e-3})
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.rand(60000, 28, 28, 1).astype(np.float32))   # [N, 28, 28, 1] on the device
  y = jnp.asarray(rs.randint(0, 10, 60000))
  order = data.epoch_batches(jax.random.key(0), len(y), batch)     # [steps, B]
  step = train.make_train_step(model, tx)

  @functools.partial(jax.jit, donate_argnums=0)
  def gathered(s, batches):
    idx = batches[s.step % batches.shape[0]]
    return step(s, x[idx], y[idx], jax.random.key(1))

  x0, y0 = x[:batch], y[:batch]

  @functools.partial(jax.jit, donate_argnums=0)
  def fixed(s, batches):
    del batches
    return step(s, x0, y0, jax.random.key(1))

  fns = {"gathered": gathered, "fixed": fixed}
  state = train.init_state(model, tx, jax.random.key(0), x[:1])
  states = {k: jax.tree.map(jnp.copy, state) for k in fns}
  for k, f in fns.items():  # compile + warm up
    states[k], m = f(states[k], order)
    jax.block_until_ready(m)
  rates = {k: [] for k in fns}
  for _ in range(windows):
    for k, f in fns.items():
      t = time.perf_counter()
      for _ in range(steps):
        states[k], m = f(states[k], order)
      jax.block_until_ready(m)
      rates[k].append(steps * batch / (time.perf_counter() - t))
  ratio = float(np.median(np.array(rates["gathered"]) / np.array(rates["fixed"])))
  return {"batch": batch, "images_per_s": {k: float(np.median(v)) for k, v in rates.items()},
          "gathered_over_fixed": ratio, "pipeline_share_of_step": 1 - ratio}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batches", default="64,256")
  p.add_argument("--windows", type=int, default=9)
  p.add_argument("--steps", type=int, default=40, help="steps per window")
  p.add_argument("--out", default="")
  args = p.parse_args()
  rows = []
  for b in (int(v) for v in args.batches.split(",")):
    r = measure(b, args.windows, args.steps)
    rows.append(r)
    print(f"batch {b:4d} | gathered {r['images_per_s']['gathered']:7.0f} img/s | fixed batch "
          f"{r['images_per_s']['fixed']:7.0f} | input pipeline {r['pipeline_share_of_step']:+.1%} of a step", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      rec = machine.record()
      print(f"machine: {machine.describe(rec)}")
      json.dump({"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "machine": rec, "rows": rows, "backend": jax.default_backend(), "jax": jax.__version__}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
