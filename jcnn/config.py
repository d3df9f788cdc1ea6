"""The config schema: every field of an experiment, its default, what values it allows, and what it means.

Experiments derive from `base_config()` and override fields (experiments/fashion_convnet.py); library code reads
defaults from here, never from `.get(key, default)` copies. Each field is one `Field(default, check, doc)` row, so its
constraint sits beside its default and comment; `check_config` runs every check before data is loaded or a file is
written, and a wrong value gets one line naming the field, the value and what is allowed.

    c = base_config(); c.train.epochs = 10                  # locked: a mistyped key is an error
    check_config(c)                                         # ConfigError("config.train.epochs=-1: must be >= 0")
    with_defaults("optim", {"name": "sgd"})                 # a partial section completed from the schema
"""
from __future__ import annotations

import ast
import math
from typing import Any, Callable, Mapping, NamedTuple

import ml_collections

from jcnn.errors import ConfigError

Check = Callable[[Any], "str | None"]   # value -> what is allowed (the error's tail), or None when the value is fine


class Field(NamedTuple):
  default: Any
  check: Check | None
  doc: str


# ----------------------------------------------------------------------------------------------------------------
# Checks: each returns None for a good value, else a phrase saying what is allowed.
def integer(lo: int | None = None, hi: int | None = None) -> Check:
  def check(v):
    if isinstance(v, bool) or not isinstance(v, int):
      return f"must be an integer{_bounds(lo, hi)}"
    if (lo is not None and v < lo) or (hi is not None and v > hi):
      return f"must be{_bounds(lo, hi)}"
    return None
  return check


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
  def check(v):
    bounds = _bounds(lo, hi, lo_open, hi_open)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      return f"must be a finite number{bounds}"
    if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and (v > hi or (hi_open and v == hi)):
      return f"must be{bounds}"
    return None
  return check


def choice(*options, lazy: Callable[[], tuple] | None = None) -> Check:
  def check(v):
    opts = tuple(lazy()) if lazy else options
    return None if isinstance(v, str) and v in opts else f"must be one of {', '.join(opts)}"
  return check


def text(v):
  return None if isinstance(v, str) else "must be a string"


def shape(v):
  ok = isinstance(v, (tuple, list)) and v and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)
  return None if ok else "must be a tuple of positive integers"


def size_or_empty(v):
  return None if (isinstance(v, (tuple, list)) and len(v) == 0) or (shape(v) is None and len(v) == 2) else \
      "must be () or (height, width) in pixels"


def choice_int(*options) -> Check:
  def check(v):
    ok = isinstance(v, int) and not isinstance(v, bool) and v in options
    return None if ok else f"must be one of {', '.join(map(str, options))}"
  return check


def fractions(v):
  """Step-schedule boundaries: fractions of training in (0, 1), increasing."""
  ok = (isinstance(v, (tuple, list)) and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1
                                               for b in v) and all(a < b for a, b in zip(v, v[1:])))
  return None if ok else "must be increasing fractions of training in (0, 1), e.g. (0.5, 0.75)"


def _bounds(lo, hi, lo_open=False, hi_open=False) -> str:
  parts = []
  if lo is not None:
    parts.append(f"{'>' if lo_open else '>='} {lo:g}")
  if hi is not None:
    parts.append(f"{'<' if hi_open else '<='} {hi:g}")
  return (" " + " and ".join(parts)) if parts else ""


def _models():
  from jcnn import models  # pylint: disable=g-import-not-at-top  (the zoo imports flax; the schema itself does not)
  return sorted(models.ZOO)


def _activations():
  from jcnn.nn import layers  # pylint: disable=g-import-not-at-top
  return tuple(layers.ACTIVATIONS)


OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
TASKS = ("classify", "binary", "regress")
LOSSES = ("cross_entropy", "mse", "mae", "huber")
TASK_LOSSES = {"classify": ("cross_entropy", "mse"), "binary": ("cross_entropy", "mse"),   # what fits each task
               "regress": ("mse", "mae", "huber")}
TASK_METRICS = {"classify": ("loss", "accuracy"), "binary": ("loss", "accuracy"),   # what each task's epoch rows hold
                "regress": ("loss", "rmse", "mae", "r2")}
