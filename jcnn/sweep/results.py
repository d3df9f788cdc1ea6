"""Sweep results: per-variant rows grouped over seeds into mean ± std, ranked on validation accuracy when there is a
validation split, and a markdown table."""
from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "train_accuracy", "train_loss")


def aggregate(results: list[dict], keys: Sequence[str]) -> list[dict]:
  """Groups variants by everything but the seed; mean ± std (ddof=1 where n > 1) of the final metrics; `rank` 1 is the
  best mean val accuracy (test accuracy without a validation split). Failed variants are counted in `failed` and left
  out of the statistics."""
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
    rows.append(row)
  by = "val_accuracy_mean" if any("val_accuracy_mean" in r for r in rows) else "test_accuracy_mean"
  order = sorted(range(len(rows)), key=lambda i: -np.nan_to_num(rows[i].get(by, np.nan), nan=-1.0))
  for rank, i in enumerate(order, 1):
    rows[i]["rank"] = rank
  return rows


def markdown_table(rows: list[dict], keys: Sequence[str]) -> str:
  """Best first (by `rank`)."""
  splits = [s for s in ("val", "test", "train") if f"{s}_accuracy_mean" in rows[0]]
  head = "| rank | " + " | ".join(list(keys) + [f"{s} accuracy" for s in splits] + ["test loss", "seeds",
                                                                                    "failed"]) + " |"
  lines = [head, "|" + "---|" * (len(keys) + len(splits) + 4)]
  for r in sorted(rows, key=lambda r: r["rank"]):
    cells = [str(r["rank"])] + [str(r[k]) for k in keys]
    cells += [f"{r[f'{s}_accuracy_mean']:.4f} ± {r[f'{s}_accuracy_std']:.4f}" for s in splits]
    cells += [f"{r['test_loss_mean']:.4f} ± {r['test_loss_std']:.4f}", str(r["seeds"]),
              str(r["failed"]) if not r["failed"] else f"**{r['failed']}**"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
