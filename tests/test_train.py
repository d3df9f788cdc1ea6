"""jcnn.train: optimizers, schedules, losses, the l2 penalty, pure steps, evaluation, and every experiment end to end."""
import importlib
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT

from jcnn import data as data_lib
from jcnn import train
from jcnn import config as config_lib
from jcnn.data import sources
from jcnn.errors import ConfigError
from jcnn.experiment import run_sweep, train_and_evaluate
from jcnn.models.convnet import ConvNet
from jcnn.nn import blocks, layers
from jcnn.train import writers


class Linear(nn.Module):
  """Flatten -> Dense: the smallest classifier, so each optimizer compiles quickly."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    return layers.Dense(10, name="head")(layers.Flatten()(x))


@pytest.fixture(scope="module")
def batch():
  x = jax.random.normal(jax.random.key(0), (32, 4, 4, 1))
  y = jax.random.randint(jax.random.key(1), (32,), 0, 10)
  return x, y


# ----------------------------------------------------------------------------------------------------------------
# Optimizers and schedules.
def _hand_update(name, lr, g, p, state, t, mu=0.9, rho=0.9, wd=0.1):
  """One step of each update rule, written out in numpy (optax's conventions), at step t = 1, 2, ...
  Returns (new params, new state); state is a dict of numpy arrays (zeros at t = 1)."""
  m, v = state.get("m", np.zeros_like(p)), state.get("v", np.zeros_like(p))
  if name == "sgd":
    return p - lr * g, {}
  if name == "momentum":                         # heavy ball: m <- mu m + g; p <- p - lr m
    m = mu * m + g
    return p - lr * m, {"m": m}
  if name == "nesterov":                         # m <- mu m + g; p <- p - lr (g + mu m)
    m = mu * m + g
    return p - lr * (g + mu * m), {"m": m}
  if name == "rmsprop":                          # Keras' eps = 1e-7, inside the square root as optax puts it
    v = rho * v + (1 - rho) * g ** 2
    return p - lr * g / np.sqrt(v + 1e-7), {"v": v}
  b1, b2, eps = 0.9, 0.999, 1e-8                 # adam / adamw: bias-corrected moments
  m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
  step = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  if name == "adamw":                            # decoupled weight decay on the parameters before the step
    step = step + wd * p
  return p - lr * step, {"m": m, "v": v}


@pytest.mark.parametrize("name,lr", [("sgd", 0.5), ("momentum", 0.1), ("nesterov", 0.1), ("rmsprop", 0.01),
                                     ("adam", 0.05), ("adamw", 0.05)])
def test_optimizer_two_steps_match_the_update_rule_by_hand(batch, name, lr):
  """Two train steps of each optimizer against its rule in numpy, on the gradients of a cross-entropy written out
  here: two steps, so momentum's and nesterov's look-ahead differ, and adamw's decay (0.1) shows against adam."""
  x, y = batch
  model = Linear()
  tx = train.make_optimizer({"name": name, "learning_rate": lr, "weight_decay": 0.1})
  state = train.init_state(model, tx, jax.random.key(0), x)
  step = jax.jit(train.make_train_step(model, tx))
  flat = lambda q: np.concatenate([np.asarray(q["head"]["kernel"]).ravel(), np.asarray(q["head"]["bias"])])

  def hand_grad(w):                              # d mean(-log softmax(x W + b)[y]) / d(W, b), in numpy
    xf = np.asarray(x).reshape(len(y), -1).astype(np.float64)
    k, b = w[:-10].reshape(xf.shape[1], 10), w[-10:]
    z = xf @ k + b
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    prob[np.arange(len(y)), np.asarray(y)] -= 1
    return np.concatenate([(xf.T @ prob).ravel(), prob.sum(0)]) / len(y)

  w, hand_state, history = flat(state.params).astype(np.float64), {}, []
  for t in (1, 2):
    state, _ = step(state, x, y, jax.random.key(2))
    w, hand_state = _hand_update(name, lr, hand_grad(w), w, hand_state, t)
    history.append(w)
    np.testing.assert_allclose(flat(state.params), w, rtol=2e-4, atol=2e-6, err_msg=f"step {t}")
  assert int(state.step) == 2
  assert abs(float(train.learning_rate_of(state.opt_state)) - lr) < 1e-7
  # The check can tell the rules apart: the neighbouring rule gives other parameters after two steps.
  other = {"sgd": "momentum", "momentum": "nesterov", "nesterov": "momentum", "rmsprop": "adam", "adam": "adamw",
           "adamw": "adam"}[name]
  w2, st2 = flat(train.init_state(model, tx, jax.random.key(0), x).params).astype(np.float64), {}
  for t in (1, 2):
    w2, st2 = _hand_update(other, lr, hand_grad(w2), w2, st2, t)
  assert not np.allclose(w2, history[-1], rtol=2e-4, atol=2e-6), other


def test_unknown_optimizer_and_schedule():
  with pytest.raises(ConfigError, match="unknown optimizer 'adamm'"):
    train.make_optimizer({"name": "adamm", "learning_rate": 0.1})
  with pytest.raises(ConfigError, match="unknown schedule"):
    train.make_optimizer({"name": "sgd", "learning_rate": 0.1, "schedule": "linear"})


def _multipliers(cfg, total_steps, n):
  """The schedule's multiplier at steps 0..n-1: SGD with learning rate 1 on a gradient of 1 updates by -mult(step)."""
  tx = train.make_optimizer(dict(cfg, name="sgd", learning_rate=1.0), total_steps)
  params = {"w": jnp.zeros(())}

  @jax.jit
  def run(opt_state):
    def body(s, _):
      updates, s = tx.update({"w": jnp.ones(())}, s, params)
      return s, -updates["w"]
    return jax.lax.scan(body, opt_state, None, length=n)[1]

  return np.asarray(run(tx.init(params)))


def test_step_schedule_boundaries():
  m = _multipliers({"schedule": "step", "boundaries": (0.5, 0.75), "decay_factor": 0.1}, 100, 101)
  # Boundaries at 50% and 75% of 100 steps: x1 before step 50, x0.1 from step 50, x0.01 from step 75.
  for step, want in ((0, 1.0), (49, 1.0), (50, 0.1), (74, 0.1), (75, 0.01), (100, 0.01)):
    assert m[step] == pytest.approx(want, rel=1e-5), step


def test_cosine_schedules():
  m = _multipliers({"schedule": "cosine"}, 100, 101)
  for step in (0, 25, 50, 90, 100):
    assert m[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * step / 100)), abs=1e-6), step
  assert m[100] == pytest.approx(0.0, abs=1e-6) and m[0] == pytest.approx(1.0)
  w = _multipliers({"schedule": "warmup_cosine", "warmup_fraction": 0.1}, 100, 101)
  # 10 warm-up steps from 0 to 1, then a cosine from 1 at step 10 to 0 at step 100.
  assert w[0] == pytest.approx(0.0, abs=1e-7) and w[5] == pytest.approx(0.5) and w[10] == pytest.approx(1.0)
  assert w[55] == pytest.approx(0.5, abs=1e-5) and w[100] == pytest.approx(0.0, abs=1e-6)
  c = _multipliers({"schedule": "constant"}, 100, 3)
  np.testing.assert_array_equal(c, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_set_hyperparam_round_trip(schedule):
  tx = train.make_optimizer({"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.01, "schedule": schedule}, 10)
  params = {"w": jnp.ones(3)}
  s = tx.init(params)
  assert float(train.learning_rate_of(s)) == pytest.approx(0.1)
  s2 = train.set_hyperparam(s, "learning_rate", 0.25)
  assert float(train.learning_rate_of(s2)) == 0.25 and float(train.learning_rate_of(s)) == pytest.approx(0.1)
  assert jax.tree.structure(s2) == jax.tree.structure(s)       # same tree: fits a compiled step
  s3 = train.set_hyperparam(s2, "weight_decay", 0.5)
  inner = s3 if hasattr(s3, "hyperparams") else s3[0]
  assert float(inner.hyperparams["weight_decay"]) == 0.5
  # The new rate is the one used: SGD's update is -lr * g.
  sgd = train.make_optimizer({"name": "sgd", "learning_rate": 0.1})
  st = train.set_hyperparam(sgd.init(params), "learning_rate", 0.3)
  updates, _ = sgd.update({"w": jnp.full(3, 2.0)}, st, params)
  np.testing.assert_allclose(updates["w"], -0.6, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Losses and the l2 penalty.
def test_losses_by_hand():
  logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([2, 0])
  # Cross-entropy = log(sum exp(z)) - z_label.
  ce = train.per_example_loss("cross_entropy", logits, labels)
  np.testing.assert_allclose(ce, [math.log(math.e + math.e ** 2 + math.e ** 3) - 3, math.log(3)], rtol=1e-6)
  # mse: mean over classes of (softmax - onehot)^2. Row 2: p = 1/3 each -> ((2/3)^2 + 2 (1/3)^2) / 3 = 2/9.
  z = math.e + math.e ** 2 + math.e ** 3
  p = [math.e / z, math.e ** 2 / z, math.e ** 3 / z]
  row1 = (p[0] ** 2 + p[1] ** 2 + (p[2] - 1) ** 2) / 3
  np.testing.assert_allclose(train.per_example_loss("mse", logits, labels), [row1, 2 / 9], rtol=1e-6)
  with pytest.raises(ConfigError, match="unknown loss"):
    train.per_example_loss("hinge", logits, labels)
  with pytest.raises(ConfigError, match="unknown loss"):
    train.make_train_step(Linear(), optax.sgd(0.1), loss="hinge")


def test_l2_penalty_kernels_only():
  params = {"conv1": {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]]), "bias": jnp.array([10.0, 20.0])},
            "act1": {"slope": jnp.array(5.0)},
            "head": {"kernel": jnp.array([4.0]), "bias": jnp.array([7.0])}}
  assert float(train.l2_penalty(params)) == pytest.approx(0.5 * (1 + 4 + 9 + 0.25 + 16))
  assert float(train.l2_penalty({"b": {"bias": jnp.ones(3)}})) == 0.0
  v = jax.jit(ConvNet(activation="prelu").init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  by_hand = 0.5 * sum(float(jnp.sum(v[k]["kernel"] ** 2)) for k in ("conv1", "conv2", "conv3", "dense1", "head"))
  assert float(train.l2_penalty(v)) == pytest.approx(by_hand, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Pure steps.
TINY = dict(features=(4,), dense=8)   # conv 3x3x4 -> flatten -> dense 8 -> head: compiles in a moment


@pytest.fixture(scope="module")
def tiny():
  x = jax.random.normal(jax.random.key(0), (16, 6, 6, 1))
  y = jax.random.randint(jax.random.key(1), (16,), 0, 10)
  return x, y


def _step_and_state(dropout, l2=0.0, lr=0.1):
  model = ConvNet(dropout_rate=dropout, **TINY)
  tx = train.make_optimizer({"name": "sgd", "learning_rate": lr})
  return model, jax.jit(train.make_train_step(model, tx, l2=l2)), tx


def test_train_step_deterministic_and_keys_per_step(tiny):
  x, y = tiny
  model, step, tx = _step_and_state(0.5)
  state = train.init_state(model, tx, jax.random.key(3), x)
  a, ma = step(state, x, y, jax.random.key(4))
  b, mb = step(state, x, y, jax.random.key(4))
  jax.tree.map(np.testing.assert_array_equal, (a, ma), (b, mb))         # same rng, same everything
  c, mc = step(state, x, y, jax.random.key(5))
  assert float(ma["loss_sum"]) != float(mc["loss_sum"])                 # another rng, another dropout mask
  assert int(a.step) == 1
  # The dropout key is fold_in(rng, step): the same state at step 7 draws a different mask with the same rng.
  _, m7 = step(state.replace(step=jnp.int32(7)), x, y, jax.random.key(4))
  assert float(m7["loss_sum"]) != float(ma["loss_sum"])
  # Without dropout the step number does not matter, and metrics are the model's own.
  model0, step0, _ = _step_and_state(0.0)
  _, n0 = step0(state, x, y, jax.random.key(4))
  _, n7 = step0(state.replace(step=jnp.int32(7)), x, y, jax.random.key(4))
  assert float(n0["loss_sum"]) == float(n7["loss_sum"])
  logits = model0.apply({"params": state.params}, x)
  assert float(n0["count"]) == 16
  assert float(n0["correct"]) == float((logits.argmax(-1) == y).sum())
  np.testing.assert_allclose(n0["loss_sum"], optax.softmax_cross_entropy_with_integer_labels(logits, y).sum(),
                             rtol=1e-5)


def test_train_step_l2_gradient(tiny):
  x, y = tiny
  model, step_l2, tx = _step_and_state(0.0, l2=0.1, lr=1.0)
  _, step_0, _ = _step_and_state(0.0, l2=0.0, lr=1.0)
  state = train.init_state(model, tx, jax.random.key(3), x)
  a, _ = step_l2(state, x, y, jax.random.key(0))
  b, _ = step_0(state, x, y, jax.random.key(0))
  # d/dw of 0.1 * 0.5 * sum(w^2) is 0.1 * w: SGD with lr 1 moves kernels by a further -0.1 * w, biases not at all.
  for layer in ("conv1", "dense1", "head"):
    np.testing.assert_allclose(a.params[layer]["kernel"] - b.params[layer]["kernel"],
                               -0.1 * state.params[layer]["kernel"], atol=1e-6)
    np.testing.assert_array_equal(a.params[layer]["bias"], b.params[layer]["bias"])


def test_micro_batch_size_rule():
  auto64 = train.micro_batch_size(64)
  assert auto64 == (train.MICRO_BATCH_CPU if jax.default_backend() == "cpu" else 64)
  assert train.micro_batch_size(64, 0, batch_norm=True) == 64       # chunks would change BatchNorm's statistics
  assert train.micro_batch_size(64, 16) == 16
  assert train.micro_batch_size(100, 16) == 10                      # largest divisor of the batch not above 16
  assert train.micro_batch_size(97, 16) == 1                        # asked for: a prime batch leaves chunks of 1
  assert train.micro_batch_size(64, 128) == 64
  if jax.default_backend() == "cpu":
    assert train.micro_batch_size(97) == 97                         # automatic: never chunks smaller than 8
    assert train.micro_batch_size(100) == 10
  with pytest.raises(ConfigError, match="micro_batch must be >= 0"):
    train.micro_batch_size(64, -1)


def test_take_reads_row_i_inside_a_loop():
  tree = {"a": jnp.arange(12.0).reshape(4, 3), "b": jnp.arange(4)}
  rows = jax.jit(lambda t: jax.lax.map(lambda i: train.take(t, i), jnp.arange(4)))(tree)
  jax.tree.map(np.testing.assert_array_equal, rows, tree)


def _sgd_steps(model, micro_batch, x, y, steps=3, opt="rmsprop"):
  tx = train.make_optimizer({"name": opt, "learning_rate": 0.01})
  state = train.init_state(model, tx, jax.random.key(3), x)
  step = jax.jit(train.make_train_step(model, tx, micro_batch=micro_batch))
  ms = []
  for _ in range(steps):
    state, m = step(state, x, y, jax.random.key(4))
    ms.append(m)
  return state, ms


def test_chunked_step_equals_whole_batch():
  x = jax.random.normal(jax.random.key(0), (32, 6, 6, 1))
  y = jax.random.randint(jax.random.key(1), (32,), 0, 10)
  model = ConvNet(**TINY)
  a, ma = _sgd_steps(model, 8, x, y)       # 4 chunks of 8, gradients summed, one update
  b, mb = _sgd_steps(model, 32, x, y)      # the whole batch at once
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-6), a.params, b.params)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=2e-5), ma, mb)
  assert float(ma[0]["count"]) == 32


