"""Training pieces: losses by name, TrainState, a pure train step and eval step, evaluation; the CPU chunk size and
the probe that measures it per machine. Optimizers by name are jcnn/train/optim.py.

The pieces are plain functions so research code can use them without the launcher:
  state = init_state(model, tx, key, sample_x)
  step = jax.jit(make_train_step(model, tx))           # (state, x, y, rng) -> (state, metrics)
  metrics = evaluate(model, state, x_test, y_test)    # {'loss', 'accuracy', 'count'}
Mixed precision: dtype="bfloat16" or "float16" in init_state, make_train_step and make_eval_step ("Mixed precision"
below; a float16 state carries a LossScale).
Metrics are pytrees of sums and counts (`loss_sum`, `correct`, `count`): they add across steps and vmap across variants.
The loop that drives these for runs and sweeps (checkpoints, writers, resume) is jcnn/train/loop.py.
"""
from __future__ import annotations

import concurrent.futures
import functools
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jcnn import data as data_lib, models
from jcnn.config import DTYPES
from jcnn.errors import ConfigError, ShapeError
from jcnn.parallel import machine
from jcnn.train import tasks
from jcnn.train.optim import make_optimizer
from jcnn.train.tasks import per_example_loss


# ----------------------------------------------------------------------------------------------------------------
# Losses and metric sums per task: jcnn/train/tasks.py (per_example_loss is re-exported here).


def l2_penalty(params) -> jax.Array:
  """0.5 * sum of squared kernel weights (biases, norm scales and prelu slopes are not penalised)."""
  leaves = [p for path, p in jax.tree_util.tree_leaves_with_path(params)
            if getattr(path[-1], "key", None) == "kernel"]
  return 0.5 * sum(jnp.sum(jnp.square(p)) for p in leaves) if leaves else jnp.zeros(())


# ----------------------------------------------------------------------------------------------------------------
# Mixed precision. Model code is unchanged: the step casts the float32 parameters and the input to the compute dtype
# before `model.apply` (the cast is differentiated, so gradients arrive in float32, for the float32 parameters) and
# the logits back to float32 before the loss. Parameters, optimizer state, BatchNorm running statistics (flax reduces
# in float32; the step casts them back to be sure) and the loss reduction stay float32. Evaluation computes in the
# same dtype. float16 (5 exponent bits: values under 6e-8 flush to zero, over 65504 overflow) adds dynamic loss
# scaling as jmp, apex and torch's GradScaler do: the loss is multiplied by `scale` before the backward pass and the
# gradients divided by it after; a step whose gradients are not all finite is skipped (parameters, optimizer state
# and BatchNorm statistics unchanged, the step counter advances) and halves the scale; LOSS_SCALE_PERIOD finite steps
# in a row double it. A skipped step's metrics are its (finite, unscaled) loss, so the loop neither counts it as
# divergence nor poisons its sums; a non-finite loss (the forward pass left float16's range, which scaling cannot fix)
# is divergence as in float32. A float32 step takes none of these branches: its program is the plain one.
LOSS_SCALE_INIT = 2.0 ** 15      # jmp's and apex's initial scale
LOSS_SCALE_PERIOD = 2000         # finite steps in a row before the scale doubles (jmp, apex)


class LossScale(struct.PyTreeNode):
  scale: jax.Array       # float32 scalar: the loss is multiplied by it before the backward pass (>= 1)
  good_steps: jax.Array  # int32 scalar: finite steps in a row since the scale last changed
  skipped: jax.Array     # int32 scalar: steps skipped for non-finite gradients, in all (a record)

  @classmethod
  def create(cls, scale: float = LOSS_SCALE_INIT) -> "LossScale":
    return cls(scale=jnp.asarray(scale, jnp.float32), good_steps=jnp.zeros((), jnp.int32),
               skipped=jnp.zeros((), jnp.int32))