LOWER_IS_BETTER = ("loss", "rmse", "mae")   # a metric whose name ends in _NAME improves downwards; the others upwards
PREPROCESS = ("scale", "standardize", "minmax", "mean_norm", "center", "log", "arctan", "ratio", "none")
AUGMENTATIONS = ("none", "flip", "crop", "flip_crop")
DTYPES = ("float32", "bfloat16", "float16")   # compute dtypes (jcnn/train/step.py, "Mixed precision")

# ----------------------------------------------------------------------------------------------------------------
# The schema. Model sections may hold further fields of their model (features, dense, pool, ...): the model's
# constructor checks those.
SCHEMA: dict[str, dict[str, Field]] = {
    "": {
        "name": Field("", text, "the experiment's name (its file under experiments/)"),
        "description": Field("", text, "one line for `launch.py --list`"),
    },
    "model": {
        "name": Field("convnet", choice(lazy=_models), "a jcnn.models.ZOO entry"),
        "activation": Field("relu", choice(lazy=_activations), "hidden-layer activation, by name"),
        "dropout_rate": Field(0.0, real(0, 1, hi_open=True), "0 disables dropout; 0.5 drops half the units"),
        "init_scale": Field(1.0, real(0, lo_open=True), "multiplies the Glorot-uniform initial weights"),
    },
    "data": {
        "name": Field("fashion_mnist", text, "fashion_mnist | mnist | cifar10 | imdb_reviews | synthetic; your own "
                                             "data: folder | arrays | csv (read data.path) | tfds:NAME (prepared)"),
        "data_dir": Field("", text, "extra folder to search for IDX files (also $JCNN_DATA_DIR); TFDS's data_dir"),
        "path": Field("", text, "folder / arrays / csv: an image folder, an .npz (or folder of .npy), a CSV file or "
                                "folder"),
        "image_size": Field((), size_or_empty, "folder: resize every image to (H, W), bilinear; () = keep (all one "
                                               "size)"),
        "channels": Field(0, choice_int(0, 1, 3), "folder: convert to 1 (grey) or 3 (RGB) channels; 0 = keep (all "
                                                  "one mode)"),
        "test_fraction": Field(0.2, real(0, 1, lo_open=True, hi_open=True),
                               "folder / csv without a test split: the share of each class held out for testing"),
        "target": Field("label", text, "csv: the target column's name, or several comma-separated for a regression "
                                       "target of several values (the other columns are the features)"),
        "target_preprocess": Field("none", choice(*PREPROCESS), "train.task=regress: the targets' transform, from "
                                                                "the training split (predictions are transformed "
                                                                "back: metrics, predict and export are in the "
                                                                "target's units)"),
        "preprocess_test": Field("train_stats", choice("train_stats", "none"),
                                 "val / test inputs mapped with the training split's statistics (train_stats), or "
                                 "left raw (none: the mistake the standardisation lesson shows)"),
        "noise": Field(0.1, real(0), "toy:NAME problems: std of the Gaussian noise (gates: on the training inputs)"),
        "stream": Field("auto", choice("auto", "on", "off"), "read batches from disk with grain (on), keep the data "
                                                             "on the device (off), or stream when it is large (auto)"),
        "stream_above_mb": Field(2048, integer(0), "auto streams when the decoded training split exceeds this many "
                                                   "MiB (float32)"),
        "workers": Field(-1, integer(-1, 64), "streaming: worker processes that read and decode (0 = this process, "
                                              "between steps; -1 = auto: half the cores for >= 20,000 image files)"),
        "order_seed": Field(-1, integer(-1), "the epoch order's seed (-1 = train.seed); a sweep whose variants share "
                                             "it reads each streamed batch once"),
        "preprocess": Field("scale", choice(*PREPROCESS), "pixels / 255, then per channel (training-split "
                                                          "statistics): standardize (z-score), minmax [0, 1], "
                                                          "mean_norm [-1, 1], center, log (> 0), arctan (-1, 1), "
                                                          "ratio (x / max|x|), or none"),
        "val_size": Field(0, integer(0), "examples held out of the training split for validation"),
        "train_limit": Field(0, integer(0), "use only the first N training examples (0 = all)"),
        "test_limit": Field(0, integer(0), "use only the first N test examples (0 = all)"),
        "pad": Field(0, integer(0, 512), "zero-pad each image side by this many pixels"),
        "augment": Field("none", choice(*AUGMENTATIONS), "on the device, per step: none | flip | crop | flip_crop"),
        "max_len": Field(400, integer(1), "text datasets: tokens per example (cut or zero-padded)"),
        "vocab_size": Field(20000, integer(3), "text datasets: vocabulary size, padding and unknown included"),
        "synthetic_shape": Field((28, 28, 1), shape, "synthetic dataset: image shape"),
        "synthetic_size": Field((2048, 512), shape, "synthetic dataset: (training, test) examples"),
    },
    "train": {
        "epochs": Field(5, integer(0), "passes over the training split (raise it when resuming to train longer)"),
        "batch_size": Field(64, integer(1), "examples per optimizer step"),
        "seed": Field(0, integer(0), "initial parameters, data order, dropout masks (a sweep's seeds start here)"),
        "task": Field("classify", choice(*TASKS), "classify (softmax over classes), binary (one sigmoid output, "
                                                  "classes 0 / 1) or regress (real targets of any dimension)"),
        "loss": Field("cross_entropy", choice(*LOSSES), "classify / binary: cross_entropy, or mse of the softmax "
                                                        "(sigmoid) against one-hot; regress: mse, mae or huber"),
        "huber_delta": Field(1.0, real(0, lo_open=True), "huber: where the loss turns from quadratic to linear"),
        "l2": Field(0.0, real(0), "adds l2 * 0.5 * sum(kernel ** 2) to the loss"),
        "micro_batch": Field(0, integer(0), "examples per chunk of a step (0 = automatic: on CPU without "
                                            "BatchNorm the size measured once per machine, jcnn.parallel.machine; "
                                            "else the whole batch)"),
        "dtype": Field("float32", choice(*DTYPES), "compute dtype of the forward and backward passes; parameters, "
                                                   "optimizer state, BatchNorm statistics and the loss stay float32; "
                                                   "float16 adds dynamic loss scaling (float32 is fastest on CPU)"),
        "log_every": Field(100, integer(1), "steps between train rows of metrics.jsonl and TensorBoard"),
        "eval_batch_size": Field(1000, integer(1), "examples per evaluation batch"),
        # Training recipes (jcnn/train/step.py, "Recipes"); each is off at 0 and may be a sweep axis.
        "label_smoothing": Field(0.0, real(0, 1, hi_open=True), "classify with cross_entropy: the targets are "
                                                                "(1 - eps) one-hot + eps / classes (0 = off)"),
        "mixup_alpha": Field(0.0, real(0), "classify: mix each batch with a permutation of itself, weight "
                                           "~ Beta(alpha, alpha) (0 = off; with cutmix_alpha > 0 each step picks "
                                           "one of the two, at even odds)"),
        "cutmix_alpha": Field(0.0, real(0), "classify: paste a box of a permuted batch into each image, area "
                                            "~ 1 - Beta(alpha, alpha) (0 = off)"),
        "clip_norm": Field(0.0, real(0), "clip the gradients to this global norm before the optimizer (0 = off)"),
        "ema_decay": Field(0.0, real(0, 1, hi_open=True), "keep an average of the parameters, ema = decay * ema + "
                                                          "(1 - decay) * params per step; evaluation and saved "
                                                          "models use it (0 = off)"),
    },
    "optim": {
        "name": Field("rmsprop", choice(*OPTIMIZERS), "the optimizer"),
        "learning_rate": Field(1e-3, real(0, lo_open=True), "the base learning rate (the schedule multiplies it)"),
        "momentum": Field(0.9, real(0, 1, hi_open=True), "momentum and nesterov: the momentum coefficient"),
        "rho": Field(0.9, real(0, 1, lo_open=True, hi_open=True), "rmsprop: decay of the squared-gradient average"),
        "weight_decay": Field(1e-4, real(0), "adamw: decoupled weight decay"),
        "schedule": Field("constant", choice(*SCHEDULES), "multiplier of the learning rate over training"),
        "warmup_fraction": Field(0.05, real(0, 1, hi_open=True), "warmup_cosine: share of training warming up"),
        "boundaries": Field((0.5, 0.75), fractions, "step: fractions of training where the rate drops"),
        "decay_factor": Field(0.1, real(0, 1, lo_open=True), "step: multiplier at each boundary"),
    },
    "checkpoint": {
        "every_steps": Field(0, integer(0), "also save every N steps (0 = only at epoch ends and at the end)"),
        "keep": Field(2, integer(1), "checkpoints kept (the newest)"),
        "best": Field("", text, "also keep the checkpoint of the best epoch by this epoch-row metric (val_accuracy, "
                                "val_loss, ...) in checkpoints/best/ ('' = off; single runs)"),
    },
    "stop": {   # single runs that decide from their epoch rows (jcnn.train.decide); docs/experiments.md
        "metric": Field("", text, "stop early when this epoch-row metric (val_loss, val_accuracy, val_rmse, ...) has "
                                  "not improved for `patience` epochs ('' = off; single runs)"),
        "patience": Field(5, integer(1), "epochs without improvement before stopping"),
        "min_delta": Field(0.0, real(0), "an improvement is a change by more than this (stopping and plateau)"),
        "plateau_metric": Field("", text, "multiply the learning rate by `plateau_factor` when this epoch-row metric "
                                          "has not improved for `plateau_patience` epochs ('' = off; single runs)"),
        "plateau_patience": Field(3, integer(1), "epochs without improvement before the learning rate drops"),
        "plateau_factor": Field(0.1, real(0, 1, lo_open=True, hi_open=True), "the learning rate's multiplier on a "
                                                                                "plateau"),
        "min_learning_rate": Field(0.0, real(0), "a plateau never takes the learning rate below this"),
    },
    "mesh": {   # jax.sharding.Mesh axes over the devices (docs/devices.md); 0 = automatic
        "variant": Field(0, integer(0), "devices along a sweep's variant axis (each trains its share of the "
                                        "variants; 0 = all devices for sweeps, 1 for single runs)"),
        "data": Field(0, integer(0), "devices along the data axis (each variant's batch split across them, gradients "
                                     "and BatchNorm statistics averaged; 0 = the devices the variant axis leaves)"),
    },
    "writers": {
        "tensorboard": Field(True, lambda v: None if isinstance(v, bool) else "must be True or False",
                             "write TensorBoard event files under the workdir's tb/"),
    },
}

