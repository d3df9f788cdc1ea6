"""Throughput against device count, for both mesh axes: `data` (one run's batch split over D devices) and `variant`
(a sweep's V variants split over D devices).

  python benchmarks/scaling.py                          # D = 1, 2, 4 forced CPU devices, convnet, batch 128, V = 8
  python benchmarks/scaling.py --devices=1,2,4,8 --variants=16 --out=docs/scaling_cpu2.json
  python benchmarks/scaling.py --real                   # the machine's own devices (a GPU machine), D = 1..all

Each device count runs in its own subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=D on CPU; on a GPU
machine the first D GPUs) and times the loop's real program step (`jcnn.train.program.single_program` /
`sweep.program` on a `jcnn.parallel.mesh` mesh): warm-up and compile apart, then the median of several windows. On
CPU the forced devices share the
same cores, so the table shows the overhead of splitting (partitioned programs, collectives), not a speed-up: the
ideal there is 1.0x, not Dx. Ratios are against D = 1 in the same invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

IN_FLIGHT = 8   # steps queued at most (as loop.run): XLA:CPU collectives over forced devices stall with more

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(axis: str, batch: int, variants: int, windows: int, window_s: float) -> dict:
  """In this process (its devices already set): images per second of one mesh axis."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jcnn import config as config_lib, sweep  # pylint: disable=g-import-not-at-top
  from jcnn.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from jcnn.train import program as program_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.data.name, c.data.synthetic_size = "synthetic", (4096, 256)
  c.train.batch_size = batch
  mesh = mesh_lib.make(c, n_variants=variants if axis == "variant" else None)
  ds = mesh_lib.load(c.data, mesh)
  if axis == "data":
    program, per_step = program_lib.single_program(c, ds, mesh), batch
  else:
    vs = [config_lib.variant_of(c, seed=s) for s in range(variants)]
    fns = sweep.make_group_fns(c, ds, ["seed"], "auto", mesh)
    program, per_step = sweep.program(fns, ds, vs, mesh, pad_to=int(mesh.shape["variant"])), batch * variants
  t = time.perf_counter()
  rs = program.init()
  b = program.batches(1)
  rs = program.step(rs, b)
  jax.block_until_ready(rs.acc)
  compile_s = time.perf_counter() - t
  for _ in range(3):
    rs = program.step(rs, b)
  jax.block_until_ready(rs.acc)
  rates = []
  for _ in range(windows):
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < window_s:
      rs = program.step(rs, b)
      n += 1
      if n % IN_FLIGHT == 0:
        jax.block_until_ready(rs.acc)
    jax.block_until_ready(rs.acc)
    rates.append(n * per_step / (time.perf_counter() - t))
  return {"axis": axis, "devices": len(jax.devices()), "mesh": mesh_lib.describe(mesh),
          "images_per_second": float(np.median(rates)), "windows": rates, "compile_seconds": compile_s}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", default="1,2,4", help="device counts (forced CPU devices unless --real)")
  p.add_argument("--real", action="store_true", help="use the machine's own devices (the first D of them)")
  p.add_argument("--batch", type=int, default=128, help="global batch per variant")
  p.add_argument("--variants", type=int, default=8, help="variants of the sweep case")
  p.add_argument("--windows", type=int, default=5)
  p.add_argument("--window_s", type=float, default=1.0)
  p.add_argument("--out", default="")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.child:
    print(json.dumps(measure(a.child, a.batch, a.variants, a.windows, a.window_s)))
    return
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  rows = []
  for d in [int(x) for x in a.devices.split(",")]:
    env = dict(os.environ, JCNN_COMPILATION_CACHE="0")
    if a.real:
      env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(d)))
    else:
      env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={d}"
      env["JAX_PLATFORMS"] = "cpu"
    for axis in ("data", "variant"):
      out = subprocess.run([sys.executable, __file__, f"--child={axis}", f"--batch={a.batch}",
                            f"--variants={a.variants}", f"--windows={a.windows}", f"--window_s={a.window_s}"],
                           env=env, capture_output=True, text=True, check=False)
      if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"D={d} {axis}: failed")
      r = json.loads(out.stdout.strip().splitlines()[-1])
      rows.append(r)
      print(f"D={d} {axis:7s} {r['images_per_second']:10,.0f} img/s  mesh {r['mesh']['axes']}  "
            f"compile {r['compile_seconds']:.1f}s", flush=True)
  base = {axis: next(r["images_per_second"] for r in rows if r["axis"] == axis and r["devices"] == rows[0]["devices"])
          for axis in ("data", "variant")}
  print(f"\n| devices | data axis: img/s | vs D={rows[0]['devices']} | variant axis (V={a.variants}): model-img/s "
        f"| vs D={rows[0]['devices']} |\n|---|---|---|---|---|")
  for d in sorted({r["devices"] for r in rows}):
    dr = next(r for r in rows if r["devices"] == d and r["axis"] == "data")
    vr = next(r for r in rows if r["devices"] == d and r["axis"] == "variant")
    print(f"| {d} | {dr['images_per_second']:,.0f} | {dr['images_per_second'] / base['data']:.2f} | "
          f"{vr['images_per_second']:,.0f} | {vr['images_per_second'] / base['variant']:.2f} |")
  if a.out:
    sys.path.insert(0, ROOT)
    from jcnn.parallel import machine  # pylint: disable=g-import-not-at-top
    with open(a.out, "w") as f:
      json.dump({"command": " ".join(["python", "benchmarks/scaling.py", *(argv or sys.argv[1:])]),
                 "date": time.strftime("%Y-%m-%d"), "machine": machine.record(), "forced_cpu_devices": not a.real,
                 "batch": a.batch, "variants": a.variants, "rows": rows}, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
