"""Mixed precision (config.train.dtype): bfloat16 tracks float32, the state stays float32, the compute really is in
the low dtype, float16's dynamic loss scaling (skip and halve, grow, unscale), sweeps, resume, and the config check.

References are independent of the code under test: the float32 run of the same program, a numpy float64 gradient
written out by hand, a hand-computed sequence of loss scales, and a plain loop over the library's pure pieces.
"""
import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend import core as jax_core

import launch
from experiments import ablation_dropout, fashion_convnet
from jcnn import models, sweep
from jcnn import config as config_lib
from jcnn import data as data_lib
from jcnn import train as train_lib
from jcnn.errors import Diverged
from jcnn.nn import layers
from jcnn.train import checkpoint, loop, program as program_lib

STEPS, B, WINDOW = 200, 32, 20


def convnet_config(dtype, steps=STEPS):
  """The fashion_convnet recipe (RMSprop 1e-3) on synthetic 28x28 images, narrowed; one epoch of `steps` steps."""
  c = fashion_convnet.get_config()
  c.data.name = "synthetic"
  c.data.synthetic_size = (steps * B, 256)
  c.data.train_limit = c.data.test_limit = 0
  c.model.features, c.model.dense = (16, 32, 32), 32
  c.train.batch_size, c.train.epochs, c.train.dtype = B, 1, dtype
  return c


def leaves_dtypes(tree):
  return {str(a.dtype) for a in jax.tree.leaves(tree)}