# Fields a resumed run may change without changing what it computes up to where it stopped.
RESUMABLE_CHANGES = ("description", "train.epochs", "train.log_every", "train.eval_batch_size", "checkpoint.",
                     "writers.", "mesh.",   # a run resumes on another device count
                     "data.stream", "data.workers")   # streamed and in-memory runs compute the same bits


def base_config() -> ml_collections.ConfigDict:
  """Every field at its default. Experiments derive from this and override fields."""
  c = ml_collections.ConfigDict()
  for section, fields in SCHEMA.items():
    node = c
    if section:
      c[section] = ml_collections.ConfigDict()
      node = c[section]
    for key, f in fields.items():
      node[key] = f.default
  return c


def with_defaults(section: str, cfg: Mapping[str, Any] | None = None) -> dict:
  """A section of the config as a dict: the schema's defaults overlaid with `cfg` (which may be partial)."""
  out = {k: f.default for k, f in SCHEMA[section].items()}
  out.update(dict(cfg or {}))
  return out


def flatten(c: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'train.epochs': 5, ...} for a nested config or dict."""
  out = {}
  for k, v in c.items():
    if hasattr(v, "items"):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_value(path: str, value) -> str | None:
  """The error line for config.<path> = value, or None (fields outside the schema are not checked here)."""
  section, _, key = path.rpartition(".")
  f = SCHEMA.get(section, {}).get(key)
  if f is None or f.check is None:
    return None
  problem = f.check(value)
  return f"config.{path}={value!r}: {problem} — {f.doc}" if problem else None


def check_config(config) -> None:
  """Raises ConfigError naming the first field whose value its schema row does not allow."""
  for path, value in flatten(config).items():
    msg = check_value(path, value)
    if msg:
      raise ConfigError(msg)
  check_task(config)
  check_decisions(config)
  # Relations that need the dataset's size (val_size, batch_size against the training images) are checked when it is
  # loaded (data.load, data.epoch_batches), still before any file is written.


def check_task(config) -> None:
  """The loss and the target transform must fit train.task (a section missing from `config` takes its defaults)."""
  train, data = with_defaults("train", config.get("train")), with_defaults("data", config.get("data"))
  task, loss = train["task"], train["loss"]
  if loss not in TASK_LOSSES[task]:
    raise ConfigError(f"config.train.loss={loss} does not fit config.train.task={task}: set config.train.loss to one "
                      f"of {', '.join(TASK_LOSSES[task])}")
  if train["label_smoothing"] > 0 and (task, loss) != ("classify", "cross_entropy"):
    raise ConfigError(f"config.train.label_smoothing={train['label_smoothing']} smooths class targets of a "
                      f"cross-entropy, but config.train.task={task} and config.train.loss={loss}: set "
                      f"config.train.label_smoothing=0 (or task=classify with loss=cross_entropy)")
  for mix in ("mixup_alpha", "cutmix_alpha"):
    if train[mix] > 0 and task != "classify":
      raise ConfigError(f"config.train.{mix}={train[mix]} mixes class labels, but config.train.task={task}: set "
                        f"config.train.{mix}=0 (or config.train.task=classify)")
  if task != "regress" and data["target_preprocess"] != "none":
    raise ConfigError(f"config.data.target_preprocess={data['target_preprocess']} transforms regression targets, but "
                      f"config.train.task={task} has class labels: set config.data.target_preprocess=none (or "
                      f"config.train.task=regress)")


def may_have_val(data: Mapping[str, Any]) -> bool:
  """Whether a data section gives a validation split before it is loaded: data.val_size > 0, or a data.path / TFDS
  source, which may bring its own (jcnn.data.load refuses val_size > 0 for one that does)."""
  data = with_defaults("data", data)
  return data["val_size"] > 0 or bool(data["path"]) or data["name"].startswith("tfds:")


def check_decisions(config, has_val: bool | None = None) -> None:
  """Early stopping, reduce-on-plateau and the best checkpoint must watch a metric the epoch rows record: a train_*
  or val_* metric of train.task, val_* only with a validation split. `has_val`: whether the loaded data has one
  (None: data.val_size > 0, or a data.path / TFDS source, which may bring its own)."""
  train, data = with_defaults("train", config.get("train")), with_defaults("data", config.get("data"))
  stop, ckpt = with_defaults("stop", config.get("stop")), with_defaults("checkpoint", config.get("checkpoint"))
  if has_val is None:
    has_val = may_have_val(data)
  names = TASK_METRICS[train["task"]]
  for field, metric in (("stop.metric", stop["metric"]), ("stop.plateau_metric", stop["plateau_metric"]),
                        ("checkpoint.best", ckpt["best"])):
    if not metric:
      continue
    split, _, name = metric.partition("_")
    if split == "test" and name in names:
      raise ConfigError(f"config.{field}={metric!r} would choose by the test split: watch val_{name} (with "
                        f"config.data.val_size > 0) or train_{name}")
    if split not in ("train", "val") or name not in names:
      raise ConfigError(f"config.{field}={metric!r} is not an epoch-row metric of config.train.task="
                        f"{train['task']}: use one of {', '.join(f'val_{n}' for n in names)} (or train_*), or ''")
    if split == "val" and not has_val:
      raise ConfigError(f"config.{field}={metric!r} needs a validation split: set config.data.val_size > 0 (or "
                        f"watch train_{name})")


def diff(saved: Mapping[str, Any], new: Mapping[str, Any], allowed=RESUMABLE_CHANGES) -> list[str]:
  """Keys whose values differ between two configs (flattened), except those a resumed run may change. A key the saved
  config lacks (a field added to jcnn since) counts as its schema default."""
  a, b = flatten(saved), flatten(new)
  defaults = {f"{sec}.{k}" if sec else k: f.default for sec, fields in SCHEMA.items() for k, f in fields.items()}
  a.update({k: defaults[k] for k in b if k not in a and k in defaults})
  norm = lambda v: list(v) if isinstance(v, tuple) else v   # JSON turns tuples into lists
  keys = sorted(set(a) | set(b))
  return [k for k in keys if norm(a.get(k)) != norm(b.get(k)) and not any(k == p or (p.endswith(".") and
                                                                                       k.startswith(p))
                                                                           for p in allowed)]


# ----------------------------------------------------------------------------------------------------------------
# Sweep axes: hyperparameters that keep parameter shapes, so variants that differ only in them train in one program
# as traced values. Everything about an axis derives from its row: the sweep field (`name`), the config field a
# variant replaces (`key`: its section says where the value goes — a model field, an injected optimizer
# hyperparameter, or a train-step argument), the traced dtype, and how a value becomes a number. Adding one is a row
# here plus a model field (or optimizer hyperparameter, or make_train_step argument) that accepts a traced value.
#
# `lo`, `hi` (inclusive) and `perturb` are for a population-based search: the range it may move a value within, and
# how it moves one ('scale': multiply the value, then clip to [lo, hi]; 'resample': draw a new value, for categories;
# 'none': not at all, for a value read only when the parameters are initialised).
PERTURBS = ("scale", "resample", "none")


class Axis(NamedTuple):
  name: str
  key: str
  dtype: str = "float32"
  encode: Callable[[Any], Any] = float
  lo: float = float("-inf")   # the range a population-based search keeps a perturbed value in (inclusive)
  hi: float = float("inf")
  perturb: str = "scale"      # how PBT explores it: 'scale' (x0.8 / x1.2, or resample), 'resample' only, or 'none'

  @property
  def section(self) -> str:
    return self.key.split(".")[0]

  @property
  def field(self) -> str:
    return self.key.split(".")[1]


def _activation_index(name):
  from jcnn.nn import layers  # pylint: disable=g-import-not-at-top
  return layers.activation_index(name)


INF = float("inf")
SWEEP_AXES = (
    Axis("dropout_rate", "model.dropout_rate", lo=0.0, hi=0.95),
    Axis("init_scale", "model.init_scale", lo=1e-3, hi=100.0, perturb="none"),   # read at initialisation only
    Axis("activation", "model.activation", "int32", _activation_index, perturb="resample"),
    Axis("learning_rate", "optim.learning_rate", lo=1e-8, hi=10.0),
    Axis("weight_decay", "optim.weight_decay", lo=0.0, hi=1.0),   # injected only by adamw: sweeping it needs adamw
    Axis("l2", "train.l2", lo=0.0, hi=1.0),
    Axis("label_smoothing", "train.label_smoothing", lo=0.0, hi=0.5),
    Axis("mixup_alpha", "train.mixup_alpha", lo=0.0, hi=10.0),
    Axis("cutmix_alpha", "train.cutmix_alpha", lo=0.0, hi=10.0),
    Axis("clip_norm", "train.clip_norm", lo=0.0, hi=INF),
    Axis("ema_decay", "train.ema_decay", lo=0.0, hi=0.9999),
)


def variant_of(config, **values) -> dict:
  """One variant's hyperparameters: every axis at the config's value unless given, and the seed."""
  v = {a.name: config[a.section][a.field] for a in SWEEP_AXES}
  v["seed"] = config.train.seed
  v.update(values)
  return v


def variant_arrays(variants) -> dict:
  """The traced hyperparameters of a list of variants: {axis: [V] array, 'seed': [V] int32}."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  out = {a.name: jnp.asarray([a.encode(v[a.name]) for v in variants], a.dtype) for a in SWEEP_AXES}
  out["seed"] = jnp.asarray([v["seed"] for v in variants], jnp.int32)
  return out


