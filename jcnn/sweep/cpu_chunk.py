"""How many variants one CPU program should hold: measured once per machine, like the micro-batch size.

  variants_per_cpu_program(batch)   the cap a grid's plan applies on CPU (0 = none): machine.cpu_variant_chunk,
                                    measured by `probe` the first time and cached in machine.json
  probe(batch)                      times the Keras convnet's sweep step (strategy map) at V = 2, 4, ..., 32 against
                                    the single-run step, in alternating windows; the cap is the largest V up to which
                                    every probed V kept pace with separate runs

Why a cap at all: on CPU, V variants in one program run one after another inside it (`lax.scan` over the variant
index), so the program should train them as fast as V separate runs. The Zen 5 and Intel machines held >= 0.97x at
V = 1-16, but a 2-core AMD Zen 4 once read 0.84x at V = 16 (0.91x on a second run). Re-measured on a 2-core Zen 4
(2026-12-03), that reading is the machine's noise, not the program: 12 alternating windows of one V = 16 program read
0.80-1.25x of the single run's window before each, medians 1.01 and 0.98 for two compiles of it, and three probes
gave 1.04-1.24 at V = 16 and 1.07-1.24 at V = 32. Nothing in the loop grows with V but the state it walks through
between two steps of one variant: the convnet's parameters, gradients and RMSprop slot, ~1.1 MB per variant, which
even from DRAM is well under 1% of its ~15 ms batch-64 step. So on that Zen 4 the cap comes out at 32 (no
split) and costs only the probe; it stays as a measured guard, the way the micro-batch size is measured, for a machine
or model where the walk does cost. A grid larger than the cap trains as several programs, one after another (the
same split as the memory chunks: `sweep.max_chunk` and the memory budget still cap it further); a search keeps all its
variants in one program (its decisions compare them all), so the cap does not apply to it.
"""
from __future__ import annotations

import concurrent.futures
import time

import jax
import numpy as np

from jcnn import config as config_lib, data as data_lib
from jcnn.parallel import machine
from jcnn.sweep import grid
from jcnn.sweep.lift import make_group_fns, program
from jcnn.train import program as program_lib

CANDIDATES = (2, 4, 8, 16, 32)
# A V is kept when the median of its per-window ratios to separate runs reaches FLOOR. Not 1.0: on a 2-core AMD Zen 4
# (2026-12-03) one V = 16 program's per-window ratios spread over 0.80-1.25 (12 windows; medians of two compiles 1.01
# and 0.98), and three probes in a row gave V = 2 1.019, 1.152, 0.991 with V = 4-32 at 1.02-1.24 in all three: a floor
# of 1.0 would have put every variant of every grid in a program of its own because of a few noisy windows.
FLOOR = 0.95


def variants_per_cpu_program(batch: int) -> int:
  """The measured cap on variants per CPU program for steps of `batch` examples (0 = no cap: off CPU, with no machine
  cache as in tests, or JCNN_VARIANT_CHUNK_CPU=0)."""
  if jax.default_backend() != "cpu":
    return 0
  return machine.cpu_variant_chunk(batch, probe)


def probe(batch: int, candidates=CANDIDATES, windows: int = 7, window_s: float = 0.3) -> dict:
  """{'chunk': cap, 'ratio': {V: median over windows of (sweep model-images/s / single-run images/s)}}: the Keras
  convnet (dropout 0.25, traced in the sweep) on synthetic 28x28x1 images, each window timing the single-run step and
  then the sweep step at every candidate V for ~window_s each; a V whose median falls below FLOOR gets as many windows
  again. The cap is the largest candidate V such that every candidate up to it reached FLOOR; 1 (each variant its own
  program) if V = 2 did not."""
  print(f"jcnn: timing the sweep step at V = {', '.join(map(str, candidates))} against separate runs (once per "
        f"machine and batch)", flush=True)
  config = config_lib.base_config()
  with config.unlocked():
    config.data.synthetic_size = (max(batch, 256), 64)
  config.data.name = "synthetic"
  config.train.batch_size = batch
  config.model.dropout_rate = 0.25
  ds = data_lib.load(config.data)
  single = program_lib.single_program(config, ds)
  sw = grid.default_sweep()
  sw.dropout_rate = (0.25,)
  fns = make_group_fns(config, ds, ["dropout_rate"], "map")
  progs = {}
  for v in candidates:
    sw.seeds = v
    progs[v] = program(fns, ds, grid.variants_of(config, sw))
  runs = {1: (single, single.batches(1))} | {v: (p, p.batches(1)) for v, p in progs.items()}

  def first(item):   # compile and take one step
    p, b = item
    return jax.block_until_ready(p.step(p.init(), b))
  with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:   # XLA compiles mostly on one core: overlap them
    states = dict(zip(runs, pool.map(first, runs.values())))
  reps = {}
  for v, (p, b) in runs.items():   # steps per window from one timed step
    t0 = time.perf_counter()
    states[v] = jax.block_until_ready(p.step(states[v], b))
    reps[v] = max(1, int(window_s / max(time.perf_counter() - t0, 1e-6)))

  def rate(v):   # model-images/s over one window of V's step
    p, b = runs[v]
    t0 = time.perf_counter()
    for _ in range(reps[v]):
      states[v] = p.step(states[v], b)
    jax.block_until_ready(states[v])
    return reps[v] * batch * v / (time.perf_counter() - t0)

  ratios = {v: [] for v in candidates}   # per window: V's rate / the single run's window just before
  for _ in range(windows):
    single_rate = rate(1)
    for v in candidates:
      ratios[v].append(rate(v) / single_rate)
  for v in candidates:   # one short reading must not split every grid: a V below FLOOR is timed as long again
    if np.median(ratios[v]) < FLOOR:
      for _ in range(windows):
        single_rate = rate(1)
        ratios[v].append(rate(v) / single_rate)
  return choose(ratios)


def choose(ratios: dict[int, list[float]]) -> dict:
  """The probe's decision from its windows: ratios[V] lists, per window, V's model-images/s over the single run's."""
  ratio = {v: float(np.median(r)) for v, r in ratios.items()}
  chunk = 1
  for v in sorted(ratio):
    if ratio[v] < FLOOR:
      break
    chunk = v
  return {"chunk": chunk, "ratio": {str(v): round(r, 3) for v, r in ratio.items()}}