def update_loss_scale(ls: LossScale, grads_finite: jax.Array, period: int = LOSS_SCALE_PERIOD) -> LossScale:
  """The scale after a step: non-finite gradients halve it (not below 1) and restart the count; the `period`-th
  finite step in a row doubles it and restarts the count."""
  good = ls.good_steps + 1
  grow = good >= period
  scale = jnp.where(grads_finite, jnp.where(grow, ls.scale * 2, ls.scale), jnp.maximum(ls.scale / 2, 1.0))
  return LossScale(scale=scale, good_steps=jnp.where(grads_finite & ~grow, good, 0),
                   skipped=ls.skipped + (~grads_finite).astype(jnp.int32))


def compute_dtype(name: str) -> jnp.dtype:
  if name not in DTYPES:
    raise ConfigError(f"unknown compute dtype {name!r}: set config.train.dtype to one of {', '.join(DTYPES)}")
  return jnp.dtype(name)


def cast_floats(tree, dtype):
  """Every floating-point leaf of `tree` as `dtype`; integer leaves (token ids, labels) unchanged."""
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def all_finite(tree) -> jax.Array:
  """bool scalar: every element of every leaf is finite."""
  return jnp.all(jnp.asarray([jnp.isfinite(a).all() for a in jax.tree.leaves(tree)]))


# ----------------------------------------------------------------------------------------------------------------
# Recipes (config.train: label_smoothing, mixup_alpha, cutmix_alpha, clip_norm, ema_decay). Each is off at 0, and
# each may be a traced value (a sweep axis): a traced 0 computes what the recipe-free step computes (the arithmetic
# selects 1 for the mixing weight, skips the clip, copies the parameters into the average). A value that is a Python
# 0 leaves the recipe out of the program altogether.
#   label smoothing  cross-entropy against (1 - eps) one-hot + eps / K (jcnn/train/tasks.py)
#   mixup, cutmix    per step: key k = fold_in(step key, MIX_FOLD); k_perm, k_mixup, k_cutmix, k_row, k_col,
#                    k_switch = split(k, 6); a permutation of the batch, lam ~ Beta(alpha, alpha); mixup blends the
#                    images, cutmix pastes a box (CutMix, Yun et al. 2019: cut ratio sqrt(1 - lam), centre uniform,
#                    clipped to the image; lam becomes the share of the image left). With both alphas > 0 each step
#                    picks cutmix with probability 0.5 (timm's switch). Loss: lam L(y) + (1 - lam) L(y[perm]);
#                    the training accuracy counts hits against the original labels y.
#   clip_norm        gradients (l2 term included) times min(1, c / global norm) before the optimizer
#   ema_decay        TrainState.ema = decay ema + (1 - decay) params after each step, from the initial parameters;
#                    evaluation (make_eval_step) and checkpoint.load_trained use it
MIX_FOLD = 0x6D6978   # "mix": fold_in(step key, MIX_FOLD) is the mixing key (chunk keys fold in 0, 1, ...)


def is_off(value) -> bool:
  """A recipe's value known, outside the trace, to be 0 (a traced value is never off: it may vary per variant)."""
  return isinstance(value, (int, float)) and value == 0


def mix_weight(key: jax.Array, alpha) -> jax.Array:
  """float32 scalar lam ~ Beta(alpha, alpha); exactly 1 when alpha is 0 (no mixing)."""
  on = alpha > 0
  lam = jax.random.beta(key, jnp.where(on, alpha, 1.0), jnp.where(on, alpha, 1.0))
  return jnp.where(on, lam, 1.0).astype(jnp.float32)


def cutmix_box(k_row: jax.Array, k_col: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
  """[H, W] bool: the box to paste, of side floor(sqrt(1 - lam) * side) around a uniform centre, clipped to the
  image (the CutMix paper's rand_bbox)."""
  r = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = jnp.floor(height * r).astype(jnp.int32), jnp.floor(width * r).astype(jnp.int32)
  cy, cx = jax.random.randint(k_row, (), 0, height), jax.random.randint(k_col, (), 0, width)
  y1, y2 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x1, x2 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height), jnp.arange(width)
  return ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]


