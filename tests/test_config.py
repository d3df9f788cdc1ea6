"""jcnn/config.py: the schema (defaults, checks, meanings), partial sections, resume diffs, and the sweep axes table."""
import math
import re

import pytest

from experiments import fashion_convnet
from jcnn import config as config_lib
from jcnn.errors import ConfigError
from jcnn.nn import layers


def test_every_field_has_a_default_a_meaning_and_passes_its_own_check():
  c = config_lib.base_config()
  for section, fields in config_lib.SCHEMA.items():
    for key, f in fields.items():
      path = f"{section}.{key}" if section else key
      assert f.doc, path
      assert config_lib.check_value(path, f.default) is None, path
      assert (c[section][key] if section else c[key]) == f.default
  config_lib.check_config(c)


@pytest.mark.parametrize("path,value,allowed", [
    ("train.batch_size", 0, "must be >= 1"), ("train.epochs", -1, "must be >= 0"),
    ("train.log_every", 0, "must be >= 1"), ("train.eval_batch_size", 0, "must be >= 1"),
    ("optim.learning_rate", math.nan, "must be a finite number > 0"),
    ("optim.learning_rate", -0.1, "must be > 0"), ("optim.learning_rate", math.inf, "finite"),
    ("model.dropout_rate", 1.0, "must be >= 0 and < 1"), ("model.init_scale", 0.0, "must be > 0"),
    ("optim.boundaries", (0.75, 0.5), "increasing fractions"), ("optim.boundaries", (0.5, 1.0), "in (0, 1)"),
    ("optim.name", "adamm", "must be one of sgd, momentum, nesterov, rmsprop, adam, adamw"),
    ("model.activation", "relu6", "must be one of sigmoid"), ("model.name", "resnet7", "must be one of"),
    ("data.pad", -1, "must be >= 0"), ("data.augment", "rotate", "none, flip, crop, flip_crop"),
    ("train.batch_size", 2.5, "must be an integer"), ("train.seed", True, "must be an integer"),
    ("train.dtype", "float64", "must be one of float32, bfloat16, float16"), ("train.dtype", "bf16", "float16 —"),
])
def test_a_bad_value_names_field_value_and_what_is_allowed(path, value, allowed):
  msg = config_lib.check_value(path, value)   # wrong types: the locked ConfigDict / flag parser stop most earlier
  assert msg.startswith(f"config.{path}={value!r}: ") and allowed in msg
  c = fashion_convnet.get_config()
  section, key = path.split(".")
  try:
    c[section][key] = value
  except TypeError:
    return
  with pytest.raises(ConfigError, match="^" + re.escape(msg) + "$"):
    config_lib.check_config(c)


def test_with_defaults_completes_a_partial_section():
  opt = config_lib.with_defaults("optim", {"name": "sgd"})
  assert opt["name"] == "sgd" and opt["learning_rate"] == 1e-3 and opt["weight_decay"] == 1e-4
  assert config_lib.with_defaults("data", {"name": "x"})["synthetic_shape"] == (28, 28, 1)


def test_diff_allows_only_changes_that_keep_the_run():
  a = fashion_convnet.get_config().to_dict()
  b = fashion_convnet.get_config()
  b.train.epochs, b.train.log_every, b.checkpoint.keep = 9, 7, 5
  assert config_lib.diff(a, b.to_dict()) == []
  b.train.batch_size, b.optim.boundaries = 32, (0.3, 0.6)
  assert config_lib.diff(a, b.to_dict()) == ["optim.boundaries", "train.batch_size"]
  assert config_lib.diff({"optim": {"boundaries": [0.5, 0.75]}}, {"optim": {"boundaries": (0.5, 0.75)}}) == []


def test_sweep_axes_table():
  c = fashion_convnet.get_config()
  for a in config_lib.SWEEP_AXES:
    assert a.field in c[a.section], a       # every axis replaces an existing config field
  v = config_lib.variant_of(c, activation="elu", seed=4)
  assert v == {"dropout_rate": 0.0, "init_scale": 1.0, "activation": "elu", "learning_rate": 1e-3,
               "weight_decay": 1e-4, "l2": 0.0, "label_smoothing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
               "clip_norm": 0.0, "ema_decay": 0.0, "seed": 4}
  arrays = config_lib.variant_arrays([v, config_lib.variant_of(c)])
  assert arrays["activation"].tolist() == [layers.ACTIVATIONS.index("elu"), layers.ACTIVATIONS.index("relu")]
  assert arrays["seed"].tolist() == [4, 0] and str(arrays["learning_rate"].dtype) == "float32"
  vc = config_lib.variant_config(c, v)
  assert vc.model.activation == "elu" and vc.train.seed == 4 and c.model.activation == "relu"
  old = {k: v[k] for k in ("dropout_rate", "init_scale", "activation", "learning_rate", "weight_decay", "l2", "seed")}
  assert config_lib.variant_config(c, old).train.label_smoothing == 0.0   # a sweep saved before the recipes existed


def test_a_field_added_since_a_run_was_saved_counts_as_its_default():
  """A run saved before train.dtype / mesh existed resumes with their defaults, and not with other values."""
  saved = config_lib.base_config().to_dict()
  del saved["train"]["dtype"]
  del saved["mesh"]
  new = config_lib.base_config()
  assert config_lib.diff(saved, new.to_dict()) == []
  new.train.dtype = "bfloat16"
  assert config_lib.diff(saved, new.to_dict()) == ["train.dtype"]


def test_every_sweep_axis_has_a_search_range_its_field_allows():
  """lo <= default <= hi, both ends (where finite) pass the field's check, and perturb is 'scale' or 'resample'."""
  c = config_lib.base_config()
  for a in config_lib.SWEEP_AXES:
    assert a.perturb in config_lib.PERTURBS, a
    if a.perturb == "resample":
      continue
    assert a.lo <= c[a.section][a.field] <= a.hi, a
    for end in (a.lo, a.hi):
      assert not math.isfinite(end) or config_lib.check_value(a.key, end) is None, (a, end)
  assert config_lib.SWEEP_AXES[0] == config_lib.Axis("dropout_rate", "model.dropout_rate", "float32", float, 0.0,
                                                     0.95, "scale")   # positional order kept
