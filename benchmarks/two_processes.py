"""Two single-core processes against one two-core process: does one convnet train step already keep both cores busy?

  python benchmarks/two_processes.py                             # batch 64, chunks of 16, 7 rounds of ~1 s windows
  python benchmarks/two_processes.py --windows=5 --window_s=1 --out=benchmarks/results/two_processes.json

Three worker processes each run jcnn's real convnet train step (benchmarks/throughput.py's `build_jcnn`: the one
loop's program step, batch gathered on the device, chunked: `--micro_batch`, 16 by default): one pinned to two cores
(os.sched_setaffinity; XLA:CPU sizes its thread pool from the affinity mask) and two pinned to one core each (plus
XLA_FLAGS=--xla_cpu_multi_thread_eigen=false). All compile and warm up first (compile times reported apart), then
each round times a window of the two-core worker alone, then a window of both one-core workers side by side (idle
workers wait on a pipe and use no CPU). 'ratio' = median over rounds of (one-core A + one-core B) / two-core images/s:
above 1, two separate runs use the machine better than one run does. The JSON names the machine
(`jcnn.parallel.machine.record`, measured after the workers exit).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(cores: list[int], batch: int, micro_batch: int):
  """Child: pin, build the step, print 'ready COMPILE_S', then answer 'window S' lines with 'rate IMAGES_PER_S'."""
  os.sched_setaffinity(0, cores)
  if len(cores) == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
  sys.path.insert(0, os.path.dirname(HERE))
  sys.path.insert(0, HERE)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import throughput  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  n = throughput.N_IMAGES
  x = rng.random((n, 28, 28, 1), np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  order = rng.permutation(n)[: (n // batch) * batch].reshape(-1, batch)
  train_n, _, info = throughput.build_jcnn("convnet", batch, jnp.asarray(x), jnp.asarray(y), jnp.asarray(order),
                                           micro_batch)
  train_n(3)                                        # warm-up
  k = throughput.calibrate(train_n, 0.1)            # steps per timing slice
  print(f"ready {info['compile_train_s']:.3f} {info['train_chunk']}", flush=True)
  for line in sys.stdin:
    if not line.startswith("window"):
      break
    target = float(line.split()[1])
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < target:
      train_n(k)
      done += k
    print(f"rate {done * batch / (time.perf_counter() - t0):.3f}", flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--micro_batch", type=int, default=16, help="the step's chunk size (config.train.micro_batch)")
  p.add_argument("--windows", type=int, default=7, help="rounds (median)")
  p.add_argument("--window_s", type=float, default=1.0, help="seconds per window")
  p.add_argument("--out", default="", help="write the results as JSON here")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)   # comma list of cores: run as a worker
  args = p.parse_args(argv)
  if args.worker:
    return worker([int(c) for c in args.worker.split(",")], args.batch, args.micro_batch)
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < 2:
    raise SystemExit(f"needs 2 cores, this process may run on {len(cores)}")
  a, b = cores[:2]
  common = [f"--batch={args.batch}", f"--micro_batch={args.micro_batch}"]
  procs = {name: subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--worker={c}", *common],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
           for name, c in (("two_core", f"{a},{b}"), ("one_core_a", str(a)), ("one_core_b", str(b)))}
  ready = {}
  for name, proc in procs.items():
    words = proc.stdout.readline().split()
    if not words or words[0] != "ready":
      raise SystemExit(f"worker {name} failed to start (exit {proc.poll()})")
    ready[name] = {"compile_s": float(words[1]), "train_chunk": int(words[2])}

  def window(names):
    for name in names:
      procs[name].stdin.write(f"window {args.window_s}\n")
      procs[name].stdin.flush()
    return [float(procs[name].stdout.readline().split()[1]) for name in names]

  rates = {name: [] for name in procs}
  for _ in range(args.windows):
    (two,) = window(["two_core"])
    one_a, one_b = window(["one_core_a", "one_core_b"])
    rates["two_core"].append(two)
    rates["one_core_a"].append(one_a)
    rates["one_core_b"].append(one_b)
  for proc in procs.values():
    proc.stdin.write("quit\n")
    proc.stdin.flush()
    proc.wait(timeout=60)
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(HERE))
  from jcnn.parallel import machine  # pylint: disable=g-import-not-at-top
  from jcnn.train import writers  # pylint: disable=g-import-not-at-top
  per_round = np.add(rates["one_core_a"], rates["one_core_b"]) / np.array(rates["two_core"])
  med = {k: float(np.median(v)) for k, v in rates.items()}
  ratio = float(np.median(per_round))
  rec = machine.record()
  print(f"convnet batch {args.batch}, chunks of {ready['two_core']['train_chunk']}, {args.windows} rounds of "
        f"~{args.window_s}s windows, medians")
  print(f"  one two-core process     {med['two_core']:8.0f} img/s (compile {ready['two_core']['compile_s']:.1f} s)")
  print(f"  two one-core processes   {med['one_core_a']:8.0f} + {med['one_core_b']:.0f} img/s side by side "
        f"(compile {ready['one_core_a']['compile_s']:.1f} / {ready['one_core_b']['compile_s']:.1f} s)")
  print(f"  ratio (two one-core / one two-core): {ratio:.2f}x (per round: "
        f"{', '.join(f'{r:.2f}' for r in per_round)})")
  print(f"machine: {machine.describe(rec)}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "model": "convnet", "batch": args.batch, "micro_batch": args.micro_batch,
                 "ratio_two_one_core_over_one_two_core": ratio, "ratio_per_round": [float(r) for r in per_round],
                 "images_per_s": med, "windows": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
                 "compile": ready, "cores": [a, b], "machine": rec, "record": writers.run_record(),
                 "rounds": args.windows, "window_s": args.window_s}, f, indent=2)
    print(f"wrote {args.out}")
  return ratio


if __name__ == "__main__":
  main()
