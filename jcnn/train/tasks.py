"""Tasks: what a network's outputs mean, and so its loss, its metrics and its predictions (config.train.task).

  classify  out [B, K] logits, labels [B] int: softmax cross-entropy (or mse of the softmax against one-hot);
            accuracy = argmax == label
  binary    out [B, 1] one logit, labels [B] in {0, 1}: sigmoid cross-entropy (or mse of the sigmoid);
            accuracy = (logit > 0) == label
  regress   out [B, T], targets [B, T] float (transformed by config.data.target_preprocess): mse | mae | huber on
            the transformed values (what the optimizer sees); RMSE, MAE and R² on predictions and targets transformed
            back into the target's own units

Metrics travel as sums, so they add across chunks, steps and batches and stack across variants:
  classify / binary  {loss_sum, correct, count}
  regress            {loss_sum, sq_err, abs_err, y_sum [T], y_sq [T], count}
where sq_err / abs_err sum over examples and target values, and y_sum / y_sq sum the targets minus the training
split's mean (`center` in the target statistics; it only keeps float32 sums exact). `means` turns sums into
    loss = loss_sum / count, accuracy = correct / count,
    rmse = sqrt(sq_err / (count T)), mae = abs_err / (count T),
    r2 = 1 - sq_err / sum_t (y_sq_t - y_sum_t² / count)    (pooled over the T target values; sklearn's
                                                            'variance_weighted' R²; the split's own mean)
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jcnn.config import LOSSES, TASK_LOSSES, TASK_METRICS, TASKS
from jcnn.data import preprocess
from jcnn.errors import ConfigError

METRICS = TASK_METRICS
HIGHER_IS_BETTER = ("accuracy", "r2")


def primary(task: str) -> str:
  """The metric a run is judged by: accuracy, or RMSE for regression."""
  return "rmse" if task == "regress" else "accuracy"


def per_example_loss(name: str, out: jax.Array, y: jax.Array, task: str = "classify",
                     huber_delta: float = 1.0, label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  """[B] losses. `out` [B, K] (classify), [B, 1] (binary) or [B, T] (regress; `y` [B, T]). `label_smoothing` eps
  (classify, cross_entropy; may be traced): the targets are (1 - eps) one-hot + eps / K (optax.smooth_labels)."""
  if task not in TASKS:
    raise ConfigError(f"unknown task {task!r}: set config.train.task to one of {', '.join(TASKS)}")
  if name not in TASK_LOSSES[task]:
    allowed = ", ".join(TASK_LOSSES[task])
    raise ConfigError(f"unknown loss {name!r} for task {task}: set config.train.loss to one of {allowed}"
                      if name not in LOSSES else
                      f"config.train.loss={name} does not fit config.train.task={task}: use one of {allowed}")
  smoothed = not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0)
  if smoothed and (task, name) != ("classify", "cross_entropy"):
    raise ConfigError(f"config.train.label_smoothing applies to task classify with loss cross_entropy, not {task} "
                      f"with {name}: set config.train.label_smoothing=0")
  if task == "classify":
    if name == "cross_entropy" and smoothed:
      onehot = jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)  # [B, K]
      return optax.softmax_cross_entropy(out, onehot * (1 - label_smoothing) + label_smoothing / out.shape[-1])
    if name == "cross_entropy":
      return optax.softmax_cross_entropy_with_integer_labels(out, y)
    onehot = jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)   # mse: the softmax against one-hot, as Keras' 'mse'
    return jnp.mean((jax.nn.softmax(out) - onehot) ** 2, axis=-1)
  if task == "binary":
    z, t = out[:, 0], y.astype(out.dtype)                         # [B]
    if name == "cross_entropy":
      return optax.sigmoid_binary_cross_entropy(z, t)
    return (jax.nn.sigmoid(z) - t) ** 2
  err = out - y                                                   # [B, T]
  if name == "mse":
    return jnp.mean(err ** 2, axis=-1)
  if name == "mae":
    return jnp.mean(jnp.abs(err), axis=-1)
  return jnp.mean(optax.huber_loss(out, y, delta=huber_delta), axis=-1)


def sums(task: str, losses: jax.Array, out: jax.Array, y: jax.Array, target: dict | None = None,
         mask: jax.Array | None = None) -> dict:
  """Metric sums over the examples (where `mask` is True). `losses` [B] from per_example_loss; `target`: the target
  statistics (regress), to transform predictions and targets back into the target's units."""
  m = jnp.ones(losses.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)   # [B]
  s = {"loss_sum": (losses * m).sum()}
  if task == "regress":
    target = target or {"method": "none", "scale": 1.0}
    pred, true = preprocess.inverse(out, target, xp=jnp), preprocess.inverse(y, target, xp=jnp)   # [B, T] units
    err = pred - true
    c = true - jnp.asarray(target.get("center", 0.0), jnp.float32)
    s.update(sq_err=((err ** 2).sum(-1) * m).sum(), abs_err=(jnp.abs(err).sum(-1) * m).sum(),
             y_sum=(c * m[:, None]).sum(0), y_sq=(c ** 2 * m[:, None]).sum(0))
  else:
    hit = out.argmax(-1) == y if task == "classify" else (out[:, 0] > 0) == (y > 0)
    s["correct"] = (hit * m).sum()
  s["count"] = m.sum()
  return s


def zero(task: str = "classify", target_dim: int = 1, shape: tuple = ()) -> dict:
  """Sums of no examples (`shape`: a leading variant axis)."""
  keys = ("loss_sum", "sq_err", "abs_err", "count") if task == "regress" else ("loss_sum", "correct", "count")
  out = {k: jnp.zeros(shape) for k in keys}
  if task == "regress":
    out.update(y_sum=jnp.zeros(shape + (target_dim,)), y_sq=jnp.zeros(shape + (target_dim,)))
  return out


def means(s: dict) -> dict[str, Any]:
  """Host sums (scalars, or [V] with a variant axis) -> the task's metrics as numpy values of the same shape."""
  s = {k: np.asarray(v, np.float64) for k, v in s.items()}
  count = np.maximum(s["count"], 1)
  out = {"loss": s["loss_sum"] / count}
  if "correct" in s:
    out["accuracy"] = s["correct"] / count
    return out
  t = s["y_sum"].shape[-1]
  out["rmse"] = np.sqrt(s["sq_err"] / (count * t))
  out["mae"] = s["abs_err"] / (count * t)
  sst = (s["y_sq"] - s["y_sum"] ** 2 / count[..., None]).sum(-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    out["r2"] = np.where(sst > 0, 1 - s["sq_err"] / np.where(sst > 0, sst, 1), np.nan)
  return out


def predictions(task: str, out: jax.Array, target: dict | None = None) -> jax.Array:
  """What a trained model answers: class probabilities [B, K] (binary: [B, 2], P(0) and P(1)), or values [B, T] in
  the target's units. Traceable."""
  if task == "classify":
    return jax.nn.softmax(out, axis=-1)
  if task == "binary":
    p = jax.nn.sigmoid(out[:, :1])
    return jnp.concatenate([1 - p, p], axis=-1)
  return preprocess.inverse(out, target or {"method": "none", "scale": 1.0}, xp=jnp)
