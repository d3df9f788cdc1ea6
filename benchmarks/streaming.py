"""Training images/s in memory against streamed (grain) from a PNG folder and from an .npz read by rows, and the
peak resident memory of a streamed run whose training split is larger than memory allows (issue 20).

  python benchmarks/streaming.py                        # convnet b64 and resnet20 b128; 5 windows; memory check
  python benchmarks/streaming.py --windows=7 --big_gb=4.4 --out=streaming.json
  python benchmarks/streaming.py --models=resnet50:256:224x224x3:4096 --skip_memory   # on a GPU

Rates: each case's data (synthetic uint8 images, the same pixels in every form) is written as a PNG class folder and
as an uncompressed .npz, then loaded four ways: in memory (data.stream=off, the step gathers on the device), streamed
from the .npz and from the folder in the training process (data.workers=0: a batch is read while the device runs the
step before it, since JAX dispatches asynchronously), and from the folder with one worker process. Each runs
the one loop's real program (`single_program`, its `feed`) for one long epoch; after a warm-up (compile apart),
windows alternate the ways and time `--steps` steps each; the table gives the median images/s and the median of the
per-window ratios to the in-memory rate.

Memory: a child process streams a generated .npz whose training split is `--big_gb` GB once decoded to float32
(data.stream=auto streams it: it is above data.stream_above_mb), trains `--big_steps` steps of the convnet at batch
64 with per-channel standardisation (whose statistics take one streaming pass over the split), and reports its peak
resident set (VmHWM in /proc/self/status). The JSON names the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from jcnn import config as config_lib, data as data_lib  # noqa: E402
from jcnn.data import folder, sources  # noqa: E402
from jcnn.parallel import machine  # noqa: E402
from jcnn.train import program as program_lib  # noqa: E402

WAYS = {  # name -> config.data overrides (the path is filled in per case)
    "in memory": {"name": "arrays", "stream": "off"},
    "streamed .npz": {"name": "arrays", "stream": "on", "workers": 0},
    "streamed PNG (in process)": {"name": "folder", "stream": "on", "workers": 0},
    "streamed PNG (1 process)": {"name": "folder", "stream": "on", "workers": 1},
}


def write_case(root: str, shape, n: int) -> dict:
  x, y, tx, ty, k = sources.synthetic(tuple(shape), n_train=n, n_test=64)
  np.savez(os.path.join(root, "d.npz"), x_train=x, y_train=y, x_test=tx, y_test=ty)
  names = folder.class_folder_names(k)
  folder.write_folder(os.path.join(root, "png"), x, y, names, "train")
  folder.write_folder(os.path.join(root, "png"), tx, ty, names, "test")
  return {"arrays": os.path.join(root, "d.npz"), "folder": os.path.join(root, "png")}


def config_for(model: str, batch: int, way: dict, paths: dict):
  c = config_lib.base_config()
  c.model.name = model
  c.train.batch_size = batch
  c.train.epochs = 1
  for k, v in way.items():
    c.data[k] = v
  c.data.path = paths[way["name"]]
  return c


def run_case(model: str, batch: int, shape, n: int, windows: int, steps: int) -> dict:
  with tempfile.TemporaryDirectory() as root:
    t = time.perf_counter()
    paths = write_case(root, shape, n)
    print(f"{model} b{batch}: wrote {n} images as PNG and .npz in {time.perf_counter() - t:.0f}s", flush=True)
    runs = {}
    for name, way in WAYS.items():
      c = config_for(model, batch, way, paths)
      ds = data_lib.load(c.data, seed=0)
      program = program_lib.single_program(c, ds)
      rs = program.init()
      feed = iter(program.feed(1, 0))
      t = time.perf_counter()
      for _ in range(3):
        rs = program.step(rs, next(feed))
      jax.block_until_ready(rs.acc)
      runs[name] = {"program": program, "rs": rs, "feed": feed, "warmup_s": time.perf_counter() - t, "rates": []}
    assert n // batch >= 3 + windows * steps, "the epoch is too short for the windows"
    for _ in range(windows):
      for name, r in runs.items():
        t = time.perf_counter()
        for _ in range(steps):
          r["rs"] = r["program"].step(r["rs"], next(r["feed"]))
        jax.block_until_ready(r["rs"].acc)
        r["rates"].append(steps * batch / (time.perf_counter() - t))
    base = np.asarray(runs["in memory"]["rates"])
    out = {"model": model, "batch": batch, "shape": list(shape), "images": n, "windows": windows, "steps": steps}
    for name, r in runs.items():
      rates = np.asarray(r["rates"])
      out[name] = {"images_per_s": float(np.median(rates)), "vs_in_memory": float(np.median(rates / base)),
                   "warmup_s": r["warmup_s"]}
    return out


CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
import jax
from jcnn import config as config_lib, data as data_lib
from jcnn.train import program as program_lib
if __name__ == "__main__":
  c = config_lib.base_config()
  c.data.name, c.data.path, c.data.preprocess, c.data.workers = "arrays", sys.argv[1], "standardize", 0
  c.train.batch_size, c.train.epochs = 64, 1
  def peak():   # VmHWM: this process's peak resident set (ru_maxrss would carry the parent's peak across fork + exec)
    line = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    return int(line.split()[1]) * 1024 / 1e9
  phases = {"imports": peak()}
  t = time.perf_counter()
  ds = data_lib.load(c.data, seed=0)
  load_s = time.perf_counter() - t
  phases["load_and_statistics"] = peak()
  program = program_lib.single_program(c, ds)
  rs, feed = program.init(), iter(program.feed(1, 0))
  rs = program.step(rs, next(feed))
  jax.block_until_ready(rs.acc)
  phases["compile_and_first_step"] = peak()
  t = time.perf_counter()
  for _ in range(int(sys.argv[3])):
    rs = program.step(rs, next(feed))
  jax.block_until_ready(rs.acc)
  phases["training"] = peak()
  print(json.dumps({"streamed": ds.streamed, "decoded_gb": ds.train_x.nbytes / 1e9, "load_and_stats_s": load_s,
                    "train_s": time.perf_counter() - t, "peak_rss_gb": peak(), "peak_rss_gb_after": phases}))
"""


