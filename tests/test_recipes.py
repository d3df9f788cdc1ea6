"""Training recipes (config.train: label_smoothing, mixup_alpha, cutmix_alpha, clip_norm, ema_decay): each step
against a reference written here by hand (numpy, or optax's own transformations), traced values against static ones,
and a swept recipe against its standalone runs.

The references share no code with jcnn/train/step.py's recipes: the mixing weight, permutation and box come from the
documented key contract (fold_in(fold_in(rng, step), MIX_FOLD), split into 6) and jax.random's samplers; the box, the
mixed images and the losses are numpy; the update is plain SGD written out.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn import config as config_lib, data as data_lib, models, sweep
from jcnn import train as train_lib
from jcnn.errors import ConfigError
from jcnn.experiment import train_and_evaluate
from jcnn.train import checkpoint, step as step_lib

LR, B, K, H, W = 0.5, 8, 3, 8, 8
BETA = jax.jit(jax.random.beta)   # the samplers are jax.random's (jitted once: op by op they compile per call)


class Tiny(nn.Module):
  """conv -> relu -> dense: [B, H, W, 1] -> [B, K] logits."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(K, name="head")(x.reshape((x.shape[0], -1)))


MODEL, TX = Tiny(), optax.sgd(LR)


@functools.cache
def setup():
  """(model, tx, initial state, x [B, H, W, 1], y [B]): one tiny problem shared by the tests (states are immutable)."""
  rx, ry, rp = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(rx, (B, H, W, 1))
  y = jax.random.randint(ry, (B,), 0, K)
  return MODEL, TX, train_lib.init_state(MODEL, TX, rp, x), x, y


@jax.jit
@jax.grad
def soft_ce(params, x, targets):
  """The reference loss: optax's cross-entropy against soft targets [B, K], batch mean; its gradient (jitted once)."""
  return optax.softmax_cross_entropy(MODEL.apply({"params": params}, x), targets).mean()


RECIPES = ("label_smoothing", "mixup_alpha", "cutmix_alpha", "clip_norm", "ema_decay", "l2")
_STEPS = {}


def one_step(model, tx, state, x, y, rng=jax.random.key(5), **recipes):
  """One step with every recipe a traced argument (one compiled program for all the tests that use it)."""
  if "traced" not in _STEPS:
    _STEPS["traced"] = jax.jit(lambda s, xb, yb, r, v: step_lib.make_train_step(model, tx, micro_batch=B, **v)(
        s, xb, yb, r))
  values = {k: jnp.float32(recipes.get(k, 0.0)) for k in RECIPES}
  return _STEPS["traced"](state if state.ema is not None else state.replace(ema=state.params), x, y, rng, values)


def static_step(model, tx, state, x, y, rng=jax.random.key(5), **recipes):
  """One step with the recipes as Python numbers (those at 0 left out of the program)."""
  return jax.jit(step_lib.make_train_step(model, tx, micro_batch=B, **recipes))(state, x, y, rng)


def log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def sgd(params, grads):
  return jax.tree.map(lambda p, g: p - LR * g, params, grads)


def close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol), a, b)


