"""What a run records: the console progress line, metrics.jsonl, TensorBoard event files, and the final files.

The loop calls a `Writer` at the points where it already has metrics on the host (train rows every log_every steps,
epoch rows), so writing adds no device-to-host copy. For a sweep each metric is a list over variants: metrics.jsonl gets
one row per variant (with `variant`, its index in variants.jsonl) and TensorBoard one run per variant, named by its
hyperparameters (`tb/dropout_rate=0.25,seed=1`), so `tensorboard --logdir runs` overlays their curves.
TensorBoard files are written with tensorboardX (no TensorFlow needed to write them).
"""
from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

SCALARS = ("loss", "accuracy", "rmse", "mae", "r2")   # every metric a task reports (jcnn.train.tasks.METRICS)
SHORT = {"accuracy": "acc"}


def run_record() -> dict:
  """Versions, device and git commit: what a reader needs to reproduce a result."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = ""
  return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__, "python": sys.version.split()[0],
          "platform": platform.platform(), "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "git_commit": commit or "unknown", "time": time.strftime("%Y-%m-%d %H:%M:%S")}


class Progress:
  """Prints a progress line (steps/s, ETA, current metrics) about every `every` seconds."""

  def __init__(self, total: int, prefix: str, every: float = 2.0, done: int = 0):
    self.total, self.prefix, self.every = total, prefix, every
    self.t0 = self.last = time.perf_counter()
    self.offset = done   # steps done before t0 (resumed, or the compiling step), left out of the rate
    self.tty = sys.stdout.isatty()

  def restart(self, done: int):
    """Count the rate from now, with `done` steps already behind (after the compiling step)."""
    self.t0 = self.last = time.perf_counter()
    self.offset = done

  def update(self, done: int, metrics: Callable[[], dict], force: bool = False):
    now = time.perf_counter()
    if not force and now - self.last < self.every:
      return None
    m = metrics()                 # waits for the steps dispatched so far: the rate counts finished steps
    now = self.last = time.perf_counter()
    rate = (done - self.offset) / max(now - self.t0, 1e-9)
    eta = (self.total - done) / max(rate, 1e-9)
    line = (f"{self.prefix} {done}/{self.total} steps | {rate:.1f} steps/s | ETA {eta:.0f}s | " +
            " ".join(f"{SHORT.get(k, k)} {m[k]:.4f}" for k in SCALARS[:3] if k in m))
    print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)
    return m

  def close(self):
    if self.tty:
      print(flush=True)


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def variant_name(hparams: dict, keys: Sequence[str]) -> str:
  """'dropout_rate=0.25,seed=1': a TensorBoard run name (and folder) for one variant."""
  return ",".join(f"{k}={hparams[k]}" for k in list(keys) + ["seed"] if k in hparams).replace("/", "_") or "run"


class Writer:
  """metrics.jsonl + TensorBoard + console lines for one training program.

  workdir None: console only. `variants` (sweeps): the TensorBoard run name and the global index of each row of the
  variant axis. Nothing is opened until the loop calls `start(step)` with the step it restored (0 for a new run):
  rows after that step are dropped from metrics.jsonl and TensorBoard, since the loop computes them again.
  """

  def __init__(self, workdir: str | None, *, variants: Sequence[tuple[str, int]] | None = None,
               tensorboard: bool = True, program: int | None = None):
    self.workdir, self.variants, self.program, self.tensorboard = workdir, variants, program, tensorboard
    self.log = self.tb = None

  def start(self, resume_step: int):
    """Opens the files, keeping the rows up to `resume_step` (the restored checkpoint's step)."""
    if self.workdir is None:
      return
    path = os.path.join(self.workdir, "metrics.jsonl")
    if resume_step or os.path.exists(path):
      keep = [r for r in read_jsonl(path) if r.get("program") != self.program or r["step"] <= resume_step]
      with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    self.log = open(path, "a")
    lineage = os.path.join(self.workdir, "lineage.jsonl")
    if os.path.exists(lineage):   # a search's events after the restored step are decided again
      keep = [e for e in read_jsonl(lineage) if e["step"] <= resume_step]
      with open(lineage, "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in keep)
    if self.tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      purge = {"purge_step": resume_step + 1} if resume_step else {}   # TensorBoard drops the recomputed steps
      names = [name for name, _ in self.variants] if self.variants else [""]
      self.tb = [SummaryWriter(os.path.join(self.workdir, "tb", n), flush_secs=10, **purge) for n in names]

  def _rows(self, row: dict) -> list[dict]:
    """One row per variant: list values split, scalars kept."""
    if not self.variants:
      return [row]
    return [{**{k: (v[j] if isinstance(v, list) else v) for k, v in row.items()}, "variant": index}
            for j, (_, index) in enumerate(self.variants)]

  def _write(self, row: dict, scalars: dict[str, str]):
    if self.log is None:
      return
    for j, r in enumerate(self._rows(row)):
      r = dict(r, program=self.program) if self.program is not None else r
      self.log.write(json.dumps(r) + "\n")
      if self.tb:
        for key, tag in scalars.items():
          if key in r and r[key] is not None and np.isfinite(r[key]):
            self.tb[j].add_scalar(tag, r[key], r["step"])
    self.log.flush()

  def train(self, row: dict):
    """{'step', 'epoch', 'loss', 'accuracy' (or 'rmse', 'mae', 'r2')} since the last train row (lists over variants
    in a sweep)."""
    self._write(dict(row, kind="train"), {m: f"train/{m}" for m in SCALARS})

  def epoch(self, row: dict, epochs: int):
    """{'epoch', 'step', 'train_loss', ..., 'val_*', 'test_*', 'epoch_seconds'}: file rows and the console line."""
    self._write(dict(row, kind="epoch"), {f"{s}_{m}": f"{s}/{m}" for s in ("val", "test") for m in SCALARS} |
                {f"train_{m}": f"epoch/train_{m}" for m in SCALARS})
    print(epoch_line(row, epochs), flush=True)

  def events(self, events: Sequence[dict]):
    """A search's decisions (jcnn.sweep.search): lineage.jsonl rows (variant numbers as in variants.jsonl) and
    TensorBoard marks: `search/exploited_from` (the source variant) at each PBT exploit in the target's run,
    `search/stopped` = 1 at the rung where halving stopped a variant."""
    if self.workdir is None or not events:
      return
    index = [i for _, i in self.variants] if self.variants else None
    glob = (lambda j: index[j]) if index else (lambda j: j)
    with open(os.path.join(self.workdir, "lineage.jsonl"), "a") as f:
      for e in events:
        e = dict(e)
        for k in ("target", "source"):
          if k in e:
            e[k] = glob(e[k])
        for k in ("kept", "stopped"):
          if k in e:
            e[k] = [glob(j) for j in e[k]]
        f.write(json.dumps(e) + "\n")
    for e in events:
      if not self.tb:
        break
      if e["event"] == "exploit":
        self.tb[e["target"]].add_scalar("search/exploited_from", glob(e["source"]), e["step"])
      for j in e.get("stopped", ()):
        self.tb[j].add_scalar("search/stopped", 1, e["step"])

  def close(self):
    if self.log:
      self.log.close()
    for w in self.tb or ():
      w.close()


def epoch_line(row: dict, epochs: int) -> str:
  """The console line of an epoch: the run's numbers, or a sweep's mean (min-max) over its healthy variants."""
  def fmt(key):
    v = row[key]
    if not isinstance(v, list):
      return f"{v:.4f}"
    ok = [x for x, f in zip(v, row.get("failed_at", [-1] * len(v))) if f < 0] or [float("nan")]
    return f"{np.mean(ok):.4f} ({min(ok):.4f}-{max(ok):.4f})"
  judged = "accuracy" if "train_accuracy" in row else "rmse"   # the task's metric (jcnn.train.tasks.primary)
  parts = [f"train loss {fmt('train_loss')} {SHORT.get(judged, judged)} {fmt(f'train_{judged}')}"]
  parts += [f"{s} {SHORT.get(judged, judged)} {fmt(f'{s}_{judged}')}" for s in ("val", "test") if f"{s}_{judged}" in row]
  parts += [f"test r2 {fmt('test_r2')}"] if "test_r2" in row else []
  failed = sum(f >= 0 for f in row["failed_at"]) if isinstance(row.get("failed_at"), list) else 0
  return (f"epoch {row['epoch']}/{epochs}: " + " | ".join(parts) + (f" | {failed} failed" if failed else "") +
          f" | {row['epoch_seconds']:.1f}s")


# ----------------------------------------------------------------------------------------------------------------
# Final files.
def write_json(path: str, obj: Any):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=float)
  os.replace(tmp, path)


def write_run(workdir: str, results: dict):
  """results.json and curves.png of a single run (results.json last: it marks the run finished)."""
  try:
    from jcnn.train import plots  # pylint: disable=g-import-not-at-top  (matplotlib only when plotting)
    rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r.get("kind") == "epoch"]
    plots.plot_learning_curves(rows, os.path.join(workdir, "curves.png"))
  except ImportError:
    pass
  write_json(os.path.join(workdir, "results.json"), results)


