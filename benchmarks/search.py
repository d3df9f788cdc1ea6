"""Searches that decide against the full grid: wall time, variant-epochs, best validation accuracy found.

  python benchmarks/search.py --out=benchmarks/results/search_cpu2.json          # the issue's setting, scaled
  python benchmarks/search.py --train=2000 --val=2000 --test=2000 --arms=grid,halving

One population of the Fashion-MNIST convnet (27 variants: learning rate x dropout x `--third` axis, one seed), the same
epochs (9), run three ways one after another in this process: the full grid, successive halving (eta 3, rungs 1, 3, 9)
and population-based training (bottom quarter copies the top quarter each epoch). Each arm is jcnn.experiment.run_sweep
in a fresh workdir (compile included in its wall time; its compile seconds are reported apart). For each arm: wall
seconds, variant-epochs trained, the best validation accuracy found and that variant's test accuracy. The grid
evaluates val and test every epoch (as a grid sweep does); a search reads val for its decisions and test once at the
end. The JSON names the CPU (jcnn.parallel.machine.record).
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments import fashion_convnet  # noqa: E402
from jcnn import sweep as sweep_lib  # noqa: E402
from jcnn.experiment import run_sweep  # noqa: E402
from jcnn.parallel import machine  # noqa: E402

THIRD = {"l2": (0.0, 1e-4, 1e-3), "label_smoothing": (0.0, 0.1, 0.2), "init_scale": (0.5, 1.0, 2.0)}


def arm(kind: str, args) -> dict:
  c = fashion_convnet.get_config()
  c.train.epochs = args.epochs
  c.data.val_size = args.val
  c.data.train_limit = args.train      # the training split after the validation split is held out
  c.data.test_limit = args.test
  s = sweep_lib.default_sweep()
  s.seeds = 1
  s.learning_rate = (3e-4, 1e-3, 3e-3)
  s.dropout_rate = (0.0, 0.25, 0.5)
  s[args.third] = THIRD[args.third]
  s.search = kind
  s.rungs = (1, 3, 9)
  s.eta = 3
  t = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    out = run_sweep(c, s, os.path.join(workdir, kind))
  wall = time.perf_counter() - t
  res = out["results"]
  val = [r["final"]["val_accuracy"] for r in res]
  best = int(np.argmax(val))
  trained = sum(r.get("epochs_trained", args.epochs) for r in res)
  return {"arm": kind, "wall_seconds": round(wall, 1), "compile_seconds": round(res[0]["compile_seconds"] or 0, 1),
          "variant_epochs": trained, "best_val_accuracy": val[best], "best_test_accuracy":
          res[best]["final"]["test_accuracy"], "best_hparams": res[best]["hparams"],
          "best_final_hparams": res[best].get("final_hparams")}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--arms", default="grid,halving,pbt")
  p.add_argument("--epochs", type=int, default=9)
  p.add_argument("--train", type=int, default=5000, help="training images (after the validation split)")
  p.add_argument("--val", type=int, default=10000)
  p.add_argument("--test", type=int, default=2000)
  p.add_argument("--third", default="l2", choices=sorted(THIRD))
  p.add_argument("--out", default="")
  args = p.parse_args()
  rows = [arm(kind, args) for kind in args.arms.split(",")]
  grid = next((r for r in rows if r["arm"] == "grid"), None)
  for r in rows:
    if grid:
      r["wall_vs_grid"] = round(r["wall_seconds"] / grid["wall_seconds"], 3)
      r["val_vs_grid_points"] = round(100 * (r["best_val_accuracy"] - grid["best_val_accuracy"]), 2)
    print(json.dumps(r))
  rec = {"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine.record(),
         "args": vars(args), "rows": rows}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rec, f, indent=2)
  print("| arm | wall s | vs grid | variant-epochs | best val acc | its test acc |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['arm']} | {r['wall_seconds']:.0f} | {r.get('wall_vs_grid', 1):.2f} | {r['variant_epochs']} | "
          f"{r['best_val_accuracy']:.4f} | {r['best_test_accuracy']:.4f} |")


if __name__ == "__main__":
  main()
