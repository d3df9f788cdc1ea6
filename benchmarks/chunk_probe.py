"""What the per-machine chunk probe costs, once per machine and batch size: the wall time of
`jcnn.train.step.probe_chunk(batch)` (compiling the convnet step twice, overlapped, then timing both), and its choice.

  python benchmarks/chunk_probe.py --batches=64,256 --repeats=3 --out=docs/chunk_probe_cpu2.json

Each repeat is a fresh probe (its programs are new closures, so they compile again, as on a new machine); the table
gives the median and range of the wall times.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from jcnn.parallel import machine  # noqa: E402
from jcnn.train import step  # noqa: E402


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batches", default="64,256")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  rows = []
  for batch in (int(b) for b in a.batches.split(",")):
    seconds, choices = [], []
    for _ in range(a.repeats):
      t0 = time.perf_counter()
      choices.append(step.probe_chunk(batch))
      seconds.append(time.perf_counter() - t0)
    rows.append({"batch": batch, "seconds": seconds, "median_s": float(np.median(seconds)),
                 "chunks_chosen": [c["chunk"] for c in choices], "img_per_s": [c["img_per_s"] for c in choices]})
    print(f"batch {batch}: probe {np.median(seconds):.1f} s (median of {a.repeats}; {min(seconds):.1f}-"
          f"{max(seconds):.1f} s), chose chunks of {[c['chunk'] for c in choices]}", flush=True)
  rec = machine.record()
  print(machine.describe(rec))
  result = {"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "machine": rec, "rows": rows}
  if a.out:
    with open(a.out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
