"""Sweep results: per-variant rows grouped over seeds into mean ± std, ranked on the task's metric (accuracy, or RMSE
for regression) on the validation split when there is one, else the test split; and a markdown table."""
from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = tuple(f"{s}_{m}" for s in ("val", "test", "train") for m in ("accuracy", "loss", "rmse", "mae", "r2"))


def judged(rows_or_finals: Sequence[dict]) -> str:
  """The metric a sweep is ranked by: 'rmse' for regression results, else 'accuracy'."""
  return "rmse" if any(any(k.endswith("_rmse") or k.endswith("_rmse_mean") for k in r) for r in rows_or_finals) \
      else "accuracy"


def steps_to(curves: Sequence[dict], key: str, tolerance: float) -> float:
  """The first epoch row's step at which `key` reaches `tolerance` (RMSE at or below, accuracy at or above); NaN if
  it never does."""
  below = key.endswith(("_rmse", "_mae", "_loss"))
  for e in curves:
    v = e.get(key)
    if v is not None and np.isfinite(v) and (v <= tolerance if below else v >= tolerance):
      return float(e["step"])
  return float("nan")


def aggregate(results: list[dict], keys: Sequence[str], tolerance: float = 0.0) -> list[dict]:
  """Groups variants by everything but the seed; mean ± std (ddof=1 where n > 1) of the final metrics; `rank` 1 is the
  best mean val accuracy (lowest val RMSE for regression; the test split's without a validation split). Failed
  variants are counted in `failed` and left out of the statistics. `tolerance` > 0 adds `steps_to_mean` / `_std` over
  the seeds that reached it (`reached`: how many) of the ranking metric reaching it."""
  metric = judged([r["final"] for r in results])
  split = "val" if any(f"val_{metric}" in r["final"] for r in results) else "test"
  groups: dict[tuple, list[dict]] = {}
  for r in results:
    groups.setdefault(tuple(r["hparams"][k] for k in keys), []).append(r)
  rows = []
  for point, rs in groups.items():
    ok = [r for r in rs if not r["failed"]]
    row = dict(zip(keys, point), seeds=len(rs), failed=len(rs) - len(ok))
    for m in METRICS:
      vals = np.asarray([r["final"][m] for r in ok if m in r["final"]], np.float64)
      if len(vals) or any(m in r["final"] for r in rs):
        row[f"{m}_mean"] = float(vals.mean()) if len(vals) else float("nan")
        row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    if any("epochs_trained" in r for r in rs):   # successive halving: how far the search let it train
      row["epochs_trained"] = float(np.mean([r["epochs_trained"] for r in rs]))
    if tolerance > 0:
      steps = np.asarray([steps_to(r.get("curves", []), f"{split}_{metric}", tolerance) for r in ok])
      steps = steps[np.isfinite(steps)]
      row.update(steps_to_mean=float(steps.mean()) if len(steps) else float("nan"),
                 steps_to_std=float(steps.std(ddof=1)) if len(steps) > 1 else 0.0, reached=len(steps))
    rows.append(row)
  by, sign = f"{split}_{metric}_mean", (1.0 if metric == "rmse" else -1.0)
  value = lambda i: rows[i].get(by, np.nan)
  order = sorted(range(len(rows)), key=lambda i: np.inf if np.isnan(value(i)) else sign * value(i))   # NaN: last
  for rank, i in enumerate(order, 1):
    rows[i]["rank"] = rank
  return rows


def markdown_table(rows: list[dict], keys: Sequence[str], tolerance: float = 0.0) -> str:
  """Best first (by `rank`)."""
  metric = judged(rows)
  splits = [s for s in ("val", "test", "train") if f"{s}_{metric}_mean" in rows[0]]
  extra = [f"test {m}" for m in ("mae", "r2") if f"test_{m}_mean" in rows[0]]
  steps = [f"steps to {'RMSE ≤' if metric == 'rmse' else 'accuracy ≥'} {tolerance:g}"] if "steps_to_mean" in rows[0] \
      else []
  trained = ["epochs trained"] if "epochs_trained" in rows[0] else []
  head = "| rank | " + " | ".join(list(keys) + [f"{s} {metric}" for s in splits] + extra + ["test loss"] + steps +
                                  trained + ["seeds", "failed"]) + " |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  pm = lambda r, k: f"{r[f'{k}_mean']:.4f} ± {r[f'{k}_std']:.4f}"
  for r in sorted(rows, key=lambda r: r["rank"]):
    cells = [str(r["rank"])] + [str(r[k]) for k in keys]
    cells += [pm(r, f"{s}_{metric}") for s in splits] + [pm(r, f"test_{m}") for m in ("mae", "r2")
                                                         if f"test_{m}_mean" in r]
    cells += [pm(r, "test_loss")]
    if steps:
      cells += [(f"{r['steps_to_mean']:.0f} ± {r['steps_to_std']:.0f}" + (f" ({r['reached']} of {r['seeds']})"
                                                                         if r["reached"] < r["seeds"] else ""))
                if r["reached"] else "never"]
    cells += [f"{r['epochs_trained']:g}"] if trained else []
    cells += [str(r["seeds"]), str(r["failed"]) if not r["failed"] else f"**{r['failed']}**"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