def differs(a, b):
  return any(not np.allclose(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------------------------------------------
# Label smoothing.
def test_label_smoothing_equals_optax_smooth_labels():
  model, tx, state, x, y = setup()
  eps = 0.2

  targets = optax.smooth_labels(jax.nn.one_hot(y, K), eps)   # optax's own smoothing
  new, m = one_step(model, tx, state, x, y, label_smoothing=eps)
  close(new.params, sgd(state.params, soft_ce(state.params, x, targets)))
  lp = log_softmax(model.apply({"params": state.params}, x))
  np.testing.assert_allclose(float(m["loss_sum"]), -(np.asarray(targets) * lp).sum(), rtol=1e-5)
  assert differs(new.params, one_step(model, tx, state, x, y)[0].params)


def test_label_smoothing_is_refused_outside_classify_cross_entropy():
  c = config_lib.base_config()
  c.train.label_smoothing = 0.1
  config_lib.check_config(c)
  c.train.loss = "mse"
  with pytest.raises(ConfigError, match="^config.train.label_smoothing=0.1 .*: set config.train.label_smoothing=0"):
    config_lib.check_config(c)
  c.train.loss, c.train.task = "cross_entropy", "binary"
  with pytest.raises(ConfigError, match="label_smoothing"):
    config_lib.check_config(c)
  c.train.label_smoothing, c.train.mixup_alpha = 0.0, 0.2
  with pytest.raises(ConfigError, match="^config.train.mixup_alpha=0.2 mixes class labels.*task=binary"):
    config_lib.check_config(c)
  assert "must be >= 0 and < 1" in config_lib.check_value("train.label_smoothing", 1.0)
  assert "must be >= 0 and < 1" in config_lib.check_value("train.ema_decay", 1.0)
  assert "must be >= 0" in config_lib.check_value("train.cutmix_alpha", -1.0)


# ----------------------------------------------------------------------------------------------------------------
# Mixup and cutmix: lam, perm and box reproduced from the step's keys.
def mix_keys(rng, step=0):
  k = jax.random.fold_in(jax.random.fold_in(rng, step), step_lib.MIX_FOLD)
  return jax.random.split(k, 6)   # perm, mixup, cutmix, row, col, switch


def ref_box(lam, cy, cx):
  """The CutMix paper's rand_bbox, in numpy: [H, W] bool and the share of the image left."""
  r = np.sqrt(1.0 - lam)
  ch, cw = int(np.floor(H * r)), int(np.floor(W * r))
  y1, y2 = np.clip(cy - ch // 2, 0, H), np.clip(cy + ch // 2, 0, H)
  x1, x2 = np.clip(cx - cw // 2, 0, W), np.clip(cx + cw // 2, 0, W)
  box = np.zeros((H, W), bool)
  box[y1:y2, x1:x2] = True
  return box, 1.0 - (y2 - y1) * (x2 - x1) / (H * W)


def ref_mix(rng, x, mixup_alpha, cutmix_alpha):
  """(mixed x, perm, lam, used cutmix) by hand: the samplers are jax.random's, the mixing numpy."""
  k_perm, k_mixup, k_cutmix, k_row, k_col, k_switch = mix_keys(rng)
  perm = np.asarray(jax.random.permutation(k_perm, B))
  x = np.asarray(x)
  use_cut = cutmix_alpha > 0 and (mixup_alpha == 0 or bool(jax.random.bernoulli(k_switch)))
  if use_cut:
    lam = float(BETA(k_cutmix, cutmix_alpha, cutmix_alpha))
    box, lam = ref_box(lam, int(jax.random.randint(k_row, (), 0, H)), int(jax.random.randint(k_col, (), 0, W)))
    return np.where(box[None, :, :, None], x[perm], x), perm, lam, True
  lam = float(BETA(k_mixup, mixup_alpha, mixup_alpha))
  return lam * x + (1 - lam) * x[perm], perm, lam, False


def check_mixed_step(mixup_alpha, cutmix_alpha, rng):
  model, tx, state, x, y = setup()
  xm, perm, lam, used_cut = ref_mix(rng, x, mixup_alpha, cutmix_alpha)
  yp = np.asarray(y)[perm]
  onehot = np.eye(K)
  targets = lam * onehot[np.asarray(y)] + (1 - lam) * onehot[yp]   # lam CE(y) + (1 - lam) CE(y[perm])

  new, m = one_step(model, tx, state, x, y, rng, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
  lp = log_softmax(model.apply({"params": state.params}, jnp.asarray(xm)))
  loss = -(lam * lp[np.arange(B), y] + (1 - lam) * lp[np.arange(B), yp]).sum()
  np.testing.assert_allclose(float(m["loss_sum"]), loss, rtol=1e-5)
  assert float(m["correct"]) == float((lp.argmax(-1) == np.asarray(y)).sum())   # against the original labels
  close(new.params, sgd(state.params, soft_ce(state.params, jnp.asarray(xm, jnp.float32), jnp.asarray(targets,
                                                                                                  jnp.float32))))
  return new, lam, used_cut


def test_mixup_step_equals_hand_mixed_loss():
  new, lam, _ = check_mixed_step(2.0, 0.0, jax.random.key(5))
  assert 0.01 < lam < 0.99
  model, tx, state, x, y = setup()
  assert differs(new.params, one_step(model, tx, state, x, y)[0].params)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_cutmix_step_equals_hand_pasted_box(seed):
  _, lam, used_cut = check_mixed_step(0.0, 1.0, jax.random.key(seed))
  assert used_cut and lam < 1   # a box was pasted (its area recomputed after clipping)


def test_mixup_and_cutmix_switch_per_step():
  picked = {check_mixed_step(0.4, 1.0, jax.random.key(s))[2] for s in range(4)}
  assert picked == {True, False}   # keys 0-3 draw both (with these keys; a different split would fail here)


def test_traced_recipes_equal_static_ones_and_traced_zeros_the_plain_step():
  model, tx, state, x, y = setup()
  on = {"label_smoothing": 0.1, "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "clip_norm": 0.05, "l2": 0.01}
  for rng in (jax.random.key(5), jax.random.key(6)):   # one of them picks mixup, the other cutmix
    close(one_step(model, tx, state, x, y, rng, **on)[0].params, static_step(model, tx, state, x, y, rng, **on)[0].params)
  plain, m0 = static_step(model, tx, state, x, y)   # the program without any recipe
  zero, m = one_step(model, tx, state, x, y)         # every recipe traced, at 0
  close(zero.params, plain.params, rtol=0, atol=1e-7)
  np.testing.assert_allclose(float(m["loss_sum"]), float(m0["loss_sum"]), rtol=1e-6)


def test_mixup_in_chunks_equals_the_whole_batch():
  model, tx, state, x, y = setup()
  whole, m = one_step(model, tx, state, x, y, mixup_alpha=0.4)
  chunked, mc = jax.jit(step_lib.make_train_step(model, tx, micro_batch=4, mixup_alpha=jnp.float32(0.4)))(
      state.replace(ema=state.params), x, y, jax.random.key(5))
  close(chunked.params, whole.params)
  np.testing.assert_allclose(float(mc["loss_sum"]), float(m["loss_sum"]), rtol=1e-5)


def test_mixing_token_ids_is_refused():
  with pytest.raises(ConfigError, match="mix images"):
    step_lib.mix_batch(jax.random.key(0), jnp.zeros((B, 400), jnp.int32), 0.2, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Gradient clipping: optax.clip_by_global_norm chained before the same optimizer.
def test_clip_norm_equals_optax_clip_by_global_norm_after_l2():
  model, tx, state, x, y = setup()
  c, l2 = 0.05, 0.01
  ref_tx = optax.chain(optax.clip_by_global_norm(c), optax.sgd(LR))

  def ref_loss(params):   # mean CE + l2 * 0.5 * sum(kernel ** 2), written out
    lp = jax.nn.log_softmax(model.apply({"params": params}, x))
    kernels = [params["Conv_0"]["kernel"], params["head"]["kernel"]]
    return -lp[jnp.arange(B), y].mean() + l2 * 0.5 * sum((k ** 2).sum() for k in kernels)

  ref_params, ref_opt = state.params, ref_tx.init(state.params)
  new = state
  for i in range(2):
    g = jax.jit(jax.grad(ref_loss))(ref_params)
    assert float(optax.tree.norm(g)) > c   # the clip bites
    u, ref_opt = ref_tx.update(g, ref_opt, ref_params)
    ref_params = optax.apply_updates(ref_params, u)
    new, _ = one_step(model, tx, new, x, y, l2=l2, clip_norm=c)
  close(new.params, ref_params)
  assert differs(one_step(model, tx, state, x, y, l2=l2, clip_norm=c)[0].params,
                 one_step(model, tx, state, x, y, l2=l2)[0].params)


# ----------------------------------------------------------------------------------------------------------------
# The parameters' moving average.
def test_ema_equals_a_numpy_average_and_evaluation_uses_it():
  model, tx, state, x, y = setup()
  decay = 0.6
  state = train_lib.init_state(model, tx, jax.random.key(0), x, ema=True)
  ema = jax.tree.map(np.asarray, state.params)
  close(state.ema, ema, rtol=0, atol=0)
  for _ in range(3):
    state, _ = one_step(model, tx, state, x, y, ema_decay=decay)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p), ema, state.params)
  close(state.ema, ema)
  assert differs(state.ema, state.params)
  sums = jax.jit(step_lib.make_eval_step(model, micro_batch=B))(state, x, y, jnp.ones((B,), bool))
  lp = log_softmax(model.apply({"params": ema}, x))
  np.testing.assert_allclose(float(sums["loss_sum"]), -lp[np.arange(B), y].sum(), rtol=1e-5)
  # Without a state average the step refuses a decay; a state that keeps one but decay 0 copies the parameters.
  with pytest.raises(ValueError, match="init_state"):
    step_lib.make_train_step(model, tx, ema_decay=decay)(setup()[2], x, y, jax.random.key(5))
  s0, _ = one_step(model, tx, state, x, y)
  close(s0.ema, s0.params, rtol=0, atol=0)


def tiny_run_config(**train):
  c = config_lib.base_config()
  c.data.name, c.data.synthetic_shape, c.data.synthetic_size = "synthetic", (12, 12, 1), (64, 32)
  c.model.name, c.model.hidden = "mlp", (8,)
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 1, 16, 16
  c.writers.tensorboard = False
  c.train.update(train)
  return c


def test_load_trained_and_run_results_give_the_average(tmp_path):
  out = train_and_evaluate(tiny_run_config(ema_decay=0.5), str(tmp_path / "run"))
  state = out["state"]
  assert state.ema is not None and differs(state.ema, state.params)
  close(checkpoint.load_trained(str(tmp_path / "run"))["variables"]["params"], state.ema, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# A swept recipe: each variant is its standalone run.
def reference(config, ds, hp):
  """A variant's standalone run by a plain loop over the library's pieces (keys: split(key(seed), 3))."""
  model = models.get(config.model, num_classes=ds.num_classes)
  n, bs = len(ds.train_y), config.train.batch_size
  tx = train_lib.make_optimizer(config.optim, (n // bs) * config.train.epochs)
  k_init, k_data, k_drop = jax.random.split(jax.random.key(hp["seed"]), 3)
  state = train_lib.init_state(model, tx, k_init, ds.train_x[:1], ema=hp["ema_decay"] > 0)
  key = (config.to_json(), hp["ema_decay"] > 0)
  if key not in _STEPS:   # the recipes as arguments: one compile for the variants of a test
    _STEPS[key] = jax.jit(lambda s, xb, yb, r, v: train_lib.make_train_step(model, tx, config.train.loss, **v)(
        s, xb, yb, r))
  values = {k: jnp.float32(hp[k]) for k in RECIPES if k != "ema_decay" or key[1]}
  for epoch in range(1, config.train.epochs + 1):
    order = jax.random.permutation(jax.random.fold_in(k_data, epoch), n)[:(n // bs) * bs].reshape(-1, bs)
    for idx in order:
      state, _ = _STEPS[key](state, ds.train_x[idx], ds.train_y[idx], k_drop, values)
  return state, train_lib.evaluate(model, state, ds.test_x, ds.test_y, config.train.eval_batch_size)


@pytest.mark.parametrize("axis,values,fixed,strategy", [
    ("label_smoothing", (0.0, 0.2), {}, "map"),
    ("mixup_alpha", (0.0, 0.4), {"ema_decay": 0.5, "cutmix_alpha": 1.0}, "vmap"),
])
def test_swept_recipe_variant_equals_its_standalone_run(axis, values, fixed, strategy):
  config = tiny_run_config(**fixed)
  ds = data_lib.load(config.data, seed=config.train.seed)
  s = sweep.default_sweep()
  s.seeds, s[axis] = 1, values
  variants = sweep.variants_of(config, s)
  assert [v[axis] for v in variants] == list(values)
  results = sweep.train_variants(config, variants, ds, [axis], strategy=strategy)
  states = []
  for k, v in enumerate(variants):
    state, test = reference(config, ds, v)
    close(results[k]["params"], step_lib.eval_params(state), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(results[k]["final"]["test_loss"], test["loss"], rtol=1e-4)
    states.append(state)
  assert differs(states[0].params, states[1].params)   # the axis changes the run
