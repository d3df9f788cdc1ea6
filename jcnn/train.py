"""Training: optimizers and losses by name, a pure train step and eval step, and `train_and_evaluate(config, workdir)`.

The pieces are plain functions so research code can use them without the launcher:
  state = init_state(model, tx, key, sample_x)
  step = jax.jit(make_train_step(model, tx))           # (state, x, y, rng) -> (state, metrics)
  metrics = evaluate(model, state, x_test, y_test)    # {'loss', 'accuracy', 'count'}
Metrics are pytrees of sums and counts (`loss_sum`, `correct`, `count`): they add across steps and vmap across variants.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jcnn import data as data_lib
from jcnn import layers, models, summary
from jcnn.errors import ConfigError, ShapeError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
LOSSES = ("cross_entropy", "mse")


# ----------------------------------------------------------------------------------------------------------------
# Optimizers. The learning rate (and adamw's weight decay) live in the optimizer state as arrays
# (optax.inject_hyperparams), so a sweep can give each variant its own; the schedule is a multiplier chained after.
def make_optimizer(cfg: Mapping[str, Any], total_steps: int = 1) -> optax.GradientTransformation:
  name = cfg["name"]
  if name not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer {name!r}: set config.optim.name to one of {', '.join(OPTIMIZERS)}")
  momentum = cfg.get("momentum", 0.9)
  base = {
      "sgd": optax.sgd,
      "momentum": functools.partial(optax.sgd, momentum=momentum),
      "nesterov": functools.partial(optax.sgd, momentum=momentum, nesterov=True),
      # Keras' RMSprop: rho 0.9, epsilon 1e-7 (optax puts eps inside the sqrt; the difference is negligible here).
      "rmsprop": functools.partial(optax.rmsprop, decay=cfg.get("rho", 0.9), eps=1e-7),
      "adam": optax.adam,
      "adamw": optax.adamw,
  }[name]
  kwargs = {"learning_rate": cfg["learning_rate"]}
  if name == "adamw":
    kwargs["weight_decay"] = cfg.get("weight_decay", 1e-4)
  tx = optax.inject_hyperparams(base)(**kwargs)
  schedule = cfg.get("schedule", "constant")
  if schedule not in SCHEDULES:
    raise ConfigError(f"unknown schedule {schedule!r}: set config.optim.schedule to one of {', '.join(SCHEDULES)}")
  if schedule == "constant":
    return tx
  total_steps = max(int(total_steps), 1)
  if schedule == "cosine":
    mult = optax.cosine_decay_schedule(1.0, total_steps)
  elif schedule == "warmup_cosine":
    warmup = max(int(cfg.get("warmup_fraction", 0.05) * total_steps), 1)
    mult = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps)
  else:  # step: multiply by decay_factor at each boundary (fractions of training; He et al.'s 0.5 and 0.75)
    bounds = {int(b * total_steps): cfg.get("decay_factor", 0.1) for b in cfg.get("boundaries", (0.5, 0.75))}
    mult = optax.piecewise_constant_schedule(1.0, bounds)
  return optax.chain(tx, optax.scale_by_schedule(mult))


def learning_rate_of(opt_state) -> jax.Array:
  """The injected base learning rate inside an optimizer state made by make_optimizer."""
  inner = opt_state[0] if isinstance(opt_state, tuple) and not hasattr(opt_state, "hyperparams") else opt_state
  return inner.hyperparams["learning_rate"]


def set_hyperparam(opt_state, name: str, value):
  """Returns opt_state with an injected hyperparameter (learning_rate, weight_decay) replaced."""
  if hasattr(opt_state, "hyperparams"):
    hp = dict(opt_state.hyperparams)
    hp[name] = jnp.asarray(value, jnp.asarray(hp[name]).dtype)
    return opt_state._replace(hyperparams=hp)
  return (set_hyperparam(opt_state[0], name, value),) + tuple(opt_state[1:])


# ----------------------------------------------------------------------------------------------------------------
# Losses: per-example values [B].
def per_example_loss(name: str, logits: jax.Array, labels: jax.Array) -> jax.Array:
  if name == "cross_entropy":
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if name == "mse":  # the softmax output against the one-hot target, as Keras' 'mse' on a softmax layer
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return jnp.mean((jax.nn.softmax(logits) - onehot) ** 2, axis=-1)
  raise ConfigError(f"unknown loss {name!r}: set config.train.loss to one of {', '.join(LOSSES)}")


def l2_penalty(params) -> jax.Array:
  """0.5 * sum of squared kernel weights (biases, norm scales and prelu slopes are not penalised)."""
  leaves = [p for path, p in jax.tree_util.tree_leaves_with_path(params)
            if getattr(path[-1], "key", None) == "kernel"]
  return 0.5 * sum(jnp.sum(jnp.square(p)) for p in leaves) if leaves else jnp.zeros(())


# ----------------------------------------------------------------------------------------------------------------
# State and steps.
class TrainState(struct.PyTreeNode):
  step: jax.Array       # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any      # BatchNorm running statistics ({} when the model has none)
  opt_state: Any


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, sample_x: jax.Array) -> TrainState:
  """Initialises parameters from `key` on one example's shape. A model that cannot take the shape raises ShapeError."""
  k_params, k_dropout = jax.random.split(key)
  try:
    # jitted: un-jitted init dispatches (and compiles) every random op separately, ~10x slower on CPU.
    variables = jax.jit(functools.partial(model.init, train=False))({"params": k_params, "dropout": k_dropout},
                                                                    sample_x[:1])
  except (ValueError, TypeError) as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ShapeError(f"{type(model).__name__} cannot take input of shape {tuple(sample_x.shape[1:])}: {msg}") from None
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params))