def mix_batch(key: jax.Array, x: jax.Array, mixup_alpha, cutmix_alpha) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(mixed x [B, H, W, C], perm [B], lam): the batch mixed with x[perm] by mixup or cutmix (see "Recipes");
  lam is the weight of the original labels. Both alphas 0: x unchanged, lam = 1."""
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim != 4:
    raise ConfigError(f"config.train.mixup_alpha / cutmix_alpha mix images [B, H, W, C] of real values, not "
                      f"{x.dtype} inputs of shape {tuple(x.shape)}: set both to 0")
  k_perm, k_mixup, k_cutmix, k_row, k_col, k_switch = jax.random.split(key, 6)
  B, H, W = x.shape[:3]
  perm = jax.random.permutation(k_perm, B)                        # [B]
  xp = x[perm]                                                    # [B, H, W, C]
  lam_mix = mix_weight(k_mixup, mixup_alpha)
  box = cutmix_box(k_row, k_col, mix_weight(k_cutmix, cutmix_alpha), H, W)   # [H, W]
  lam_cut = 1.0 - box.sum().astype(jnp.float32) / (H * W)         # the share of the image left after clipping
  both = (mixup_alpha > 0) & (cutmix_alpha > 0)
  use_cut = jnp.where(both, jax.random.bernoulli(k_switch), cutmix_alpha > 0)
  mixed = jnp.where(use_cut, jnp.where(box[None, :, :, None], xp, x), lam_mix * x + (1 - lam_mix) * xp)
  return mixed.astype(x.dtype), perm, jnp.where(use_cut, lam_cut, lam_mix)


def clip_by_global_norm(grads, max_norm):
  """grads * min(1, max_norm / global norm) (optax.clip_by_global_norm); max_norm 0 leaves them unchanged."""
  norm = optax.tree.norm(grads)
  clip = (max_norm > 0) & (norm >= max_norm)
  return jax.tree.map(lambda g: jnp.where(clip, g / norm.astype(g.dtype) * max_norm, g), grads)


def ema_update(ema, params, decay):
  """decay * ema + (1 - decay) * params, per leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def eval_params(state: "TrainState"):
  """The parameters evaluation uses: the moving average when the state keeps one, else the trained parameters."""
  return state.params if state.ema is None else state.ema


# ----------------------------------------------------------------------------------------------------------------
# State and steps.
class TrainState(struct.PyTreeNode):
  step: jax.Array       # int32 scalar: optimizer steps taken
  params: Any           # float32, whatever the compute dtype
  batch_stats: Any      # BatchNorm running statistics ({} when the model has none), float32
  opt_state: Any
  loss_scale: Any = None   # LossScale when computing in float16; None (no leaves, the same pytree) otherwise
  ema: Any = None          # the parameters' moving average (config.train.ema_decay); None (no leaves) when off


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, sample_x: jax.Array,
               dtype: str = "float32", ema: bool = False) -> TrainState:
  """Initialises parameters from `key` on one example's shape. A model that cannot take the shape raises ShapeError.
  `dtype` is the compute dtype of the steps that will train it: float16 adds the initial LossScale. `ema`: keep a
  moving average of the parameters (starting at the initial parameters)."""
  k_params, k_dropout = jax.random.split(key)
  try:
    # jitted: un-jitted init dispatches (and compiles) every random op separately, ~10x slower on CPU.
    variables = jax.jit(functools.partial(model.init, train=False))({"params": k_params, "dropout": k_dropout},
                                                                    sample_x[:1])
  except (ValueError, TypeError) as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    hint = ("; feature vectors [1, 1, D] (tables, toy:NAME) go to Dense-only models: set config.model.name=mlp"
            if tuple(sample_x.shape[1:3]) == (1, 1) else "")
    raise ShapeError(f"{type(model).__name__} cannot take input of shape {tuple(sample_x.shape[1:])}: {msg}{hint}") \
        from None
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params),
                    loss_scale=LossScale.create() if compute_dtype(dtype) == jnp.float16 else None,
                    ema=jax.tree.map(jnp.copy, params) if ema else None)