def variant_config(config, variant: dict):
  """A copy of `config` with one variant's hyperparameters and seed written into their fields: its standalone run.
  An axis the variant lacks (a sweep saved before the axis existed) keeps the config's value."""
  c = config.copy_and_resolve_references()
  for a in SWEEP_AXES:
    if a.name in variant:
      c[a.section][a.field] = variant[a.name]
  c.train.seed = variant["seed"]
  return c


def apply_group(config, group: str):
  """A copy of config with a group's overrides applied: 'a.b=value', or several separated by ';'
  ("data.name='toy:xor'; model.hidden=(4,)"); each value is a Python literal."""
  c = ml_collections.ConfigDict(config.to_dict())
  for part in (p for p in group.split(";") if p.strip()):
    key, _, value = part.partition("=")
    node = c
    *path, last = key.strip().split(".")
    for p in path:
      if p not in node or not hasattr(node[p], "items"):
        raise ConfigError(f"sweep group {group!r}: config has no section {p!r}; write it as "
                          f"'model.features=(16, 32)'")
      node = node[p]
    if last not in node:
      raise ConfigError(f"sweep group {group!r}: config.{key.strip()} is not a config key")
    try:
      node[last] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, TypeError) as e:
      raise ConfigError(f"sweep group {group!r}: {e}; write it as 'model.features=(16, 32, 32)'") from None
  return c
