"""jcnn.train.tasks: every loss and metric of the three tasks against numpy written out by hand, and the config's
task checks (a loss or target transform that does not fit the task)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn import config as config_lib
from jcnn.errors import ConfigError
from jcnn.train import step as step_lib, tasks

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 3)).astype(np.float32)          # [B, K]
LABELS = np.array([0, 2, 1, 1, 0, 2], np.int32)              # [B]
LOGIT1 = RNG.normal(size=(6, 1)).astype(np.float32)          # [B, 1] binary
BITS = np.array([1, 0, 1, 1, 0, 0], np.int32)
OUT = RNG.normal(size=(6, 2)).astype(np.float32) * 2         # [B, T] regression outputs (transformed units)
Y = RNG.normal(size=(6, 2)).astype(np.float32)               # [B, T] targets (transformed units)
MASK = np.array([1, 1, 1, 0, 1, 0], bool)


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def sigmoid(z):
  return 1 / (1 + np.exp(-z))


def huber(e, d):
  a = np.abs(e)
  return np.where(a <= d, 0.5 * e ** 2, d * (a - 0.5 * d))


BY_HAND = {
    ("classify", "cross_entropy"): lambda: -np.log(softmax(LOGITS)[np.arange(6), LABELS]),
    ("classify", "mse"): lambda: ((softmax(LOGITS) - np.eye(3)[LABELS]) ** 2).mean(-1),
    ("binary", "cross_entropy"): lambda: -(BITS * np.log(sigmoid(LOGIT1[:, 0])) +
                                           (1 - BITS) * np.log(1 - sigmoid(LOGIT1[:, 0]))),
    ("binary", "mse"): lambda: (sigmoid(LOGIT1[:, 0]) - BITS) ** 2,
    ("regress", "mse"): lambda: ((OUT - Y) ** 2).mean(-1),
    ("regress", "mae"): lambda: np.abs(OUT - Y).mean(-1),
    ("regress", "huber"): lambda: huber(OUT - Y, 0.7).mean(-1),
}
ARGS = {"classify": (LOGITS, LABELS), "binary": (LOGIT1, BITS), "regress": (OUT, Y)}


@pytest.mark.parametrize("task,loss", list(BY_HAND))
def test_every_loss_by_hand(task, loss):
  out, y = ARGS[task]
  got = tasks.per_example_loss(loss, jnp.asarray(out), jnp.asarray(y), task, huber_delta=0.7)
  np.testing.assert_allclose(np.asarray(got), BY_HAND[(task, loss)](), rtol=1e-5, atol=1e-6)


def test_accuracy_sums_and_means_by_hand():
  s = tasks.sums("classify", jnp.ones(6), jnp.asarray(LOGITS), jnp.asarray(LABELS), mask=jnp.asarray(MASK))
  hit = (LOGITS.argmax(-1) == LABELS) & MASK
  assert float(s["correct"]) == hit.sum() and float(s["count"]) == 4 and float(s["loss_sum"]) == 4
  assert tasks.means(s)["accuracy"] == pytest.approx(hit.sum() / 4)
  b = tasks.sums("binary", jnp.zeros(6), jnp.asarray(LOGIT1), jnp.asarray(BITS))
  assert float(b["correct"]) == ((LOGIT1[:, 0] > 0) == BITS).sum()


def test_regression_metrics_in_the_target_units_by_hand():
  # Targets z-scored with mean (10, -3) and std (4, 0.5): metrics are of the values transformed back.
  target = {"method": "standardize", "scale": 1.0, "shift": [10.0, -3.0], "div": [4.0, 0.5], "center": [9.0, -2.0]}
  losses = tasks.per_example_loss("mse", jnp.asarray(OUT), jnp.asarray(Y), "regress")
  s = tasks.sums("regress", losses, jnp.asarray(OUT), jnp.asarray(Y), target, jnp.asarray(MASK))
  pred, true = OUT * [4.0, 0.5] + [10.0, -3.0], Y * [4.0, 0.5] + [10.0, -3.0]     # [B, T] in the target's units
  p, t = pred[MASK], true[MASK]
  m = tasks.means({k: np.asarray(v) for k, v in s.items()})
  assert m["loss"] == pytest.approx(((OUT - Y) ** 2).mean(-1)[MASK].mean(), rel=1e-5)   # the optimised loss
  assert m["rmse"] == pytest.approx(np.sqrt(((p - t) ** 2).mean()), rel=1e-5)
  assert m["mae"] == pytest.approx(np.abs(p - t).mean(), rel=1e-5)
  r2 = 1 - ((p - t) ** 2).sum() / ((t - t.mean(0)) ** 2).sum()                           # pooled over the 2 values
  assert m["r2"] == pytest.approx(r2, rel=1e-5)


def test_sums_add_over_batches_and_stack_over_variants():
  """Sums of two halves equal the sums of the whole; a [V] stack of sums gives [V] metrics."""
  args = lambda sl: (tasks.per_example_loss("mae", jnp.asarray(OUT[sl]), jnp.asarray(Y[sl]), "regress"),
                     jnp.asarray(OUT[sl]), jnp.asarray(Y[sl]))
  whole = tasks.sums("regress", *args(slice(None)))
  halves = [tasks.sums("regress", *args(slice(0, 3))), tasks.sums("regress", *args(slice(3, 6)))]
  added = {k: halves[0][k] + halves[1][k] for k in whole}
  for k in whole:
    np.testing.assert_allclose(np.asarray(added[k]), np.asarray(whole[k]), rtol=1e-5)
  stacked = tasks.means({k: np.stack([np.asarray(h[k]) for h in halves]) for k in whole})
  assert stacked["rmse"].shape == (2,)
  assert stacked["rmse"][1] == pytest.approx(np.sqrt(((OUT[3:] - Y[3:]) ** 2).mean()), rel=1e-5)


def test_predictions_per_task():
  p = np.asarray(tasks.predictions("binary", jnp.asarray(LOGIT1)))
  np.testing.assert_allclose(p[:, 1], sigmoid(LOGIT1[:, 0]), rtol=1e-6)
  np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
  target = {"method": "log", "scale": 1.0}
  np.testing.assert_allclose(np.asarray(tasks.predictions("regress", jnp.asarray(OUT), target)), np.exp(OUT), rtol=1e-5)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.Dense(2)(x)


def test_train_step_reports_regression_sums():
  """The step's metrics (in chunks of 2) are the sums of its batch: one step's RMSE of a linear model, by hand."""
  x = jnp.asarray(RNG.normal(size=(6, 3)), jnp.float32)
  tx = optax.sgd(0.0)
  state = step_lib.init_state(Linear(), tx, jax.random.key(0), x)
  step = jax.jit(step_lib.make_train_step(Linear(), tx, "mse", task="regress", micro_batch=2))
  _, m = step(state, x, jnp.asarray(Y), jax.random.key(1))
  w = state.params["Dense_0"]
  pred = np.asarray(x) @ np.asarray(w["kernel"]) + np.asarray(w["bias"])
  got = tasks.means({k: np.asarray(v) for k, v in m.items()})
  assert got["rmse"] == pytest.approx(np.sqrt(((pred - Y) ** 2).mean()), rel=1e-5)
  assert got["loss"] == pytest.approx(((pred - Y) ** 2).mean(), rel=1e-5) and float(m["count"]) == 6


@pytest.mark.parametrize("fields,needle", [
    ({"train.task": "regress"}, "config.train.loss=cross_entropy does not fit config.train.task=regress"),
    ({"train.task": "classify", "train.loss": "huber"}, "set config.train.loss to one of cross_entropy, mse"),
    ({"data.target_preprocess": "standardize"}, "set config.data.target_preprocess=none"),
])
def test_config_refuses_a_loss_or_transform_that_does_not_fit_the_task(fields, needle):
  c = config_lib.base_config()
  for k, v in fields.items():
    section, key = k.split(".")
    c[section][key] = v
  with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
    config_lib.check_config(c)