def _apply(model, params, batch_stats, x, train, rng):
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  if train and batch_stats:
    logits, updates = model.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  logits = model.apply(variables, x, train=train, rngs={"dropout": rng} if train else None)
  return logits, batch_stats


# The CPU step runs its batch in chunks (gradients summed, one update): the activations and patch tensors of a chunk
# stay in cache. How big a chunk is best depends on the machine (docs/performance.md: chunks of 16 won 1.15x at batch
# 64 and 1.7x at batch 256 on a 2-core AMD EPYC; the whole batch won at 64 on a 2-core Intel Xeon), so the automatic
# size comes from machine.cpu_micro_batch: measured once per machine and batch, cached (JCNN_MACHINE_CACHE);
# MICRO_BATCH_CPU where nothing is measured (tests) and for batches above MICRO_BATCH_PROBE_MAX (evaluation batches).
MICRO_BATCH_CPU = 16
MICRO_BATCH_PROBE_MAX = 512


def micro_batch_size(batch: int, micro_batch: int = 0, batch_norm: bool = False) -> int:
  """Examples per chunk of one step. `micro_batch` 0 = automatic: on CPU the per-machine choice
  (`machine.cpu_micro_batch`; MICRO_BATCH_CPU when not measured), the whole batch on GPU/TPU and for training models
  with BatchNorm (chunks would change their batch statistics; evaluation may always chunk).
  A size that does not divide the batch becomes the largest divisor below it (automatic: the whole batch if that
  divisor is under 8)."""
  if micro_batch < 0:
    raise ConfigError(f"config.train.micro_batch must be >= 0 (0 = automatic), got {micro_batch}")
  auto = micro_batch == 0
  if auto:
    if batch_norm or jax.default_backend() != "cpu":
      return batch
    micro_batch = (machine.cpu_micro_batch(batch, probe_chunk, MICRO_BATCH_CPU) if batch <= MICRO_BATCH_PROBE_MAX
                   else MICRO_BATCH_CPU)
  m = min(micro_batch, batch)
  while batch % m:
    m -= 1
  return batch if auto and m < 8 else m


PROBE_MARGIN = 1.03      # chunks must beat the whole batch by this much (the whole batch is the simpler program)