def memory_check(big_gb: float, steps: int) -> dict:
  shape = (96, 96, 3)
  n = int(np.ceil(big_gb * 1e9 / (4 * np.prod(shape))))       # float32 once decoded
  with tempfile.TemporaryDirectory() as root:
    path = os.path.join(root, "big.npz")
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(os.path.join(root, "x_train.npy"), "w+", np.uint8, (n,) + shape)
    for s in range(0, n, 4096):   # written in chunks: this process never holds the split either
      x[s:s + 4096] = rng.integers(0, 256, (min(4096, n - s),) + shape, dtype=np.uint8)
    x.flush()
    del x
    np.save(os.path.join(root, "y_train.npy"), rng.integers(0, 10, n).astype(np.int32))
    np.save(os.path.join(root, "x_test.npy"), rng.integers(0, 256, (64,) + shape, dtype=np.uint8))
    np.save(os.path.join(root, "y_test.npy"), rng.integers(0, 10, 64).astype(np.int32))
    del path
    print(f"memory: wrote {n} images {shape} uint8 ({n * np.prod(shape) / 1e9:.2f} GB on disk) in "
          f"{time.perf_counter() - t:.0f}s", flush=True)
    root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", CHILD, root, root_dir, str(steps)], capture_output=True, text=True)
    if p.returncode != 0:
      raise SystemExit(p.stderr[-3000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return out | {"images": n, "shape": list(shape), "steps": steps, "batch": 64}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--models", default="convnet:64:28x28x1:20000,resnet20:128:32x32x3:6400",
                  help="model:batch:HxWxC:images, comma-separated cases")
  ap.add_argument("--windows", type=int, default=5)
  ap.add_argument("--steps", type=int, default=0, help="steps per window (0: as many as the epoch allows, <= 40)")
  ap.add_argument("--big_gb", type=float, default=4.4, help="decoded size of the memory check's training split")
  ap.add_argument("--big_steps", type=int, default=50)
  ap.add_argument("--skip_memory", action="store_true")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  results = {"command": machine.command_line(), "machine": machine.record(), "date": time.strftime("%Y-%m-%d"), "cases": []}
  for case in args.models.split(","):
    model, batch, shape, n = case.split(":")
    batch, n, shape = int(batch), int(n), tuple(int(s) for s in shape.split("x"))
    steps = args.steps or min(40, (n // batch - 3) // args.windows)
    results["cases"].append(run_case(model, batch, shape, n, args.windows, steps))
  if not args.skip_memory:
    results["memory"] = memory_check(args.big_gb, args.big_steps)
  print(f"\n| model | batch | {' | '.join(WAYS)} |\n|---|---|" + "---|" * len(WAYS))
  for r in results["cases"]:
    print(f"| {r['model']} | {r['batch']} | " + " | ".join(
        f"{r[w]['images_per_s']:.0f}/s ({r[w]['vs_in_memory']:.2f}x)" for w in WAYS) + " |")
  if "memory" in results:
    m = results["memory"]
    print(f"\nstreamed {m['decoded_gb']:.2f} GB decoded ({m['images']} x {m['shape']}): peak RSS "
          f"{m['peak_rss_gb']:.2f} GB over {m['steps']} steps (statistics pass + load {m['load_and_stats_s']:.0f}s); peak after each phase: "
          + ", ".join(f"{k} {v:.2f} GB" for k, v in m["peak_rss_gb_after"].items()))
  print(machine.describe(results["machine"]))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