def test_chunked_step_dropout_key_per_chunk():
  x = jax.random.normal(jax.random.key(0), (32, 6, 6, 1))
  y = jax.random.randint(jax.random.key(1), (32,), 0, 10)
  model = ConvNet(dropout_rate=0.5, **TINY)
  tx = train.make_optimizer({"name": "sgd", "learning_rate": 0.1})
  state = train.init_state(model, tx, jax.random.key(3), x)
  _, m = jax.jit(train.make_train_step(model, tx, micro_batch=8))(state, x, y, jax.random.key(4))
  key = jax.random.fold_in(jax.random.key(4), 0)                   # the step's key: fold_in(rng, step 0)
  want = sum(optax.softmax_cross_entropy_with_integer_labels(model.apply(
      {"params": state.params}, x[8 * c:8 * c + 8], train=True, rngs={"dropout": jax.random.fold_in(key, c)}),
      y[8 * c:8 * c + 8]).sum() for c in range(4))
  np.testing.assert_allclose(m["loss_sum"], want, rtol=1e-5)


class TinyBN(nn.Module):
  """Conv -> BatchNorm -> ReLU -> Dense: the smallest model with batch statistics."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = blocks.ConvBlock(4, norm=blocks.BATCH_NORM, name="block")(x, train=train)   # [B, H, W, 4]
    return layers.Dense(10, name="head")(layers.Flatten()(x))


def test_batchnorm_chunks_only_when_asked():
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  y = jax.random.randint(jax.random.key(1), (16,), 0, 10)
  model = TinyBN()
  auto, _ = _sgd_steps(model, 0, x, y, steps=1, opt="sgd")
  whole, _ = _sgd_steps(model, 16, x, y, steps=1, opt="sgd")
  jax.tree.map(np.testing.assert_array_equal, (auto.params, auto.batch_stats), (whole.params, whole.batch_stats))
  # Asked for chunks of 8: each chunk normalises with its own statistics and the running averages update per chunk,
  # as two forward passes in a row would.
  ghost, _ = _sgd_steps(model, 8, x, y, steps=1, opt="sgd")
  init = train.init_state(model, train.make_optimizer({"name": "sgd", "learning_rate": 0.01}), jax.random.key(3), x)
  bs = init.batch_stats
  for c in range(2):
    _, upd = model.apply({"params": init.params, "batch_stats": bs}, x[8 * c:8 * c + 8], train=True,
                         mutable=["batch_stats"])
    bs = upd["batch_stats"]
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), ghost.batch_stats, bs)


def test_chunked_eval_is_exact_with_batchnorm():
  x = jax.random.normal(jax.random.key(0), (24, 8, 8, 3))
  y = jax.random.randint(jax.random.key(1), (24,), 0, 10)
  model = TinyBN()
  state, _ = _sgd_steps(model, 0, x, y, steps=2, opt="sgd")        # running statistics away from their init
  mask = jnp.arange(24) < 20
  a = jax.jit(train.make_eval_step(model, micro_batch=8))(state, x, y, mask)
  b = jax.jit(train.make_eval_step(model, micro_batch=24))(state, x, y, mask)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5), a, b)
  assert float(a["count"]) == 20


@pytest.mark.parametrize("batch_size", [10, 37, 64])
def test_evaluate_counts_every_example(batch_size):
  n = 37
  x = jax.random.normal(jax.random.key(0), (n, 6, 6, 1))
  y = jax.random.randint(jax.random.key(1), (n,), 0, 10)
  model = ConvNet(**TINY)
  tx = train.make_optimizer({"name": "sgd", "learning_rate": 0.1})
  state = train.init_state(model, tx, jax.random.key(2), x)
  m = train.evaluate(model, state, x, y, batch_size=batch_size)
  logits = model.apply({"params": state.params}, x)
  assert m["count"] == n
  assert m["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).mean()))
  assert m["loss"] == pytest.approx(float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()),
                                    rel=1e-5)


def test_progress_rate_counts_finished_steps(capsys, monkeypatch):
  """The rate counts steps that finished (after `metrics()`, which waits for them), and between lines `update` neither
  prints nor calls `metrics()` (no host sync). A fake clock: no wall-clock threshold to flake on a loaded machine."""
  import re  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  clock = {"now": 100.0}
  monkeypatch.setattr(writers, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
  p = writers.Progress(100, "epoch 1/1", every=2.0)          # t0 = last = 100.0
  calls = []

  def metrics():  # like device_get: waits 0.2 s for the dispatched steps to finish
    calls.append(clock["now"])
    clock["now"] += 0.2
    return {"loss": 1.0, "accuracy": 0.5}

  clock["now"] = 100.1                       # 0.1 s since the last line: under `every`
  assert p.update(10, metrics) is None
  assert calls == [] and capsys.readouterr().out == ""       # nothing printed, nothing waited for
  clock["now"] = 102.1                       # `every` passed: waits for the steps, then 10 steps in 2.3 s
  assert p.update(10, metrics) == {"loss": 1.0, "accuracy": 0.5} and calls == [102.1]
  rate = float(re.search(r"([\d.]+) steps/s", capsys.readouterr().out).group(1))
  assert rate == pytest.approx(10 / 2.3, abs=0.05)           # 4.3, not 10 / 2.1 = 4.8 (dispatched, unfinished)
  clock["now"] = 104.2                       # 1.9 s after that line (it ended at 102.3): nothing, no sync
  assert p.update(11, metrics) is None and calls == [102.1] and capsys.readouterr().out == ""
  assert p.update(11, metrics, force=True) is not None and len(calls) == 2   # force: a line now


def test_init_state_shape_error():
  from jcnn.errors import ShapeError  # pylint: disable=g-import-not-at-top
  tx = train.make_optimizer({"name": "sgd", "learning_rate": 0.1})
  with pytest.raises(ShapeError, match=r"ConvNet cannot take input of shape \(6, 6, 1\)"):
    train.init_state(ConvNet(), tx, jax.random.key(0), jnp.zeros((1, 6, 6, 1)))


def test_check_config_rejects():
  from experiments import fashion_convnet  # pylint: disable=g-import-not-at-top
  for path, value, msg in (("model.dropout_rate", 1.0, "dropout_rate"), ("model.activation", "relu6", "relu6"),
                           ("model.init_scale", 0.0, "init_scale"), ("optim.name", "adamm", "adamm"),
                           ("train.loss", "hinge", "hinge"), ("train.batch_size", 0, "batch_size"),
                           ("train.micro_batch", -1, "micro_batch"),
                           ("data.augment", "rotate", "rotate"), ("data.preprocess", "whiten", "whiten")):
    c = fashion_convnet.get_config()
    section, key = path.split(".")
    c[section][key] = value
    with pytest.raises(ConfigError, match=msg):
      config_lib.check_config(c)
  config_lib.check_config(fashion_convnet.get_config())


def test_training_steps_copy_nothing_between_host_and_device():
  """In memory, a step's feed item is the epoch's index array already on the device and the step gathers its batch
  there: the loop's per-step calls (next(feed), program.step) run under jax.transfer_guard('disallow'), which raises
  on any implicit host<->device copy. Control: under the same guard a host (numpy) index array passed to the step
  raises; the guarded steps did train (step counter, parameters). (On CPU, reading a device array into numpy shares
  its memory and is no transfer, so the device-to-host half is only exercised on an accelerator.)"""
  from experiments import fashion_convnet  # pylint: disable=g-import-not-at-top
  from jcnn.train import program as program_lib  # pylint: disable=g-import-not-at-top
  c = fashion_convnet.get_config()
  c.model.name, c.model.dropout_rate = "mlp", 0.25   # dropout: a fresh key per step, folded in on the device
  c.data.name, c.data.synthetic_shape, c.data.synthetic_size = "synthetic", (8, 8, 1), (64, 16)
  c.train.batch_size = 16                            # 4 steps per epoch
  ds = data_lib.load(c.data, seed=0, task=c.train.task)
  program = program_lib.single_program(c, ds)
  rs = program.init()
  feed = iter(program.feed(1, 0))                    # once per epoch: the epoch's order (its epoch number is a copy)
  rs = program.step(rs, next(feed))                  # compiles; the steps below reuse it
  first = jax.device_get(rs.train.params)
  host_order = np.asarray(jax.device_get(program.batches(1)))
  with jax.transfer_guard("disallow"):
    for _ in range(3):
      rs = program.step(rs, next(feed))
    jax.block_until_ready(rs)
  assert int(jax.device_get(rs.train.step)) == 4
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first),
                                                      jax.tree.leaves(jax.device_get(rs.train.params))))
  with jax.transfer_guard("disallow"):
    with pytest.raises(Exception, match=r"Disallowed host-to-device transfer: aval=ShapedArray\(int32\[4,16\]"):
      program.step(rs, host_order)                   # the epoch's [steps, batch] order, from numpy


# ----------------------------------------------------------------------------------------------------------------
# Every experiment, one step, end to end.
EXPERIMENTS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments")) if f.endswith(".py") and f[0] != "_")
CORE = ("fashion_convnet", "fashion_mlp", "mnist_convnet")   # fast; the zoo's bigger models compile for minutes on CPU
TINY_MODEL = {"densenet_bc100": "densenet_tiny", "vgg11_cifar": "vgg_tiny", "resnet20": "resnet_tiny"}


def _offline(cfg) -> bool:
  name = cfg.data.name
  return name == "synthetic" or name.startswith("toy:") or any(sources._find(d, sources.IDX_FILES["train"][0])  # pylint: disable=protected-access
                                    for d in data_lib.idx_dirs(name, cfg.data.get("data_dir", "")))


def test_experiments_found():
  assert {"fashion_convnet", "fashion_mlp", "mnist_convnet"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", [n if n in CORE else pytest.param(n, marks=pytest.mark.slow) for n in EXPERIMENTS])
def test_experiment_one_step(name, tmp_path):
  module = importlib.import_module(f"experiments.{name}")
  c = module.get_config()
  assert c.name == name and module.__doc__ and "launch.py" in module.__doc__
  if hasattr(module, "main"):   # not a training run (gradient_flow): its own main, on a cut-down budget
    c.steps, c.examples, c.batch_size = 1, 128, 32
    module.main(c, str(tmp_path / name))
    with open(tmp_path / name / f"{name}.json") as f:
      assert json.load(f)
    return
  if not _offline(c):
    if c.data.name in data_lib.TEXT_DATASETS:   # token ids of the experiment's max_len and vocab_size (cut to 64)
      c.data.name, c.data.max_len = "synthetic_text", 64
    else:
      shape = {"cifar10": (32, 32, 3)}.get(c.data.name, (28, 28, 1))   # the shape the model was built for
      c.data.name, c.data.synthetic_shape = "synthetic", shape
  # The experiment's pipeline (data, optimizer, schedule, augmentation, files) on its family's tiny member: the full
  # models' XLA:CPU compiles take minutes, and tests/test_models.py covers them.
  c.model.name = TINY_MODEL.get(c.model.name, c.model.name)
  c.train.epochs = 1
  c.train.batch_size = 16
  c.train.eval_batch_size = 16
  c.train.log_every = 1
  c.data.train_limit = 16                 # one step
  c.data.test_limit = 24                  # two eval batches, the second partial
  c.data.val_size = 0
  workdir = str(tmp_path / name)
  if hasattr(module, "get_sweep"):
    from jcnn import sweep  # pylint: disable=g-import-not-at-top
    s = module.get_sweep()
    s.seeds = 1
    if s.search != "grid":   # a search ranks on a validation split: one more step's worth of images for it
      c.data.train_limit, c.data.val_size, s.rungs = 32, 16, (1,)
    out = run_sweep(c, s, workdir)
    assert os.path.exists(os.path.join(workdir, "config.json"))
    with open(os.path.join(workdir, "summary.json")) as f:
      summary_rows = json.load(f)
    with open(os.path.join(workdir, "variants.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    # The grid of get_sweep() is the grid that ran: one variant per value of the swept axis (one seed), in order,
    # every other axis at the config's value.
    if not sweep.swept_axes(s):   # a sweep over groups only (the foundations): one variant per group, in order
      assert [r["hparams"]["group"] for r in rows] == list(s.groups) and len(summary_rows) == len(rows)
      assert all(math.isfinite(r["final"]["test_loss"]) for r in rows)
      return
    if s.search != "grid":   # every variant of its grid, each with the epoch the search let it reach
      assert [r["hparams"] for r in rows] == sweep.variants_of(c, s) and all(r["epochs_trained"] == 1 for r in rows)
      return
    (axis,) = sweep.swept_axes(s)
    assert [r["hparams"][axis] for r in rows] == list(module.get_sweep()[axis]) and len(summary_rows) == len(rows)
    assert all(r["hparams"]["seed"] == c.train.seed and not r["failed"] for r in rows)
    for other in set(sweep.swept_axes(module.get_sweep()) + ["dropout_rate", "init_scale", "learning_rate"]) - {axis}:
      assert len({json.dumps(r["hparams"].get(other)) for r in rows}) == 1, other
    # ... and applied: same seed, same data, same batch, so the value is the only difference. Each value trains other
    # parameters (another test loss after the step). The one step's train loss is measured before its update: it
    # differs where the axis acts in the forward pass (dropout, init scale, activation), and is the same for every
    # learning rate.
    test_losses = [r["final"]["test_loss"] for r in rows]
    train_losses = [r["final"]["train_loss"] for r in rows]
    assert all(math.isfinite(v) for v in test_losses + train_losses)
    assert len(set(test_losses)) == len(rows), test_losses
    if axis == "learning_rate":
      np.testing.assert_allclose(train_losses, train_losses[0], rtol=1e-6)
    else:
      assert len(set(train_losses)) == len(rows), train_losses
    assert [r["hparams"] for r in out["results"]] == [r["hparams"] for r in rows]
    return
  out = train_and_evaluate(c, workdir)
  for f in ("config.json", "metrics.jsonl", "results.json"):
    assert os.path.exists(os.path.join(workdir, f)), f
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["config"]["name"] == name
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["kind"] for r in rows] == ["train", "epoch"] and rows[1]["step"] == 1     # one step; log_every 1
  assert results["experiment"] == name and results["epochs"] == 1
  judged = "test_rmse" if c.train.task == "regress" else "test_accuracy"
  assert results["final"]["step"] == 1 and 0.0 <= results["final"][judged] <= (np.inf if c.train.task == "regress"
                                                                              else 1.0)
  assert math.isfinite(results["final"]["test_loss"]) and results["params"] == out["results"]["params"] > 0
  assert int(out["state"].step) == 1
  with pytest.raises(ConfigError, match="already holds a finished run"):
    train_and_evaluate(c, workdir)
