"""Sweep throughput: V variants of the Keras convnet in one program vs the same V trained one after another.

  python benchmarks/sweep_throughput.py                      # V = 1 2 4 8 16, batch 64, strategies vmap and map
  python benchmarks/sweep_throughput.py --variants=1,4 --windows=3 --out=sweep.json
  python benchmarks/sweep_throughput.py --strategies=map,capped    # also: map in programs of the measured CPU cap

"Sequential" is the single-model step of the one loop (`jcnn.train.program.single_program`, what `loop.run` calls per
step: jitted, donated, batch gathered on the device); V models trained one after another run at its model-images/s.
"Sweep" is jcnn.sweep's compiled group step (`sweep.program`; dropout rate and seed vary per variant). Windows
alternate between the two in one process; each rate is the median over windows, and "ratio" the median of the
per-window ratios (sweep window / the sequential window just before it: the machine's drift cancels; the ratio of the
two medians, which let one slow stretch of a shared machine read as 0.84x, is kept as "ratio_of_medians"); compile
time (first call) is reported separately. Data: synthetic 28x28x1 (the step does not depend on pixel values).
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
from jcnn import data as data_lib, sweep  # noqa: E402
from jcnn.parallel import machine  # noqa: E402
from jcnn.sweep import cpu_chunk  # noqa: E402
from jcnn.train import program as program_lib  # noqa: E402


def timed(fn, steps):
  t = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - t


def measure(config, ds, V: int, strategies, windows: int, model_images: int, run_single, cap: int = 0) -> list[dict]:
  """Rows {V, strategy, sweep / sequential model-images/s, ratio, compile_s} for V seeds of `config` in one program
  per strategy, windows alternating with `run_single` (one step of the single-model program)."""
  batch = config.train.batch_size
  rows = []
  sw = sweep.default_sweep()
  sw.seeds = V
  sw.dropout_rate = (0.25,)
  variants = sweep.variants_of(config, sw)
  progs = {}
  for strategy in strategies:
    # "capped": strategy map in programs of at most `cap` variants (the plan's CPU cap), stepped in turn
    sizes = [min(cap, V - s) for s in range(0, V, cap)] if strategy == "capped" and cap else [V]
    fns = sweep.make_group_fns(config, ds, ["dropout_rate"], "map" if strategy == "capped" else strategy)
    parts = []
    t = time.perf_counter()
    for start, size in zip(np.cumsum([0] + sizes[:-1]), sizes):
      prog = sweep.program(fns, ds, variants[start:start + size])
      b = prog.batches(1)
      parts.append((prog, [prog.step(prog.init(), b)], b))
    jax.block_until_ready([c for _, c, _ in parts])
    compile_s = time.perf_counter() - t

    def run(parts=parts):
      for prog, carry, b in parts:
        carry[0] = prog.step(carry[0], b)
      return [c[0].acc for _, c, _ in parts]

    progs[strategy] = (run, compile_s)
  steps = max(1, model_images // (batch * V))
  single_steps = max(1, model_images // batch)
  rates = {"sequential": []} | {s: [] for s in progs}
  run_single()
  for _ in range(windows):  # alternate: sequential, then each strategy
    rates["sequential"].append(single_steps * batch / timed(run_single, single_steps))
    for s, (run, _) in progs.items():
      rates[s].append(steps * batch * V / timed(run, steps))
  med = {k: float(np.median(v)) for k, v in rates.items()}
  for s, (_, compile_s) in progs.items():
    paired = float(np.median(np.array(rates[s]) / np.array(rates["sequential"])))
    row = {"V": V, "strategy": s, "sweep_model_images_per_s": med[s],
           "sequential_model_images_per_s": med["sequential"], "ratio": paired,
           "ratio_of_medians": med[s] / med["sequential"], "window_ratios": [
               round(a / b, 3) for a, b in zip(rates[s], rates["sequential"])], "compile_s": compile_s}
    rows.append(row)
    print(f"V={V:<3} {s:<5} sweep {med[s]:8.0f} model-img/s | sequential {med['sequential']:8.0f} | "
          f"ratio {row['ratio']:.2f} (of medians {row['ratio_of_medians']:.2f}) | compile {compile_s:.1f}s", flush=True)
  return rows


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

  # Sequential baseline: exactly the loop's single-run step.
  single = program_lib.single_program(config, ds)
  batches1 = single.batches(1)
  st = [single.init()]
  t = time.perf_counter()
  st[0] = single.step(st[0], batches1)
  jax.block_until_ready(st[0])
  single_compile = time.perf_counter() - t

  def run_single():
    st[0] = single.step(st[0], batches1)
    return st[0].acc

  print(f"backend {jax.default_backend()}, batch {args.batch}; single-model compile {single_compile:.1f}s", flush=True)
  probe = None
  if "capped" in args.strategies.split(","):   # the cap a grid's plan applies on this machine (measured now)
    probe = cpu_chunk.probe(args.batch)
    print(f"CPU variants-per-program probe: cap {probe['chunk']}, V / separate runs {probe['ratio']}", flush=True)
  rows = []
  for V in [int(v) for v in args.variants.split(",")]:
    rows += measure(config, ds, V, args.strategies.split(","), args.windows, args.model_images, run_single,
                    probe["chunk"] if probe else 0)
  rec = machine.record()
  print(f"machine: {machine.describe(rec)}")
  result = {"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "machine": rec, "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "batch": args.batch,
            "windows": args.windows, "single_compile_s": single_compile, "cpu_variant_probe": probe, "rows": rows, "jax": jax.__version__}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