# ----------------------------------------------------------------------------------------------------------------
# bfloat16 against float32: the same program, the same data, keys and initial parameters.
@pytest.fixture(scope="module")
def runs():
  """200 steps of the loop's own program step in float32 and in bfloat16: mean loss per window of 20 steps."""
  ds = data_lib.load(convnet_config("float32").data, seed=0)
  out = {}
  for dtype in ("float32", "bfloat16"):
    program = program_lib.single_program(convnet_config(dtype), ds)
    rs, batches, windows = program.init(), program.batches(1), []
    for _ in range(STEPS // WINDOW):
      before = float(rs.acc["loss_sum"])
      for _ in range(WINDOW):
        rs = program.step(rs, batches)
      windows.append((float(rs.acc["loss_sum"]) - before) / (WINDOW * B))
    out[dtype] = (np.asarray(windows), rs, program)
  return ds, out


def test_bf16_convnet_tracks_f32_loss_over_200_steps(runs):
  _, out = runs
  f32, bf16 = out["float32"][0], out["bfloat16"][0]
  assert f32[-1] < 0.1 * f32[0] and bf16[-1] < 0.1 * bf16[0]   # both really train (from ln 10 = 2.30)
  # bfloat16 keeps 8 significant bits: each rounding is off by up to 2^-8 = 0.39%. The first window starts from the
  # same parameters, so it differs by the forward pass's rounding (and 20 steps' drift): within 1%.
  np.testing.assert_allclose(bf16[0], f32[0], rtol=0.01)
  # Later the roundings move the parameters too, and where the loss falls fastest (up to 0.02 per step) a shift of
  # a few steps in when it falls is a large difference in loss. So: the bf16 run falls within one window (20 steps)
  # of the f32 run: every window's bf16 loss lies between the f32 losses of the windows before and after it, give or
  # take 0.02 + 2%. Measured over 3 seeds x 2 widths of this convnet: inside everywhere, by 0.018 or more; the
  # largest lag about half a window. A bf16 step that learnt nothing or learnt wrongly would leave the band.
  around = np.stack([f32, np.r_[f32[0], f32[:-1]], np.r_[f32[1:], f32[-1]]])   # windows w, w-1, w+1
  tol = 0.02 + 0.02 * f32
  np.testing.assert_array_less(around.min(0) - tol, bf16)
  np.testing.assert_array_less(bf16, around.max(0) + tol)


def test_bf16_evaluation_of_the_same_parameters_is_within_rounding(runs):
  ds, out = runs
  idx, mask = (jnp.asarray(a) for a in data_lib.eval_batches(len(ds.test_y), 256))
  for _, rs, _ in out.values():   # the final parameters of each run, evaluated by the f32 and the bf16 program
    m32, m16 = (out[d][2].evaluate(rs.train, ds.test_x, ds.test_y, idx, mask) for d in ("float32", "bfloat16"))
    # The same parameters: only the forward pass's rounding differs. ~5 roundings of 2^-8 on the path from the
    # input to the logits (input, weights, each layer's output) bound the loss's relative change by ~2%.
    np.testing.assert_allclose(float(m16["loss_sum"]), float(m32["loss_sum"]), rtol=0.02)
    assert abs(float(m16["correct"]) - float(m32["correct"])) <= 0.02 * 256


def test_bf16_run_keeps_parameters_optimizer_state_and_statistics_float32(runs):
  _, out = runs
  st = out["bfloat16"][1].train
  assert leaves_dtypes((st.params, st.opt_state)) == {"float32", "int32"}   # int32: the optimizer's step count
  assert leaves_dtypes(st.params) == {"float32"} and st.loss_scale is None
  # The bf16 state is the f32 state's pytree, leaf for leaf (checkpoints of either restore into the other's shape).
  f32 = out["float32"][1].train
  assert jax.tree.structure(st) == jax.tree.structure(f32)
  assert [a.dtype for a in jax.tree.leaves(st)] == [a.dtype for a in jax.tree.leaves(f32)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_state_of_a_batchnorm_model_stays_float32(dtype):
  """ResNet-20 (BatchNorm): the loop's step, traced abstractly (no compile), returns float32 parameters, optimizer
  state and running statistics; float16 adds a float32 loss scale."""
  c = config_lib.base_config()
  c.model.name, c.train.batch_size, c.train.dtype = "resnet20", 8, dtype
  c.optim.name = "momentum"
  x = jnp.zeros((16, 32, 32, 3))
  ds = data_lib.Dataset("zeros", x, jnp.zeros((16,), jnp.int32), x, jnp.zeros((16,), jnp.int32), None, None, 10, {})
  fns = program_lib.model_fns(c, ds)
  h = {k: v[0] for k, v in config_lib.variant_arrays([config_lib.variant_of(c)]).items()}
  rs = jax.eval_shape(fns.init, h)
  new = jax.eval_shape(fns.step, rs, h, ds.train_x, ds.train_y, jnp.arange(8))
  for st in (rs.train, new.train):
    assert leaves_dtypes(st.params) == leaves_dtypes(st.batch_stats) == {"float32"}
    assert leaves_dtypes(st.opt_state) == {"float32", "int32"}
    assert st.batch_stats["stem"]["norm"]["mean"].shape == (16,)
    if dtype == "float16":
      assert st.loss_scale.scale.dtype == jnp.float32 and st.loss_scale.good_steps.dtype == jnp.int32
    else:
      assert st.loss_scale is None


# ----------------------------------------------------------------------------------------------------------------
# The compute really is in the low dtype.
def _eqns(jaxpr):
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      for sub in p if isinstance(p, (list, tuple)) else [p]:
        if isinstance(sub, jax_core.ClosedJaxpr):
          yield from _eqns(sub.jaxpr)
        elif isinstance(sub, jax_core.Jaxpr):
          yield from _eqns(sub)


def _products(fn, *args):
  """Counter of (primitive, operand dtypes) over every dot_general / conv / oneDNN conv call (jcnn.nn.onednn's
  custom calls) in fn's jaxpr, nested bodies included."""
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  return collections.Counter((e.primitive.name, tuple(str(v.aval.dtype) for v in e.invars)) for e in _eqns(jaxpr)
                             if e.primitive.name in ("dot_general", "conv_general_dilated")
                             or str(e.params.get("target_name", "")).startswith("jcnn_onednn_conv"))


@pytest.mark.parametrize("model,shape", [("convnet", (28, 28, 1)), ("resnet20", (32, 32, 3))])
def test_every_matrix_product_runs_in_the_compute_dtype(model, shape):
  """In the loop's train step (forward and backward, micro-batch scan included) and its evaluation, every matrix
  product (the convolutions lower to them) takes operands of the compute dtype; float32 stays float32."""
  x = jnp.asarray(np.random.default_rng(0).random((32,) + shape, np.float32))
  y = jnp.arange(32, dtype=jnp.int32) % 10
  ds = data_lib.Dataset("r", x, y, x, y, None, None, 10, {})
  for dtype in ("float32", "bfloat16", "float16"):
    c = config_lib.base_config()
    c.model.name, c.train.batch_size, c.train.dtype = model, 16, dtype
    fns = program_lib.model_fns(c, ds)
    h = {k: v[0] for k, v in config_lib.variant_arrays([config_lib.variant_of(c)]).items()}
    rs = jax.eval_shape(fns.init, h)
    step = _products(fns.step, rs, h, x, y, jnp.arange(16))
    evaluate = _products(fns.evaluate, rs.train, h, x, y, jnp.arange(16)[None], jnp.ones((1, 16), bool))
    for products in (step, evaluate):
      assert sum(products.values()) >= 5, products          # forward (and backward) products were found
      assert {dt for _, dts in products for dt in dts} == {dtype}, (dtype, products)


# ----------------------------------------------------------------------------------------------------------------
# float16: dynamic loss scaling.
def test_update_loss_scale_by_hand():
  ls = train_lib.LossScale.create(8.0)
  seen = []
  for finite in [True, True, True, False, True, False, False, False, False, True]:
    ls = train_lib.update_loss_scale(ls, jnp.asarray(finite), period=3)
    seen.append((float(ls.scale), int(ls.good_steps), int(ls.skipped)))
  # Period 3: the third finite step in a row doubles the scale; a non-finite one halves it (not below 1).
  assert seen == [(8, 1, 0), (8, 2, 0), (16, 0, 0), (8, 0, 1), (8, 1, 1), (4, 0, 2), (2, 0, 3), (1, 0, 4), (1, 0, 5),
                  (1, 1, 5)]
  default = train_lib.LossScale.create()
  assert float(default.scale) == 2.0 ** 15 and train_lib.LOSS_SCALE_PERIOD == 2000


C = 2.0 ** -20


class Linear(nn.Module):
  """Softmax regression whose logits are the dense output times C = 2^-20 (~1e-6, exact in float16): its backward
  pass carries cotangents of ~1e-7 into the dense layer, float16 subnormals (the smallest normal number is 6.1e-5,
  the smallest subnormal 6e-8) unless the loss is scaled."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, *, train=False):
    return layers.Dense(self.num_classes, name="head")(x) * C


def _record_gradients():
  """An optimizer that applies nothing and keeps the gradient it was given as its state."""
  return optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                      lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))


def test_float16_unscaled_gradient_equals_the_float32_gradient_by_hand():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 16)).astype(np.float32)
  y = np.array([0, 0, 0, 0, 1, 1, 2, 3], np.int32)   # unbalanced: the bias gradient is not ~0
  model, tx = Linear(), _record_gradients()
  state = train_lib.init_state(model, tx, jax.random.key(0), jnp.asarray(x), dtype="float16")
  step = jax.jit(train_lib.make_train_step(model, tx, dtype="float16"))
  # float64 by hand: z = C (x W + b), p = softmax(z), dL/dW = C x^T (p - onehot) / B, dL/db = C sum_b (...) / B.
  W, b = (np.asarray(state.params["head"][k], np.float64) for k in ("kernel", "bias"))
  z = C * (x.astype(np.float64) @ W + b)
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  g = (p - np.eye(4)[y]) / len(y)
  want = {"kernel": C * x.T.astype(np.float64) @ g, "bias": C * g.sum(0)}

  new, _ = step(state, jnp.asarray(x), jnp.asarray(y), jax.random.key(1))
  assert float(new.loss_scale.scale) == 2.0 ** 15 and int(new.loss_scale.skipped) == 0
  got = new.opt_state["head"]                       # the unscaled float32 gradient the optimizer was given
  for k in ("kernel", "bias"):
    assert got[k].dtype == jnp.float32
    # float16 keeps 11 significant bits (2^-11 = 0.05% per rounding): x, W, the logits, the cotangents and each
    # product's output are rounded, so 1% of the largest entry bounds the error.
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=0, atol=0.01 * np.abs(want[k]).max())
  # Without scaling (scale 1) the same float16 backward pass flushes those cotangents into subnormals or zero.
  unscaled, _ = step(state.replace(loss_scale=train_lib.LossScale.create(1.0)), jnp.asarray(x), jnp.asarray(y),
                     jax.random.key(1))
  err = np.abs(np.asarray(unscaled.opt_state["head"]["kernel"]) - want["kernel"]).max()
  assert err > 0.1 * np.abs(want["kernel"]).max()


def test_float16_scale_doubles_after_period_finite_steps():
  rng = np.random.default_rng(1)
  x, y = jnp.asarray(rng.standard_normal((8, 16)), jnp.float32), jnp.arange(8, dtype=jnp.int32) % 4
  model, tx = Linear(), optax.sgd(0.1)
  state = train_lib.init_state(model, tx, jax.random.key(0), x, dtype="float16")
  step = jax.jit(train_lib.make_train_step(model, tx, dtype="float16", loss_scale_period=2))
  seen = []
  for _ in range(5):
    state, _ = step(state, x, y, jax.random.key(1))
    seen.append((float(state.loss_scale.scale), int(state.loss_scale.good_steps)))
  assert seen == [(2.0 ** 15, 1), (2.0 ** 16, 0), (2.0 ** 16, 1), (2.0 ** 17, 0), (2.0 ** 17, 1)]
  assert int(state.step) == 5 and int(state.loss_scale.skipped) == 0


def tiny_config(epochs=1, dtype="float16"):
  c = ablation_dropout.get_config()
  c.data.name = "synthetic"
  c.data.synthetic_shape, c.data.synthetic_size = (20, 20, 1), (96, 40)
  c.data.train_limit = 0
  c.model.features, c.model.dense = (8, 8, 8), 16
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size, c.train.dtype = epochs, 16, 16, dtype
  return c


def with_scale(rs, scale):
  return rs.replace(train=rs.train.replace(loss_scale=train_lib.LossScale.create(scale)))


def same_tree(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def f16_program():
  """One compiled float16 program for the tests below. Its optimizer (RMSprop, constant rate) does not depend on
  train.epochs, so loop.run may drive it for 1 or 2 epochs; the learning rate is optimizer state."""
  config = tiny_config()
  ds = data_lib.load(config.data)
  return ds, program_lib.single_program(config, ds)


def test_float16_overflow_skips_the_step_halves_the_scale_and_is_not_divergence(f16_program):
  ds, program = f16_program
  batches = program.batches(1)
  rs = with_scale(program.init(), 2.0 ** 100)   # scale * dL/dlogits overflows float16 (max 65504) at once
  before = jax.device_get(rs.train)
  rs = program.step(rs, batches)
  after = jax.device_get(rs.train)
  assert same_tree(after.params, before.params) and same_tree(after.opt_state, before.opt_state)   # bitwise
  assert int(after.step) == 1                                      # the step (and its batch) is consumed
  assert (float(after.loss_scale.scale), int(after.loss_scale.good_steps), int(after.loss_scale.skipped)) == \
      (2.0 ** 99, 0, 1)
  assert int(rs.failed_at) == -1                                   # not divergence
  assert float(rs.acc["count"]) == 16                              # its loss, unscaled, is counted: ~ln 10 at init
  np.testing.assert_allclose(float(rs.acc["loss_sum"]) / 16, np.log(10), rtol=0.05)
  # From a sane scale the same run trains: the parameters move and the scale stays.
  rs = program.step(with_scale(rs, 2.0 ** 15), batches)
  assert not same_tree(jax.device_get(rs.train.params), before.params)
  assert float(rs.train.loss_scale.scale) == 2.0 ** 15 and int(rs.train.loss_scale.skipped) == 0

  # The loop: a run whose every step overflows completes (6 steps skipped, nothing learnt, finite metrics) ...
  init = program.init
  out = loop.run(program._replace(init=lambda: with_scale(init(), 2.0 ** 100)), ds, tiny_config())
  assert int(out["failed_at"]) == -1 and int(out["state"].loss_scale.skipped) == 6
  assert float(out["state"].loss_scale.scale) == 2.0 ** 94
  assert same_tree(jax.device_get(out["state"].params), before.params)
  assert np.isfinite(out["history"][-1]["train_loss"]) and np.isfinite(out["history"][-1]["test_loss"])
  # ... but parameters too large for float16 (a step at learning rate 1e12) overflow the forward pass: the loss is
  # not finite, and that is divergence, as in float32.
  huge_lr = lambda rs: rs.replace(train=rs.train.replace(
      opt_state=train_lib.set_hyperparam(rs.train.opt_state, "learning_rate", 1e12)))
  with pytest.raises(Diverged, match="at step 2"):
    loop.run(program._replace(init=lambda: huge_lr(init())), ds, tiny_config())


def test_float16_run_resumes_with_its_loss_scale_exactly(f16_program, tmp_path):
  """The loss scale is carried state: 1 epoch, checkpoint, then resumed to 2 epochs equals 2 epochs straight."""
  ds, program = f16_program
  init = program.init   # from 2^22 the first steps overflow and halve the scale, later ones train
  program = program._replace(init=lambda: with_scale(init(), 2.0 ** 22))
  ref = loop.run(program, ds, tiny_config(2))
  ls = ref["state"].loss_scale
  assert 0 < int(ls.skipped) < 12 and float(ls.scale) < 2.0 ** 22 and int(ls.good_steps) > 0
  for epochs in (1, 2):
    ck = checkpoint.Checkpoints(str(tmp_path / "ck"))
    out = loop.run(program, ds, tiny_config(epochs), ckpt=ck)
    ck.close()
  assert int(out["state"].step) == 12 and len(out["history"]) == 2
  assert same_tree(jax.device_get(out["state"]), jax.device_get(ref["state"]))
  assert [r["train_loss"] for r in out["history"]] == [r["train_loss"] for r in ref["history"]]


# ----------------------------------------------------------------------------------------------------------------
# Sweeps: the same per-model functions, lifted.
def reference_run(config, hp):
  """One variant's standalone run, as a plain loop over the library's pure pieces in config.train.dtype: keys
  split(key(seed), 3) = init, data, dropout; epoch e's order permutation(fold_in(k_data, e)); step s's dropout key
  fold_in(k_dropout, s)."""
  c = config_lib.variant_config(config, hp)
  ds = data_lib.load(c.data, seed=c.train.seed)
  model = models.get(c.model, num_classes=ds.num_classes)
  n, dtype = len(ds.train_y), c.train.dtype
  tx = train_lib.make_optimizer(c.optim, (n // B) * c.train.epochs)
  k_init, k_data, k_drop = jax.random.split(jax.random.key(hp["seed"]), 3)
  state = train_lib.init_state(model, tx, k_init, ds.train_x[:1], dtype=dtype)
  step = jax.jit(train_lib.make_train_step(model, tx, c.train.loss, c.train.l2, c.train.micro_batch, dtype=dtype))
  bs = c.train.batch_size
  for epoch in range(1, c.train.epochs + 1):
    for idx in jax.random.permutation(jax.random.fold_in(k_data, epoch), n)[:(n // bs) * bs].reshape(-1, bs):
      state, _ = step(state, ds.train_x[idx], ds.train_y[idx], k_drop)
  test = train_lib.evaluate(model, state, ds.test_x, ds.test_y, c.train.eval_batch_size, dtype=dtype)
  return state, test


@pytest.mark.slow   # a sweep program and a standalone run: ~15 s each on 2 quiet cores, ~35 s on a loaded machine
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sweep_variant_equals_its_standalone_run(dtype):
  config = tiny_config(dtype=dtype)
  s = ablation_dropout.get_sweep()
  s.seeds, s.dropout_rate = 2, (0.5,)
  variants = sweep.variants_of(config, s)
  results = sweep.train_variants(config, variants, swept=["dropout_rate"])
  assert [(v["dropout_rate"], v["seed"]) for v in variants] == [(0.5, 0), (0.5, 1)]
  state, test = reference_run(config, variants[1])   # seed 1 at rate 0.5: its own init, data order, dropout masks
  assert all(leaves_dtypes(r["params"]) == {"float32"} for r in results)
  # The same computation in the same dtype, lifted over variants: equal up to float32 reassociation, which a
  # low-precision rounding can turn into one unit of its last place (2^-8) in a few activations.
  for a, b in zip(jax.tree.leaves(results[1]["params"]), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(results[1]["final"]["test_accuracy"], test["accuracy"], atol=1 / 40)
  assert not np.allclose(results[0]["params"]["head"]["kernel"], results[1]["params"]["head"]["kernel"])


# ----------------------------------------------------------------------------------------------------------------
# The config field.
@pytest.mark.parametrize("value", ["float64", "bf16"])
def test_a_bad_dtype_is_one_line_naming_the_field(value, tmp_path, capsys):
  code = launch.run(["launch.py", "--experiment=fashion_convnet", f"--config.train.dtype={value}",
                     f"--workdir={tmp_path / 'run'}"])
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith(f"error: config.train.dtype={value!r}: must be one of float32, bfloat16, float16")
  assert not (tmp_path / "run").exists()
