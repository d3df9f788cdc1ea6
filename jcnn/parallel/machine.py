"""What machine a number was measured on, and the CPU settings chosen per machine.

  record(matmul_gflops)   {model_name, vendor, flags, cores, caches, matmul_gflops, jax, jaxlib}: every benchmark JSON
                          stores it under "machine"; describe(record) is the one line a table prints
  matmul_gflops()         a 2048^3 float32 jnp matmul, GFLOP/s (the physical yardstick for achieved conv rates)
  cpu_micro_batch(batch, probe, default)
                          the chunk size of a CPU train/eval step (jcnn.train.micro_batch_size's automatic choice):
                          `probe` (jcnn.train.step.probe_chunk) measures it once per machine and batch; cached here
  cpu_variant_chunk(batch, probe)
                          the most variants one CPU sweep program holds (jcnn.sweep.cpu_chunk): measured the same way

The chunk size is a per-machine choice because it is one in fact: on this project's 2-core AMD EPYC (Zen 5) the Keras
convnet's batch-64 step ran 1.15x faster in chunks of 16, while on a 2-core Intel Xeon (AVX-512 + AMX) the whole batch
won (4,881 vs 4,646 img/s). No rule from cache sizes was shown to predict both, so the choice is measured.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable

from jcnn.errors import ConfigError
from jcnn.nn import measured

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


def command_line() -> str:
  """The command that is running, as a benchmark JSON records it ("command"): the docs' tables print it."""
  script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
  return " ".join(["python", script, *sys.argv[1:]])


def describe(rec: dict) -> str:
  """One line for a table's caption: 'AMD EPYC (AuthenticAMD), 2 cores, avx2 fma avx512f ...; matmul 164 GFLOP/s'."""
  caches = ", ".join(f"{k} {v >> 10} KiB" for k, v in rec.get("caches", {}).items())
  return (f"{rec['model_name']} ({rec['vendor']}), {rec['cores']} cores, {' '.join(rec['flags'])}"
          f"{'; ' + caches if caches else ''}; 2048^3 f32 matmul {rec['matmul_gflops']:.0f} GFLOP/s")


# ----------------------------------------------------------------------------------------------------------------
# Per-machine chunk size.
PROBE_VERSION = 3        # bump when the probe (or what it times) changes: old cache entries are then measured again


cache_dir = measured.cache_dir


def _key(batch: int) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  c = cpu()
  return (f"{c['model_name']}|{c['family']}/{c['model']}|{'+'.join(c['flags'])}|{c['cores']} cores|jax {jax.__version__}"
          f"|probe {PROBE_VERSION}|batch {batch}")


def _count(name: str, value: str, meaning: str) -> int:
  """An environment setting that must be an integer >= 0, or one line naming the fix."""
  if not value.strip().isdigit():
    raise ConfigError(f"{name}={value!r}: must be an integer >= 0 ({meaning}); unset it to measure")
  return int(value)


@functools.lru_cache(maxsize=None)
def cpu_micro_batch(batch: int, probe: Callable[[int], dict], default: int) -> int:
  """The automatic CPU chunk size for a step of `batch` examples on this machine:
    1. JCNN_MICRO_BATCH_CPU=N if set (0 = the whole batch);
    2. with no machine cache (JCNN_MACHINE_CACHE=0, as in tests): `default`, nothing measured;
    3. else the cached choice for (CPU model, flags, cores, jax version, batch) in <cache_dir>/machine.json, measured
       by `probe(batch)` -> {'chunk', ...} the first time (jcnn.train.step.probe_chunk; what it costs:
       benchmarks/chunk_probe.py) and written there. Delete the file to measure again.
  The probe is passed in by the train step that asks, so this module knows nothing of training."""
  env = os.environ.get("JCNN_MICRO_BATCH_CPU")
  if env:
    return _count("JCNN_MICRO_BATCH_CPU", env, "examples per chunk; 0 = the whole batch") or batch
  if cache_dir() is None:
    return default
  return int(measured.lookup("machine.json", _key(batch), lambda: probe(batch))["chunk"])


def cpu_variant_chunk(batch: int, probe: Callable[[int], dict]) -> int:
  """The most variants one CPU sweep program should hold for steps of `batch` examples, 0 = no cap:
    1. JCNN_VARIANT_CHUNK_CPU=N if set (0 = no cap);
    2. with no machine cache (JCNN_MACHINE_CACHE=0, as in tests): 0, nothing measured;
    3. else the cached choice for (CPU model, flags, cores, jax version, batch) in <cache_dir>/machine.json, measured
       by `probe(batch)` -> {'chunk', ...} the first time (jcnn.sweep.cpu_chunk.probe) and written there."""
  env = os.environ.get("JCNN_VARIANT_CHUNK_CPU")
  if env:
    return _count("JCNN_VARIANT_CHUNK_CPU", env, "variants per CPU sweep program; 0 = no cap")
  if cache_dir() is None:
    return 0
  return _variant_chunk(batch, probe)


@functools.lru_cache(maxsize=None)
def _variant_chunk(batch: int, probe: Callable[[int], dict]) -> int:
  return int(measured.lookup("machine.json", _key(batch) + "|variants per program",
                             lambda: dict(probe(batch), what="variants per CPU sweep program"))["chunk"])