def write_sweep(workdir: str, results: list[dict], rows: list[dict], table: str, keys: Sequence[str]):
  """variants.jsonl, summary.{md,csv,json} (summary.json last: it marks the sweep finished) and PNG plots."""
  with open(os.path.join(workdir, "variants.jsonl"), "w") as f:
    for r in results:
      f.write(json.dumps({k: r[k] for k in ("hparams", "failed", "failed_at", "final", "curves", "compile_seconds",
                                            "epochs_trained", "final_hparams") if k in r}, default=float) + "\n")
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "summary.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  try:
    from jcnn.train import plots  # pylint: disable=g-import-not-at-top
    plots.plot_sweep(results, rows, keys, workdir)
  except ImportError:
    pass
  write_json(os.path.join(workdir, "summary.json"), rows)


def tb_images(logdir: str, png_paths: Sequence[str], step: int = 0) -> list[str]:
  """The given PNG files as TensorBoard images (tag `inspect/<file name>`) in logdir; returns the tags."""
  import matplotlib.image as mpimg  # pylint: disable=g-import-not-at-top
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  tags = []
  with SummaryWriter(logdir) as w:
    for p in png_paths:
      img = mpimg.imread(p)                                  # [H, W, 3 or 4] floats in [0, 1]
      tag = "inspect/" + os.path.splitext(os.path.basename(p))[0]
      w.add_image(tag, np.asarray(img)[..., :3], step, dataformats="HWC")
      tags.append(tag)
  return tags
