"""What machine a number was measured on, and the CPU settings chosen per machine.

  record(matmul_gflops)   {model_name, vendor, flags, cores, caches, matmul_gflops, jax, jaxlib}: every benchmark JSON
                          stores it under "machine"; describe(record) is the one line a table prints
  matmul_gflops()         a 2048^3 float32 jnp matmul, GFLOP/s (the physical yardstick for achieved conv rates)
  cpu_micro_batch(batch)  the chunk size of a CPU train/eval step (train.micro_batch_size's automatic choice), chosen
                          per machine by a short measurement cached per machine (see its docstring)

The chunk size is a per-machine choice because it is one in fact: on this project's 2-core AMD EPYC (Zen 5) the Keras
convnet's batch-64 step ran 1.15x faster in chunks of 16, while on a 2-core Intel Xeon (AVX-512 + AMX) the whole batch
won (4,881 vs 4,646 img/s). No rule from cache sizes was shown to predict both, so the choice is measured.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import time

# The /proc/cpuinfo flags worth recording: the vector extensions XLA:CPU, oneDNN and PyTorch pick kernels by.
FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
         "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def parse_cpuinfo(text: str) -> dict:
  """Model name, vendor and the recorded FLAGS from /proc/cpuinfo text (x86 'flags', Arm 'Features')."""
  fields = {}
  for line in text.splitlines():
    if ":" not in line:
      if not line.strip() and fields.get("model name"):
        break                                   # first processor block only: all cores of a machine are alike here
      continue
    key, value = (s.strip() for s in line.split(":", 1))
    fields.setdefault(key, value)
  flags = set((fields.get("flags") or fields.get("Features") or "").split())
  return {"model_name": fields.get("model name") or fields.get("Processor") or fields.get("CPU part") or "unknown",
          "vendor": fields.get("vendor_id") or fields.get("CPU implementer") or "unknown",
          "family": fields.get("cpu family", ""), "model": fields.get("model", ""),
          "flags": [f for f in FLAGS if f in flags]}


def cache_sizes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> dict:
  """{'L1d': bytes, 'L2': bytes, 'L3': bytes} of cpu0 (L3 is shared; L1/L2 per core on the machines seen)."""
  out = {}
  try:
    entries = sorted(e for e in os.listdir(root) if e.startswith("index"))
  except OSError:
    return out
  for e in entries:
    try:
      read = lambda f, e=e: open(os.path.join(root, e, f)).read().strip()
      level, kind, size = read("level"), read("type"), read("size")
    except OSError:
      continue
    if kind == "Instruction":
      continue
    n = int(size[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[size[-1]] if size[-1] in "KMG" else int(size)
    out[f"L{level}{'d' if kind == 'Data' else ''}"] = n
  return out


def cores() -> int:
  """CPUs this process may run on (the affinity mask, not the host's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:   # not Linux
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def cpu() -> dict:
  """parse_cpuinfo of this machine, with cores and caches."""
  try:
    with open("/proc/cpuinfo") as f:
      info = parse_cpuinfo(f.read())
  except OSError:
    import platform  # pylint: disable=g-import-not-at-top
    info = {"model_name": platform.processor() or "unknown", "vendor": "unknown", "family": "", "model": "",
            "flags": []}
  return info | {"cores": cores(), "caches": cache_sizes()}


def matmul_gflops(n: int = 2048, reps: int = 3) -> float:
  """GFLOP/s of an n^3 float32 jnp matmul (compiled and warmed first): what this machine's XLA:CPU does at best."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  jax.block_until_ready(out)
  return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def record(matmul: float | None = None) -> dict:
  """The machine record a benchmark JSON stores under "machine" (matmul: GFLOP/s measured by the caller, else now)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return cpu() | {"matmul_gflops": round(matmul if matmul is not None else matmul_gflops(), 1),
                  "jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend()}


def describe(rec: dict) -> str:
  """One line for a table's caption: 'AMD EPYC (AuthenticAMD), 2 cores, avx2 fma avx512f ...; matmul 164 GFLOP/s'."""
  caches = ", ".join(f"{k} {v >> 10} KiB" for k, v in rec.get("caches", {}).items())
  return (f"{rec['model_name']} ({rec['vendor']}), {rec['cores']} cores, {' '.join(rec['flags'])}"
          f"{'; ' + caches if caches else ''}; 2048^3 f32 matmul {rec['matmul_gflops']:.0f} GFLOP/s")


# ----------------------------------------------------------------------------------------------------------------
# Per-machine chunk size.
PROBE_VERSION = 2        # bump when the probe (or what it times) changes: old cache entries are then measured again
PROBE_MARGIN = 1.03      # chunks must beat the whole batch by this much (the whole batch is the simpler program)


def cache_dir() -> str | None:
  """$JCNN_MACHINE_CACHE, else $XDG_CACHE_HOME/jcnn (~/.cache/jcnn); JCNN_MACHINE_CACHE=0 (or empty): no cache, no
  measurement (tests/conftest.py sets it: tests never time anything behind the user's back nor write ~/.cache)."""
  env = os.environ.get("JCNN_MACHINE_CACHE")
  if env is not None:
    return None if env in ("", "0") else env
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jcnn")


def _key(batch: int) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  c = cpu()
  return (f"{c['model_name']}|{c['family']}/{c['model']}|{'+'.join(c['flags'])}|{c['cores']} cores|jax {jax.__version__}"
          f"|probe {PROBE_VERSION}|batch {batch}")


def probe_chunk(batch: int, candidates=(16,), windows: int = 3, window_s: float = 0.15) -> dict:
  """Times the Keras convnet's train step (train.make_train_step, RMSprop) at `batch` on the whole batch and in each
  candidate chunk size, alternating, `windows` windows each; returns {'chunk': best, 'img_per_s': {size: median}}.
  The whole batch is kept unless a chunk size beats it by PROBE_MARGIN. 3-9 s with compiling (two programs),
  measured once per machine and batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jcnn import models, train  # pylint: disable=g-import-not-at-top

  model = models.get({"name": "convnet"}, num_classes=10)
  tx = train.make_optimizer({"name": "rmsprop", "learning_rate": 1e-3})

  @jax.jit
  def setup():   # one program (op-by-op set-up would compile ~100 small ones: seconds)
    x = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1))
    params = model.init(jax.random.key(2), x[:1])["params"]
    return train.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, batch_stats={},
                            opt_state=tx.init(params)), x, jax.random.randint(jax.random.key(1), (batch,), 0, 10)

  state0, x, y = setup()
  sizes = [batch] + sorted({d for d in (train.micro_batch_size(batch, m) for m in candidates) if 8 <= d < batch})
  key = jax.random.key(3)
  compile_one = lambda m: jax.jit(train.make_train_step(model, tx, micro_batch=m)).lower(state0, x, y, key).compile()
  with concurrent.futures.ThreadPoolExecutor(len(sizes)) as pool:   # XLA compiles mostly on one core: overlap them
    steps = dict(zip(sizes, pool.map(compile_one, sizes)))
  states = {m: jax.block_until_ready(steps[m](state0, x, y, key)[0]) for m in sizes}
  reps = {}
  for m in sizes:   # steps per window from one timed step
    t0 = time.perf_counter()
    states[m] = jax.block_until_ready(steps[m](states[m], x, y, key)[0])
    reps[m] = max(1, int(window_s / max(time.perf_counter() - t0, 1e-6)))
  rates = {m: [] for m in sizes}
  for _ in range(windows):
    for m in sizes:
      t0 = time.perf_counter()
      for _ in range(reps[m]):
        states[m] = steps[m](states[m], x, y, key)[0]
      jax.block_until_ready(states[m])
      rates[m].append(reps[m] * batch / (time.perf_counter() - t0))
  med = {m: float(np.median(r)) for m, r in rates.items()}
  best = max(sizes[1:], key=med.get, default=batch)
  chunk = best if best != batch and med[best] >= PROBE_MARGIN * med[batch] else batch
  return {"chunk": chunk, "img_per_s": {str(m): round(v, 1) for m, v in med.items()}}


@functools.lru_cache(maxsize=None)
def cpu_micro_batch(batch: int) -> int:
  """The automatic CPU chunk size for a step of `batch` examples on this machine:
    1. JCNN_MICRO_BATCH_CPU=N if set (0 = the whole batch);
    2. with no machine cache (JCNN_MACHINE_CACHE=0, as in tests): train.MICRO_BATCH_CPU, nothing measured;
    3. else the cached choice for (CPU model, flags, cores, jax version, batch) in <cache_dir>/machine.json, measured
       by probe_chunk the first time (~3-4 s) and written there. Delete the file to measure again."""
  env = os.environ.get("JCNN_MICRO_BATCH_CPU")
  if env:
    return int(env) or batch
  folder = cache_dir()
  if folder is None:
    from jcnn import train  # pylint: disable=g-import-not-at-top
    return train.MICRO_BATCH_CPU
  path, key = os.path.join(folder, "machine.json"), _key(batch)
  try:
    with open(path) as f:
      table = json.load(f)
  except (OSError, ValueError):
    table = {}
  if key not in table:
    # In a thread of its own: this runs while a step is being traced, and JAX's tracing state is per thread, so the
    # probe's programs compile and run now instead of being staged into the caller's trace.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      table[key] = pool.submit(probe_chunk, batch).result() | {"time": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
      os.makedirs(folder, exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "w") as f:
        json.dump(table, f, indent=1)
      os.replace(tmp, path)                    # atomic: a concurrent run reads the old or the new table, never half
    except OSError:
      pass                                     # a read-only home: measured again next run, still correct
  return int(table[key]["chunk"])
