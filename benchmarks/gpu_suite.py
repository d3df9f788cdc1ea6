"""The GPU check, in one run of under 8 minutes on one GPU (a lent device gives 15 minutes in all): one JSON naming it.

  python benchmarks/gpu_suite.py --out=benchmarks/results/gpu_suite.json
  python benchmarks/gpu_suite.py --tiny --out=gpu_suite_cpu.json      # seconds, on CPU: the script's own test

What it measures:
  train       training images/s of the convnet (batch 256) and ResNet-20 (batch 128) in float32 and bfloat16, through
              the one loop's program step (benchmarks/throughput.py's jcnn path), compile time apart, median of windows
  sweep       V = 16, 64, 256 seeds of the convnet in one program (vmap) against V runs one after another
              (benchmarks/sweep_throughput.py's measure), as model-images/s and their ratio
  memory      the per-variant rule (jcnn.sweep.memory.bytes_per_variant) times V against the device's peak bytes in
              use after that sweep's program ran (memory_stats; null where the backend reports none, as on CPU)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import sweep_throughput  # noqa: E402
import throughput  # noqa: E402
from experiments import fashion_convnet  # noqa: E402
from jcnn import data as data_lib, models  # noqa: E402
from jcnn.inspect import summary  # noqa: E402
from jcnn.parallel import machine  # noqa: E402
from jcnn.sweep import memory  # noqa: E402
from jcnn.train import program as program_lib  # noqa: E402

FULL = {"train": [("convnet", 256), ("resnet20", 128)], "dtypes": ("float32", "bfloat16"), "variants": (16, 64, 256),
        "windows": 3, "window_s": 1.0, "sweep_batch": 64, "model_images": 65536}
TINY = {"train": [("convnet", 8)], "dtypes": ("float32", "bfloat16"), "variants": (2,), "windows": 1,
        "window_s": 0.05, "sweep_batch": 8, "model_images": 32}


def device() -> dict:
  d = jax.devices()[0]
  return {"backend": jax.default_backend(), "kind": d.device_kind, "count": jax.device_count(),
          "memory_bytes": (d.memory_stats() or {}).get("bytes_limit") if hasattr(d, "memory_stats") else None}


def peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
  return (stats or {}).get("peak_bytes_in_use")


def train_rows(plan: dict) -> list[dict]:
  rows = []
  rng = np.random.default_rng(0)
  for name, batch in plan["train"]:
    shape = throughput.CASES[name][1]
    n = max(4 * batch, 512 if plan is TINY else throughput.N_IMAGES)
    images = jnp.asarray(rng.random((n,) + shape, np.float32))
    labels = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    order = jnp.asarray(rng.permutation(n)[: (n // batch) * batch].reshape(-1, batch))
    for dtype in plan["dtypes"]:
      train_n, _, info = throughput.build_jcnn(name, batch, images, labels, order, dtype=dtype)
      steps = throughput.calibrate(train_n, plan["window_s"])
      rates = [steps * batch / throughput.timed(train_n, steps) for _ in range(plan["windows"])]
      rows.append({"model": name, "batch": batch, "dtype": dtype, "images_per_s": float(np.median(rates)),
                   "compile_s": info["compile_train_s"]})
      print(f"train {name:9s} b{batch:<4d} {dtype:9s} {rows[-1]['images_per_s']:10.0f} img/s  "
            f"compile {info['compile_train_s']:.1f} s", flush=True)
  return rows


def sweep_rows(plan: dict) -> tuple[list[dict], list[dict]]:
  config = fashion_convnet.get_config()
  with config.unlocked():
    config.data.synthetic_size = (4096, 64)
  config.data.name = "synthetic"
  config.train.batch_size = plan["sweep_batch"]
  config.model.dropout_rate = 0.25
  ds = data_lib.load(config.data)
  single = program_lib.single_program(config, ds)
  batches1 = single.batches(1)
  st = [single.init()]

  def run_single():
    st[0] = single.step(st[0], batches1)
    return st[0].acc

  model = models.get(config.model, num_classes=ds.outputs)
  n_params = summary.count_params(jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x), ds.train_x[:1])["params"])
  per = memory.bytes_per_variant(model, ds.image_shape, config.train.batch_size, n_params)
  rows, mem = [], []
  for v in plan["variants"]:
    strategy = "vmap" if jax.default_backend() != "cpu" else "map"
    rows += sweep_throughput.measure(config, ds, v, [strategy], plan["windows"], max(plan["model_images"], v * 64),
                                     run_single)
    mem.append({"V": v, "rule_bytes": per * v, "rule_bytes_per_variant": per, "device_peak_bytes": peak_bytes()})
    peak = mem[-1]["device_peak_bytes"]
    print(f"memory V={v:<4d} rule {per * v / 2**20:9.1f} MiB  device peak "
          f"{'n/a' if peak is None else f'{peak / 2**20:.1f} MiB'}", flush=True)
  return rows, mem


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU test of this script)")
  p.add_argument("--out", default="", help="write the results as JSON here")
  args = p.parse_args(argv)
  plan = TINY if args.tiny else FULL
  t0 = time.perf_counter()
  command = machine.command_line() if argv is None else " ".join(["python benchmarks/gpu_suite.py", *argv])
  result = {"command": command, "date": time.strftime("%Y-%m-%d"), "device": device(),
            "machine": machine.record(), "plan": {k: v for k, v in plan.items()}}
  result["train"] = train_rows(plan)
  result["sweep"], result["memory"] = sweep_rows(plan)
  result["wall_s"] = time.perf_counter() - t0
  print(f"device: {result['device']['kind']} ({result['device']['backend']}); {result['wall_s']:.0f} s in all")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
