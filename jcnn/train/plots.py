"""What a run and a sweep draw when they finish: learning curves and sweep plots as PNG files (matplotlib, Agg backend:
no display needed). Called by jcnn.train.writers; imports nothing of jcnn."""
from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def metric_of(rows) -> str:
  """'accuracy', or 'rmse' for a regression's rows."""
  return "rmse" if rows and any(k.endswith("_rmse") or k.endswith("_rmse_mean") for k in rows[0]) else "accuracy"


def plot_learning_curves(rows: list[dict], out_path: str) -> str:
  """Loss and accuracy (regression: RMSE in the target's units) per epoch (train, val, test) from a run's epoch rows
  (metrics.jsonl's `kind: epoch` rows)."""
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  epochs = [r["epoch"] for r in rows]
  metric = metric_of(rows)
  for split, style in (("train", "-o"), ("val", "--s"), ("test", ":^")):
    if rows and f"{split}_loss" in rows[0]:
      ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], style, label=split)
      ax_acc.plot(epochs, [r[f"{split}_{metric}"] for r in rows], style, label=split)
  if metric == "rmse" and rows:
    ax_loss.set_yscale("log")
    ax_acc.set_yscale("log")
  for ax, name in ((ax_loss, "loss"), (ax_acc, metric)):
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:   # a run with no epoch rows yet has nothing to label
      ax.legend()
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path


def plot_sweep(results: list[dict], rows: list[dict], keys, workdir: str) -> list[str]:
  """accuracy_vs_<axis>.png (regression: rmse_vs_<axis>.png; mean ± std over seeds, one line per value of the other
  axes) and curves.png (test accuracy or RMSE per epoch, every variant, coloured by grid point)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  paths = []
  metric = metric_of(rows)
  for axis in keys:
    others = [k for k in keys if k != axis]
    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
      lines.setdefault(tuple(r[k] for k in others), []).append(r)
    for label, rs in lines.items():
      xs = [r[axis] for r in rs]
      numeric = all(isinstance(x, (int, float)) for x in xs)
      pos = xs if numeric else list(range(len(xs)))
      ax.errorbar(pos, [r[f"test_{metric}_mean"] for r in rs], yerr=[r[f"test_{metric}_std"] for r in rs],
                  fmt="-o", capsize=4, label=", ".join(f"{k}={v}" for k, v in zip(others, label)) or None)
      if not numeric:
        ax.set_xticks(pos, [str(x) for x in xs])
      elif axis in ("init_scale", "learning_rate", "weight_decay", "l2") and min(xs) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if others:
      ax.legend(fontsize=7)
    fig.tight_layout()
    path = f"{workdir}/{metric}_vs_{axis}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  fig, ax = plt.subplots(figsize=(7, 4))
  points = sorted({tuple(str(r["hparams"][k]) for k in keys) for r in results})
  colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(points), 1)))
  labelled = set()
  split = "test" if all(f"test_{metric}" in e for r in results for e in r["curves"]) else "val"   # searches: val
  for r in results:
    p = tuple(str(r["hparams"][k]) for k in keys)
    c = colors[points.index(p)]
    lab = ", ".join(f"{k}={v}" for k, v in zip(keys, p)) if p not in labelled else None
    labelled.add(p)
    ax.plot([e["epoch"] for e in r["curves"]], [e[f"{split}_{metric}"] for e in r["curves"]], marker="o", color=c,
            alpha=0.7, label=lab, linestyle="--" if r["failed"] else "-")
  if metric == "rmse":
    ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.set_ylabel(f"{split} {metric}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(f"{workdir}/curves.png", dpi=100)
  plt.close(fig)
  return paths + [f"{workdir}/curves.png"]