def probe_chunk(batch: int, candidates=(16,), windows: int = 5, window_s: float = 0.3) -> dict:
  """Times the Keras convnet's train step (make_train_step, RMSprop) at `batch` on the whole batch and in each
  candidate chunk size, alternating, `windows` windows each; returns {'chunk': best, 'img_per_s': {size: median},
  'ratio': {size: median over windows of its rate / the whole batch's in the same window}}.
  A chunk size is taken only if that paired ratio reaches PROBE_MARGIN: per-window ratios cancel the machine's drift,
  which flipped the earlier choice (medians of 3 windows of 0.15 s compared apart) between runs. It compiles two
  programs and times them, once per machine and batch; what that costs: docs/performance.md
  (benchmarks/chunk_probe.py)."""
  model = models.get({"name": "convnet"}, num_classes=10)
  tx = make_optimizer({"name": "rmsprop", "learning_rate": 1e-3})

  @jax.jit
  def setup():   # one program (op-by-op set-up would compile ~100 small ones: seconds)
    x = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1))
    params = model.init(jax.random.key(2), x[:1])["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                            opt_state=tx.init(params)), x, jax.random.randint(jax.random.key(1), (batch,), 0, 10)

  state0, x, y = setup()
  sizes = [batch] + sorted({d for d in (micro_batch_size(batch, m) for m in candidates) if 8 <= d < batch})
  key = jax.random.key(3)
  compile_one = lambda m: jax.jit(make_train_step(model, tx, micro_batch=m)).lower(state0, x, y, key).compile()
  with concurrent.futures.ThreadPoolExecutor(len(sizes)) as pool:   # XLA compiles mostly on one core: overlap them
    steps = dict(zip(sizes, pool.map(compile_one, sizes)))
  states = {m: jax.block_until_ready(steps[m](state0, x, y, key)[0]) for m in sizes}
  reps = {}
  for m in sizes:   # steps per window from one timed step
    t0 = time.perf_counter()
    states[m] = jax.block_until_ready(steps[m](states[m], x, y, key)[0])
    reps[m] = max(1, int(window_s / max(time.perf_counter() - t0, 1e-6)))
  rates = {m: [] for m in sizes}
  for _ in range(windows):
    for m in sizes:
      t0 = time.perf_counter()
      for _ in range(reps[m]):
        states[m] = steps[m](states[m], x, y, key)[0]
      jax.block_until_ready(states[m])
      rates[m].append(reps[m] * batch / (time.perf_counter() - t0))
  return choose_chunk(batch, rates)


def choose_chunk(batch: int, rates: dict[int, list[float]]) -> dict:
  """The probe's decision from its windows: `rates[size]` lists images/s per window, `rates[batch]` the whole batch's."""
  med = {m: float(np.median(r)) for m, r in rates.items()}
  ratio = {m: float(np.median(np.array(rates[m]) / np.array(rates[batch]))) for m in rates if m != batch}
  best = max(ratio, key=ratio.get, default=batch)
  chunk = best if best != batch and ratio[best] >= PROBE_MARGIN else batch
  return {"chunk": chunk, "img_per_s": {str(m): round(v, 1) for m, v in med.items()},
          "ratio": {str(m): round(v, 3) for m, v in ratio.items()}}


def take(tree, i):
  """Every leaf's row i inside a loop body, materialised. A plain dynamic index there is fused into the consumer's
  elementwise loops (a conv bias into the ReLU / max-pool backward), where XLA:CPU recomputes it per element and stops
  vectorising (3.7x slower pool backward, measured); a conditional's result is a buffer of its own."""
  return jax.lax.cond(i >= 0, lambda t: jax.tree.map(lambda a: a[i], t), lambda t: jax.tree.map(lambda a: a[0], t),
                      tree)


def _chunks(m: int, *arrays):
  """[B, ...] arrays -> [B // m, m, ...]."""
  return tuple(a.reshape((a.shape[0] // m, m) + a.shape[1:]) for a in arrays)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, loss: str = "cross_entropy",
                    l2: float | jax.Array = 0.0, micro_batch: int = 0, dtype: str = "float32",
                    loss_scale_period: int = LOSS_SCALE_PERIOD, task: str = "classify", target: dict | None = None,
                    huber_delta: float = 1.0, label_smoothing: float | jax.Array = 0.0,
                    mixup_alpha: float | jax.Array = 0.0, cutmix_alpha: float | jax.Array = 0.0,
                    clip_norm: float | jax.Array = 0.0, ema_decay: float | jax.Array = 0.0) -> Callable:
  """Returns the pure step (state, x [B,...], y [B] (regress: [B, T]), rng) -> (state, metric sums). Its dropout key
  is fold_in(rng, step). `task`, `loss`, `huber_delta`: jcnn/train/tasks.py; `target`: the regression targets'
  statistics (metrics in the target's units). `label_smoothing`, `mixup_alpha`, `cutmix_alpha`, `clip_norm`,
  `ema_decay`: the recipes ("Recipes" above; floats or traced scalars). A state with an `ema` updates it (decay 0:
  the average is the parameters); ema_decay > 0 needs one (init_state(..., ema=True)).

  The batch runs in chunks of `micro_batch_size(B, micro_batch)` examples (chunk c's dropout key: fold_in(key, c));
  their gradients add up to the batch-mean gradient and the optimizer updates once. With BatchNorm and an explicit
  micro_batch, each chunk normalises with its own statistics ("ghost" batch norm) and the running averages update
  once per chunk. `dtype` is the compute dtype ("Mixed precision" above); float16 needs a state from
  init_state(..., dtype="float16") and doubles its loss scale after `loss_scale_period` finite steps in a row."""
  tasks.per_example_loss(loss, jnp.zeros((1, 2)), jnp.zeros((1, 2)) if task == "regress" else
                         jnp.zeros((1,), jnp.int32), task)   # validate the names now, not inside jit
  mixing = not (is_off(mixup_alpha) and is_off(cutmix_alpha))
  if task != "classify" and (mixing or not is_off(label_smoothing)):
    raise ConfigError(f"label smoothing, mixup and cutmix mix class labels, not task {task}: set "
                      f"config.train.label_smoothing, mixup_alpha and cutmix_alpha to 0")
  cdtype = compute_dtype(dtype)
  mixed, scaled = cdtype != jnp.float32, cdtype == jnp.float16

  def train_step(state: TrainState, x, y, rng):
    rng = jax.random.fold_in(rng, state.step)
    B = x.shape[0]
    if scaled and state.loss_scale is None:
      raise ValueError("a float16 step needs a state with a loss scale: init_state(..., dtype='float16')")
    if not is_off(ema_decay) and state.ema is None:
      raise ValueError("ema_decay > 0 needs a state with a moving average: init_state(..., ema=True)")
    labels, lam = (y,), None                         # ([B],) or, mixing, (y [B], y[perm] [B])
    if mixing:
      x, perm, lam = mix_batch(jax.random.fold_in(rng, MIX_FOLD), x, mixup_alpha, cutmix_alpha)
      labels = (y, y[perm])

    def chunk_loss(params, batch_stats, xc, lc, r):  # chunk loss sum / B: chunk gradients add up to the batch's
      if mixed:   # differentiated casts: the gradients come back float32
        params, xc = cast_floats(params, cdtype), cast_floats(xc, cdtype)
      logits, batch_stats = _apply(model, params, batch_stats, xc, True, r)
      if mixed:
        logits, batch_stats = logits.astype(jnp.float32), cast_floats(batch_stats, jnp.float32)
      yc = lc[0]
      losses = tasks.per_example_loss(loss, logits, yc, task, huber_delta, label_smoothing)   # [m]
      if mixing:
        losses = lam * losses + (1 - lam) * tasks.per_example_loss(loss, logits, lc[1], task, huber_delta,
                                                                   label_smoothing)
      objective = losses.sum() / B * state.loss_scale.scale if scaled else losses.sum() / B
      return objective, (tasks.sums(task, losses, logits, yc, target), batch_stats)

    grad_fn = jax.grad(chunk_loss, has_aux=True)
    m = micro_batch_size(B, micro_batch, bool(state.batch_stats))
    if m == B:
      grads, (metrics, batch_stats) = grad_fn(state.params, state.batch_stats, x, labels, rng)
    else:
      xs, *ls = _chunks(m, x, *labels)               # [B/m, m, ...]

      def body(carry, c):
        g, ms, bs = carry
        xc, lc = take((xs, tuple(ls)), c)
        gc, (ms_c, bs) = grad_fn(state.params, bs, xc, lc, jax.random.fold_in(rng, c))
        return (jax.tree.map(jnp.add, g, gc), jax.tree.map(jnp.add, ms, ms_c), bs), None

      zero = (jax.tree.map(jnp.zeros_like, state.params), tasks.zero(task, y.shape[-1]), state.batch_stats)
      (grads, metrics, batch_stats), _ = jax.lax.scan(body, zero, jnp.arange(B // m))
    if scaled:
      grads = jax.tree.map(lambda g: g / state.loss_scale.scale, grads)
    if not (isinstance(l2, (int, float)) and l2 == 0):
      grads = jax.tree.map(lambda g, p: g + l2 * p, grads, jax.grad(l2_penalty)(state.params))
    if not is_off(clip_norm):
      grads = clip_by_global_norm(grads, clip_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                              ema=None if state.ema is None else ema_update(state.ema, params, ema_decay))
    if scaled:   # non-finite gradients: keep the old parameters, optimizer state and statistics; adjust the scale
      finite = all_finite(grads)
      new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new_state, state).replace(
          step=new_state.step, loss_scale=update_loss_scale(state.loss_scale, finite, loss_scale_period))
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, loss: str = "cross_entropy", micro_batch: int = 0,
                   dtype: str = "float32", task: str = "classify", target: dict | None = None,
                   huber_delta: float = 1.0) -> Callable:
  """(state, x, y, mask) -> metric sums over the examples where mask is True (in chunks, as the train step; exact for
  every model: evaluation uses BatchNorm's running statistics), with the moving average of the parameters when the
  state keeps one (`eval_params`). `dtype`, `task`, `target`: as the train step's."""
  cdtype = compute_dtype(dtype)

  def sums(state, x, y, mask):
    params = eval_params(state)
    if cdtype == jnp.float32:
      logits, _ = _apply(model, params, state.batch_stats, x, False, None)
    else:
      logits, _ = _apply(model, cast_floats(params, cdtype), state.batch_stats, cast_floats(x, cdtype), False, None)
      logits = logits.astype(jnp.float32)
    return tasks.sums(task, tasks.per_example_loss(loss, logits, y, task, huber_delta), logits, y, target, mask)

  def eval_step(state: TrainState, x, y, mask):
    m = micro_batch_size(x.shape[0], micro_batch)
    if m == x.shape[0]:
      return sums(state, x, y, mask)
    chunks = _chunks(m, x, y, mask)
    body = lambda acc, c: (jax.tree.map(jnp.add, acc, sums(state, *take(chunks, c))), None)
    return jax.lax.scan(body, tasks.zero(task, y.shape[-1]), jnp.arange(x.shape[0] // m))[0]

  return eval_step


def summarize(metrics) -> dict:
  """Sums -> means as floats: {'loss', 'accuracy' (or 'rmse', 'mae', 'r2'), 'count'}."""
  m = jax.device_get(metrics)
  return {k: float(v) for k, v in tasks.means(m).items()} | {"count": float(m["count"])}


def evaluate(model: nn.Module, state: TrainState, x: jax.Array, y: jax.Array, batch_size: int = 1000,
             loss: str = "cross_entropy", eval_step: Callable | None = None, dtype: str = "float32") -> dict:
  """Loss and accuracy over all of (x, y), in fixed-shape batches gathered on the device (computing in `dtype`)."""
  eval_step = eval_step or _jit_eval_epoch(make_eval_step(model, loss, dtype=dtype))
  idx, mask = data_lib.eval_batches(len(y), batch_size)
  return summarize(eval_step(state, x, y, jnp.asarray(idx), jnp.asarray(mask)))


def zero_metrics(shape=(), task: str = "classify", target_dim: int = 1) -> dict:
  return tasks.zero(task, target_dim, shape)


def eval_epoch(eval_step, state, x, y, idx, mask) -> dict:
  """Metric sums over fixed-size batches idx [steps, B] (mask [steps, B]), gathered on the device; traceable."""

  def body(acc, im):
    i, m = im
    return jax.tree.map(jnp.add, acc, eval_step(state, x[i], y[i], m)), None

  batch = lambda a: jax.ShapeDtypeStruct(idx.shape[1:] + a.shape[1:], a.dtype)   # one batch's shape, no ops
  shapes = jax.eval_shape(eval_step, state, batch(x), batch(y), jax.ShapeDtypeStruct(mask.shape[1:], mask.dtype))
  return jax.lax.scan(body, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes), (idx, mask))[0]


def _jit_eval_epoch(eval_step):
  """One program for a whole evaluation."""
  return jax.jit(functools.partial(eval_epoch, eval_step))
