"""Plots as PNG files (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_learning_curves(metrics_path: str, out_path: str) -> str:
  """Loss and accuracy per epoch (train, val, test) from a run's metrics.jsonl."""
  rows = [r for r in read_jsonl(metrics_path) if r.get("kind") == "epoch"]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  epochs = [r["epoch"] for r in rows]
  for split, style in (("train", "-o"), ("val", "--s"), ("test", ":^")):
    if rows and f"{split}_loss" in rows[0]:
      ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], style, label=split)
      ax_acc.plot(epochs, [r[f"{split}_accuracy"] for r in rows], style, label=split)
  for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path
