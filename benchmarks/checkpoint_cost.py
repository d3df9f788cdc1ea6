"""Checkpoint cost: seconds per save and bytes on disk, for a single run and for a sweep's variant stack.

  python benchmarks/checkpoint_cost.py                           # fashion_convnet and ablation_dropout (9 variants)
  python benchmarks/checkpoint_cost.py --saves=9 --out=docs/checkpoint_cost_cpu2.json

Saves the loop's real carried state (jcnn.train.program.RunState, as `loop.run` does, after 20 training steps so the
optimizer state is not all zeros) with jcnn.train.checkpoint several times: "blocking"
is the time `save` takes before training may go on (the arrays are copied off the device; orbax writes the files in a
background thread), "total" the time until the files are committed (`wait`). Medians over the saves; bytes are one
step folder's size on disk.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from experiments import ablation_dropout, fashion_convnet  # noqa: E402
from jcnn import data as data_lib, sweep  # noqa: E402
from jcnn.parallel import machine  # noqa: E402
from jcnn.train import checkpoint, program as program_lib, writers  # noqa: E402


def folder_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def measure(name, program, saves, steps=20):
  rs = program.init()
  batches = program.batches(1)
  for _ in range(steps):   # trained-looking state: optimizer slots filled (zeros compress to nothing)
    rs = program.step(rs, batches)
  jax.block_until_ready(rs)
  blocking, total = [], []
  with tempfile.TemporaryDirectory() as d:
    ck = checkpoint.Checkpoints(os.path.join(d, "ck"), keep=2)
    for step in range(1, saves + 1):
      t0 = time.perf_counter()
      ck.save(step, rs, {"history": [], "seed": 0})
      t1 = time.perf_counter()
      ck.wait()
      t2 = time.perf_counter()
      blocking.append(t1 - t0)
      total.append(t2 - t0)
    size = folder_bytes(os.path.join(d, "ck", str(saves)))
    ck.close()
  row = {"name": name, "blocking_s": float(np.median(blocking)), "total_s": float(np.median(total)),
         "bytes": size, "params_per_model": int(sum(np.prod(p.shape) for p in jax.tree.leaves(rs.train.params)) //
                                                (len(program.variants) if program.variants else 1))}
  print(f"{name:<28} save blocks {row['blocking_s'] * 1e3:7.1f} ms | committed in {row['total_s'] * 1e3:7.1f} ms | "
        f"{size / 2**20:6.2f} MiB on disk", flush=True)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--saves", type=int, default=7)
  p.add_argument("--out", default="")
  args = p.parse_args()
  rows = []
  c = fashion_convnet.get_config()
  ds = data_lib.load(c.data)
  rows.append(measure("fashion_convnet (1 model)", program_lib.single_program(c, ds), args.saves))
  c, s = ablation_dropout.get_config(), ablation_dropout.get_sweep()
  variants = sweep.variants_of(c, s)
  fns = sweep.make_group_fns(c, ds, sweep.swept_axes(s))
  rows.append(measure(f"ablation_dropout ({len(variants)} variants)", sweep.program(fns, ds, variants), args.saves))
  if args.out:
    with open(args.out, "w") as f:
      rec = machine.record()
      print(f"machine: {machine.describe(rec)}")
      json.dump({"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "machine": rec, "rows": rows, "saves": args.saves, "record": writers.run_record()}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