def _apply(model, params, batch_stats, x, train, rng):
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  if train and batch_stats:
    logits, updates = model.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  logits = model.apply(variables, x, train=train, rngs={"dropout": rng} if train else None)
  return logits, batch_stats


# The CPU step runs its batch in chunks of this many examples (gradients summed, one update): the activations and
# patch tensors of a chunk stay in cache. Measured on 2 cores (benchmarks/throughput.py, docs/performance.md): 1.15x
# at batch 64 and 1.7x at batch 256 against the whole batch at once; chunks of 8 were no faster, 32 slower.
MICRO_BATCH_CPU = 16


def micro_batch_size(batch: int, micro_batch: int = 0, batch_norm: bool = False) -> int:
  """Examples per chunk of one step. `micro_batch` 0 = automatic: MICRO_BATCH_CPU on CPU, the whole batch on GPU/TPU
  and for training models with BatchNorm (chunks would change their batch statistics; evaluation may always chunk).
  A size that does not divide the batch becomes the largest divisor below it (automatic: the whole batch if that
  divisor is under 8)."""
  if micro_batch < 0:
    raise ConfigError(f"config.train.micro_batch must be >= 0 (0 = automatic), got {micro_batch}")
  auto = micro_batch == 0
  if auto:
    if batch_norm or jax.default_backend() != "cpu":
      return batch
    micro_batch = MICRO_BATCH_CPU
  m = min(micro_batch, batch)
  while batch % m:
    m -= 1
  return batch if auto and m < 8 else m


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
                    l2: float | jax.Array = 0.0, micro_batch: int = 0) -> Callable:
  """Returns the pure step (state, x [B,...], y [B], rng) -> (state, metrics). Its dropout key is fold_in(rng, step).

  The batch runs in chunks of `micro_batch_size(B, micro_batch)` examples (chunk c's dropout key: fold_in(key, c));
  their gradients add up to the batch-mean gradient and the optimizer updates once. With BatchNorm and an explicit
  micro_batch, each chunk normalises with its own statistics ("ghost" batch norm) and the running averages update
  once per chunk."""
  per_example_loss(loss, jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))  # validate the name now, not inside jit

  def train_step(state: TrainState, x, y, rng):
    rng = jax.random.fold_in(rng, state.step)
    B = x.shape[0]

    def chunk_loss(params, batch_stats, xc, yc, r):  # chunk loss sum / B: chunk gradients add up to the batch's
      logits, batch_stats = _apply(model, params, batch_stats, xc, True, r)
      losses = per_example_loss(loss, logits, yc)   # [m]
      return losses.sum() / B, (losses.sum(), (logits.argmax(-1) == yc).sum().astype(jnp.float32), batch_stats)

    grad_fn = jax.grad(chunk_loss, has_aux=True)
    m = micro_batch_size(B, micro_batch, bool(state.batch_stats))
    if m == B:
      grads, (loss_sum, correct, batch_stats) = grad_fn(state.params, state.batch_stats, x, y, rng)
    else:
      xs, ys = _chunks(m, x, y)                      # [B/m, m, ...]

      def body(carry, c):
        g, ls, cor, bs = carry
        xc, yc = take((xs, ys), c)
        gc, (ls_c, cor_c, bs) = grad_fn(state.params, bs, xc, yc, jax.random.fold_in(rng, c))
        return (jax.tree.map(jnp.add, g, gc), ls + ls_c, cor + cor_c, bs), None

      zero = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros(()), jnp.zeros(()), state.batch_stats)
      (grads, loss_sum, correct, batch_stats), _ = jax.lax.scan(body, zero, jnp.arange(B // m))
    if not (isinstance(l2, (int, float)) and l2 == 0):
      grads = jax.tree.map(lambda g, p: g + l2 * p, grads, jax.grad(l2_penalty)(state.params))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    metrics = {"loss_sum": loss_sum, "correct": correct, "count": jnp.asarray(B, jnp.float32)}
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, loss: str = "cross_entropy", micro_batch: int = 0) -> Callable:
  """(state, x, y, mask) -> metric sums over the examples where mask is True (in chunks, as the train step; exact for
  every model: evaluation uses BatchNorm's running statistics)."""

  def sums(state, x, y, mask):
    logits, _ = _apply(model, state.params, state.batch_stats, x, False, None)
    m = mask.astype(jnp.float32)
    return {"loss_sum": (per_example_loss(loss, logits, y) * m).sum(),
            "correct": ((logits.argmax(-1) == y) * m).sum(), "count": m.sum()}

  def eval_step(state: TrainState, x, y, mask):
    m = micro_batch_size(x.shape[0], micro_batch)
    if m == x.shape[0]:
      return sums(state, x, y, mask)
    chunks = _chunks(m, x, y, mask)
    body = lambda acc, c: (jax.tree.map(jnp.add, acc, sums(state, *take(chunks, c))), None)
    return jax.lax.scan(body, zero_metrics(), jnp.arange(x.shape[0] // m))[0]

  return eval_step


def summarize(metrics) -> dict:
  """Sums -> means. Works on host dicts of floats."""
  m = jax.device_get(metrics)
  count = float(m["count"])
  return {"loss": float(m["loss_sum"]) / max(count, 1), "accuracy": float(m["correct"]) / max(count, 1),
          "count": count}


def evaluate(model: nn.Module, state: TrainState, x: jax.Array, y: jax.Array, batch_size: int = 1000,
             loss: str = "cross_entropy", eval_step: Callable | None = None) -> dict:
  """Loss and accuracy over all of (x, y), in fixed-shape batches gathered on the device."""
  eval_step = eval_step or _jit_eval_epoch(make_eval_step(model, loss))
  idx, mask = data_lib.eval_batches(len(y), batch_size)
  return summarize(eval_step(state, x, y, jnp.asarray(idx), jnp.asarray(mask)))


def zero_metrics(shape=()) -> dict:
  return {k: jnp.zeros(shape) for k in ("loss_sum", "correct", "count")}


def eval_epoch(eval_step, state, x, y, idx, mask) -> dict:
  """Metric sums over fixed-size batches idx [steps, B] (mask [steps, B]), gathered on the device; traceable."""

  def body(acc, im):
    i, m = im
    return jax.tree.map(jnp.add, acc, eval_step(state, x[i], y[i], m)), None

  return jax.lax.scan(body, zero_metrics(), (idx, mask))[0]


def _jit_eval_epoch(eval_step):
  """One program for a whole evaluation."""
  return jax.jit(functools.partial(eval_epoch, eval_step))


# ----------------------------------------------------------------------------------------------------------------
# Config checks: every user mistake found before any file is written.
def check_config(config) -> None:
  rate = config.model.get("dropout_rate", 0.0)
  try:
    layers.check_rate(rate)
  except ValueError as e:
    raise ConfigError(f"config.model.dropout_rate: {e}") from None
  act = config.model.get("activation", "relu")
  if isinstance(act, str) and act not in layers.ACTIVATIONS:
    raise ConfigError(f"config.model.activation={act!r} is unknown: choose one of {', '.join(layers.ACTIVATIONS)}")
  if config.model.get("init_scale", 1.0) <= 0:
    raise ConfigError(f"config.model.init_scale must be > 0, got {config.model.init_scale}")
  if config.optim.name not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer {config.optim.name!r}: set config.optim.name to one of {', '.join(OPTIMIZERS)}")
  if config.train.loss not in LOSSES:
    raise ConfigError(f"unknown loss {config.train.loss!r}: set config.train.loss to one of {', '.join(LOSSES)}")
  if config.train.batch_size <= 0 or config.train.epochs < 0:
    raise ConfigError("config.train.batch_size must be > 0 and config.train.epochs >= 0")
  micro_batch_size(config.train.batch_size, config.train.get("micro_batch", 0))  # raises ConfigError if < 0
  if config.data.get("augment", "none") not in data_lib.AUGMENTATIONS:
    raise ConfigError(f"unknown augmentation {config.data.augment!r}: choose one of "
                      f"{', '.join(data_lib.AUGMENTATIONS)}")
  if config.data.preprocess not in data_lib.PREPROCESS:
    raise ConfigError(f"unknown preprocessing {config.data.preprocess!r}: choose one of "
                      f"{', '.join(data_lib.PREPROCESS)}")


# ----------------------------------------------------------------------------------------------------------------
# The run record.
def run_record() -> dict:
  """Versions, device and git commit: what a reader needs to reproduce a result."""
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = ""
  return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__, "python": sys.version.split()[0],
          "platform": platform.platform(), "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "git_commit": commit or "unknown", "time": time.strftime("%Y-%m-%d %H:%M:%S")}


class Progress:
  """Prints a progress line (steps/s, ETA, current metrics) about every `every` seconds."""

  def __init__(self, total: int, prefix: str, every: float = 2.0):
    self.total, self.prefix, self.every = total, prefix, every
    self.t0 = self.last = time.perf_counter()
    self.offset = 0   # steps done before t0 (the compiling step), left out of the rate
    self.tty = sys.stdout.isatty()

  def update(self, done: int, metrics: Callable[[], dict], force: bool = False):
    now = time.perf_counter()
    if not force and now - self.last < self.every:
      return None
    m = metrics()                 # waits for the steps dispatched so far: the rate counts finished steps
    now = self.last = time.perf_counter()
    rate = (done - self.offset) / max(now - self.t0, 1e-9)
    eta = (self.total - done) / max(rate, 1e-9)
    line = (f"{self.prefix} {done}/{self.total} steps | {rate:.1f} steps/s | ETA {eta:.0f}s | "
            f"loss {m['loss']:.4f} acc {m['accuracy']:.4f}")
    print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)
    return m

  def close(self):
    if self.tty:
      print(flush=True)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config.model on config.data; writes config.json, metrics.jsonl, results.json and curves.png to workdir."""
  check_config(config)
  if os.path.exists(os.path.join(workdir, "results.json")):  # say so before loading data and compiling
    raise ConfigError(f"{workdir} already holds a finished run (results.json); pass a new --workdir")
  ds = data_lib.load(config.data, seed=config.train.seed)
  model = models.get(config.model, num_classes=ds.num_classes)
  steps_per_epoch = len(ds.train_y) // config.train.batch_size
  data_lib.epoch_batches(jax.random.key(0), len(ds.train_y), config.train.batch_size)  # checks batch <= N
  tx = make_optimizer(config.optim, steps_per_epoch * config.train.epochs)
  key = jax.random.key(config.train.seed)
  k_init, k_data, k_dropout = jax.random.split(key, 3)
  state = init_state(model, tx, k_init, ds.train_x[:1])
  table = summary.summary(model, ds.image_shape, variables={"params": state.params, "batch_stats": state.batch_stats})
  print(table)

  os.makedirs(workdir, exist_ok=True)
  if os.path.exists(os.path.join(workdir, "results.json")):
    raise ConfigError(f"{workdir} already holds a finished run (results.json); pass a new --workdir")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"config": json.loads(config.to_json_best_effort()), "record": run_record()}, f, indent=2)

  mb = config.train.get("micro_batch", 0)
  train_step = make_train_step(model, tx, config.train.loss, config.train.l2, mb)

  augment = config.data.get("augment", "none")

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def run_step(state, acc, images, labels, batches, rng):
    idx = batches[state.step % batches.shape[0]]             # [B] indices, gathered on the device
    x = data_lib.augment(jax.random.fold_in(rng, -1 - state.step), images[idx], augment)  # [B, H, W, C]
    state, m = train_step(state, x, labels[idx], rng)
    return state, jax.tree.map(jnp.add, acc, m)

  eval_fn = _jit_eval_epoch(make_eval_step(model, config.train.loss, mb))

  eval_sets = {split: (x, y, *(jnp.asarray(a) for a in data_lib.eval_batches(len(y), config.train.eval_batch_size)))
               for split, (x, y) in {"val": (ds.val_x, ds.val_y), "test": (ds.test_x, ds.test_y)}.items()
               if x is not None}   # fixed-size batch indices, on the device once for the whole run
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history, t_start, compile_s = [], time.perf_counter(), None
  with open(metrics_path, "a") as log:
    for epoch in range(1, config.train.epochs + 1):
      batches = data_lib.epoch_batches(jax.random.fold_in(k_data, epoch), len(ds.train_y), config.train.batch_size)
      acc, log_acc = zero_metrics(), zero_metrics()
      progress = Progress(steps_per_epoch, f"epoch {epoch}/{config.train.epochs}")
      t_epoch = time.perf_counter()
      for i in range(steps_per_epoch):
        if compile_s is None:
          t0 = time.perf_counter()
          state, acc = run_step(state, acc, ds.train_x, ds.train_y, batches, k_dropout)
          jax.block_until_ready(acc)
          compile_s = time.perf_counter() - t0
          print(f"compiled the train step in {compile_s:.1f}s (first step included)", flush=True)
          progress.t0 = progress.last = time.perf_counter()
          progress.offset = 1
          continue
        state, acc = run_step(state, acc, ds.train_x, ds.train_y, batches, k_dropout)
        if (i + 1) % config.train.log_every == 0:
          m = summarize(jax.tree.map(jnp.subtract, acc, log_acc))
          log_acc = jax.tree.map(jnp.copy, acc)
          log.write(json.dumps({"kind": "train", "step": int(state.step), "epoch": epoch, **m}) + "\n")
        progress.update(i + 1, lambda: summarize(acc))
      train_m = summarize(acc)
      epoch_s = time.perf_counter() - t_epoch
      progress.close()
      row = {"kind": "epoch", "epoch": epoch, "step": int(state.step), "train_loss": train_m["loss"],
             "train_accuracy": train_m["accuracy"], "epoch_seconds": epoch_s}
      for split, args in eval_sets.items():
        m = summarize(eval_fn(state, *args))
        row[f"{split}_loss"], row[f"{split}_accuracy"] = m["loss"], m["accuracy"]
      log.write(json.dumps(row) + "\n")
      log.flush()
      history.append(row)
      extra = f" | val acc {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
      print(f"epoch {epoch}/{config.train.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
            f"{extra} | test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f} | {epoch_s:.1f}s", flush=True)

  if not history:  # epochs = 0: evaluate the initial model
    m = summarize(eval_fn(state, *eval_sets["test"]))
    history.append({"epoch": 0, "test_loss": m["loss"], "test_accuracy": m["accuracy"]})
  results = {"experiment": config.get("name", ""), "model": config.model.name, "dataset": config.data.name,
             "params": summary.count_params(state.params), "epochs": config.train.epochs,
             "final": history[-1], "compile_seconds": compile_s,
             "wall_seconds": time.perf_counter() - t_start,
             "train_images_per_second": (steps_per_epoch * config.train.batch_size * config.train.epochs /
                                         max(sum(h.get("epoch_seconds", 0) for h in history), 1e-9))}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  try:
    from jcnn import viz  # pylint: disable=g-import-not-at-top  (matplotlib only when plotting)
    viz.plot_learning_curves(metrics_path, os.path.join(workdir, "curves.png"))
  except ImportError:
    pass
  print(f"results: {os.path.join(workdir, 'results.json')}")
  return {"results": results, "state": state, "history": history}
