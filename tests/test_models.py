"""The model zoo: exact parameter counts against published ones, output shapes, a loss that falls when training on a
fixed batch, the summary of every model, and every zoo experiment's config building its model.

Big models are only traced (jax.eval_shape): no memory, no compute. Real forward / training passes use tiny variants.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn import config as config_lib
from jcnn import models, train
from jcnn.errors import DataError
from jcnn.inspect import summary

# (zoo name, field overrides, input shape [no batch], trainable parameters). References: torchvision's model
# counts (alexnet, vgg*, resnet*, densenet121, googlenet without aux heads = its published 6,624,904), LeCun 1998's
# LeNet-5 with a fully connected C3 (61,706), He et al. 2016's CIFAR ResNet-20 (0.27M; 269,722 with a 10-way fc),
# DenseNet-BC-100 k=12 (the paper's 0.8M).
COUNTS = [
    ("lenet5", {}, (32, 32, 1), 61_706),
    ("alexnet", {}, (224, 224, 3), 61_100_840),
    ("vgg11", {}, (224, 224, 3), 132_863_336),
    ("vgg13", {}, (224, 224, 3), 133_047_848),
    ("vgg16", {}, (224, 224, 3), 138_357_544),
    ("vgg19", {}, (224, 224, 3), 143_667_240),
    ("vgg16", {"batch_norm": True}, (224, 224, 3), 138_365_992 - 4_224),   # torchvision's vgg16_bn less conv biases
    ("googlenet", {}, (224, 224, 3), 6_624_904),
    ("resnet18", {}, (224, 224, 3), 11_689_512),
    ("resnet34", {}, (224, 224, 3), 21_797_672),
    ("resnet50", {}, (224, 224, 3), 25_557_032),
    ("resnet101", {}, (224, 224, 3), 44_549_160),
    ("resnet20", {}, (32, 32, 3), 269_722),
    ("densenet121", {}, (224, 224, 3), 7_978_856),
    ("densenet_bc100", {}, (32, 32, 3), 769_162),
    # By hand: 3x3 convs 3-64-128-256-256-512-512-512-512 without bias, a BN (scale, shift) after each, a 512 -> 10 head.
    ("vgg11_cifar", {}, (32, 32, 3), 9 * (3 * 64 + 64 * 128 + 128 * 256 + 256 * 256 + 256 * 512 + 3 * 512 * 512)
     + 2 * (64 + 128 + 256 + 256 + 4 * 512) + 512 * 10 + 10),
    # By hand: a 20,000 x 128 embedding, 1-d convs of windows 3/4/5 (w * 128 + 1) * 100, a 300 -> 2 head.
    ("textcnn", {}, (400,), 20_000 * 128 + sum((w * 128 + 1) * 100 for w in (3, 4, 5)) + 300 * 2 + 2),
]
# docs/zoo.md's table gives these two exactly.
assert COUNTS[-2][3] == 9_228_362 and COUNTS[-1][3] == 2_714_502


def abstract_init(model, shape, dtype=jnp.float32):
  x = jax.ShapeDtypeStruct((2,) + tuple(shape), dtype)
  variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x,
                                                  train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return variables, out


@pytest.mark.parametrize("name,fields,shape,expected", COUNTS, ids=[f"{c[0]}{'_bn' if c[1] else ''}" for c in COUNTS])
def test_parameter_counts(name, fields, shape, expected):
  dtype = jnp.int32 if name.startswith("textcnn") else jnp.float32
  variables, out = abstract_init(models.get({"name": name}, **fields), shape, dtype)
  assert summary.count_params(variables["params"]) == expected
  assert out.shape == (2, models.get({"name": name}).num_classes)


def cifar_resnet_params(n, classes=10):
  """He et al.'s CIFAR ResNet-(6n+2), counted by hand: a 3x3 stem conv of 16 (no bias) + BN (scale, shift), three
  stages of n BasicBlocks (two bias-free 3x3 convs + two BNs each) of 16 / 32 / 64 channels, option-A shortcuts (no
  parameters), global pool, a 64 -> classes dense."""
  total, c_in = 9 * 3 * 16 + 2 * 16, 16
  for width in (16, 32, 64):
    for _ in range(n):
      total += 9 * c_in * width + 2 * width + 9 * width * width + 2 * width
      c_in = width
  return total + 64 * classes + classes


def test_cifar_resnet_depths_by_hand():
  counts = {d: summary.count_params(abstract_init(models.get({"name": f"resnet{d}"}), (32, 32, 3))[0]["params"])
            for d in (20, 32, 44, 56, 110)}
  for d, c in counts.items():
    assert c == cifar_resnet_params((d - 2) // 6), d
  assert counts[20] == 269_722 and counts[110] == 1_727_962          # docs/zoo.md's table (He et al.: 0.27M, 1.7M)
  assert round(counts[56] / 1e6, 2) == 0.85                          # He et al.'s Table 6: 0.85M


def test_docs_zoo_table_counts():
  """Every parameter count in docs/zoo.md's table is a count asserted in this file."""
  import os  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "zoo.md")) as f:
    readme = f.read()
  table = readme[:readme.index("## Parameter counts and FLOPs")]
  readme_counts = {int(n.replace(",", "")) for row in table.splitlines() if row.startswith("| `")
                   for n in re.findall(r"\d{1,3}(?:,\d{3})+", row.split("|")[3])}
  asserted = {c[3] for c in COUNTS} | {cifar_resnet_params(3), cifar_resnet_params(18), 93_322}
  assert len(readme_counts) >= 15 and readme_counts <= asserted, sorted(readme_counts - asserted)


# Every zoo entry at a small input it accepts (CIFAR-size or its native one), traced only.
NATIVE = {"lenet5": (32, 32, 1), "alexnet": (64, 64, 3), "textcnn": (50,), "textcnn_tiny": (20,), "convnet": (28, 28, 1),
          "mlp": (28, 28, 1)}


@pytest.mark.parametrize("name", sorted(models.ZOO))
def test_every_model_traces_on_small_input(name):
  shape = NATIVE.get(name, (32, 32, 3))
  dtype = jnp.int32 if name.startswith("textcnn") else jnp.float32
  model = models.get({"name": name}, num_classes=7)
  _, out = abstract_init(model, shape, dtype)
  assert out.shape == (2, 7)


# Tiny members of each family, run for real: shapes, then a few training steps on one fixed batch lower the loss.
# XLA:CPU takes tens of seconds to compile the deeper ones (GoogLeNet's 57 convs: minutes on a busy 2-core machine),
# so those are marked slow.
SLOW = pytest.mark.slow
TINY = [
    ("lenet5", {}, (32, 32, 1)),
    ("resnet_tiny", {}, (8, 8, 3)),
    ("textcnn_tiny", {"dropout_rate": 0.0}, (12,)),
    pytest.param("alexnet", {"features": (8, 8, 8, 8, 8), "hidden": 16, "dropout_rate": 0.0}, (64, 64, 3), marks=SLOW),
    pytest.param("vgg_tiny", {"dropout_rate": 0.0}, (32, 32, 3), marks=SLOW),
    pytest.param("densenet_tiny", {}, (8, 8, 3), marks=SLOW),
]


@pytest.mark.parametrize("name,fields,shape", TINY)
def test_tiny_model_trains_on_a_fixed_batch(name, fields, shape):
  model = models.get({"name": name}, num_classes=4, **fields)
  k1, k2 = jax.random.split(jax.random.key(0))
  if name.startswith("textcnn"):
    x = jax.random.randint(k1, (8,) + shape, 0, 100)
  else:
    x = jax.random.normal(k1, (8,) + shape)
  y = jnp.arange(8) % 4
  tx = train.make_optimizer({"name": "adam", "learning_rate": 3e-3})
  state = jax.jit(lambda k, x: train.init_state(model, tx, k, x))(k2, x)   # jitted: eager init is slow on CPU
  step = jax.jit(train.make_train_step(model, tx))
  losses = []
  for _ in range(6):
    state, m = step(state, x, y, k2)
    losses.append(float(m["loss_sum"] / m["count"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  logits = jax.jit(lambda s, x: model.apply({"params": s.params, **({"batch_stats": s.batch_stats}
                                                                     if s.batch_stats else {})}, x, train=False))(
      state, x)
  assert logits.shape == (8, 4)


def test_two_module_googlenet_every_parameter_gets_a_gradient(monkeypatch):
  """GoogLeNet's wiring (stem, Inception modules, pools, head) with two Inception modules instead of nine: every
  parameter leaf (each branch's conv kernel, BN scale and shift) gets a non-zero gradient, so no branch is left out of
  the concatenation. 15 convolutions to compile instead of googlenet_tiny's 57."""
  from jcnn.models import googlenet  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(googlenet, "MODULES", (googlenet.MODULES[0], "pool", googlenet.MODULES[3]))   # 3a, pool, 4a
  # XLA's native convolution: far quicker to compile than the im2col lowering; the wiring is the same.
  import functools  # pylint: disable=g-import-not-at-top
  from jcnn.nn import layers  # pylint: disable=g-import-not-at-top
  model = models.get({"name": "googlenet_tiny"}, num_classes=4, dropout_rate=0.0,
                     conv=functools.partial(layers.Conv, lowering="native"))
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  y = jnp.arange(4)
  # He-normal kernels, unit BN scales, zero shifts and biases, drawn with numpy: a jitted flax init of this model
  # compiles for longer than its gradient does.
  shapes = jax.eval_shape(lambda x: model.init({"params": jax.random.key(1)}, x, train=False), x)
  rng = np.random.default_rng(0)
  fill = lambda path, s: jnp.asarray(
      rng.normal(size=s.shape) * np.sqrt(2 / np.prod(s.shape[:-1])) if len(s.shape) > 1 else
      np.ones(s.shape) if jax.tree_util.keystr(path).endswith(("['scale']", "['var']")) else np.zeros(s.shape),
      jnp.float32)
  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  assert {k for k in variables["params"] if k.startswith("inception")} == {"inception3a", "inception4a"}
  assert set(variables["params"]["inception4a"]) == {"b1", "b2_conv1", "b2_conv2", "b3_conv1", "b3_conv2", "b4"}

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                            mutable=["batch_stats"])
    return optax_ce(logits, y)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert len(flat) == 3 * 3 + 2 * 6 * 3 + 2        # stem and 12 inception convs: kernel, scale, bias; the head
  for path, g in flat:
    assert np.isfinite(g).all() and float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)


def optax_ce(logits, y):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1))


@pytest.mark.parametrize("name", sorted(models.ZOO))
def test_summary_prints_every_model(name):
  shape = NATIVE.get(name, (32, 32, 3))
  dtype = jnp.int32 if name.startswith("textcnn") else jnp.float32
  model = models.get({"name": name}, num_classes=10)
  text = summary.summary(model, shape, flops=False, input_dtype=dtype)
  # The printed total against the parameter leaves of a plain init, multiplied out with numpy (not summary's counter).
  params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                             jnp.zeros((1,) + shape, dtype), train=False))["params"]
  total = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
  assert f"Total params: {total:,}" in text and len(text.splitlines()) > 5


def test_summary_flops_for_token_input():
  flops = summary.flops_per_example(models.get({"name": "textcnn_tiny"}), (20,), jnp.int32)
  # Multiply-adds by hand, 2 FLOPs each: three 1-d convs (windows 3, 4, 5; 8 -> 4 channels; 20 - w + 1 outputs each),
  # and the 12 -> 2 head. The embedding is a gather (no FLOPs).
  macs = sum((20 - w + 1) * w * 8 * 4 for w in (3, 4, 5)) + 12 * 2
  # XLA also counts the elementwise work: bias add, activation, max over time, ... a few FLOPs per conv output.
  conv_outputs = sum((20 - w + 1) * 4 for w in (3, 4, 5))
  assert 2 * macs <= flops <= 2 * macs + 6 * conv_outputs, (flops, 2 * macs)


EXPERIMENTS = {"lenet5_mnist": (32, 32, 1), "lenet5_fashion": (32, 32, 1), "resnet20_cifar10": (32, 32, 3),
               "resnet20_fashion": (28, 28, 1), "vgg11_cifar10": (32, 32, 3), "densenet_bc_cifar10": (32, 32, 3),
               "textcnn_imdb": (400,)}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_config_builds_its_model(name):
  config = importlib.import_module(f"experiments.{name}").get_config()
  config_lib.check_config(config)
  model = models.get(config.model, num_classes=10)
  dtype = jnp.int32 if name.startswith("textcnn") else jnp.float32
  _, out = abstract_init(model, EXPERIMENTS[name], dtype)
  assert out.shape == (2, 10)


@pytest.mark.slow   # imports TensorFlow (~5 s of CPU)
def test_textcnn_imdb_offline_fails_with_one_line_data_error():
  from jcnn import data  # pylint: disable=g-import-not-at-top
  config = importlib.import_module("experiments.textcnn_imdb").get_config()
  assert config.model.vocab_size == config.data.vocab_size
  with pytest.raises(DataError) as e:
    data.load(config.data)
  assert "imdb_reviews" in str(e.value) and "\n" not in str(e.value)


def test_tokenize():
  from jcnn import data  # pylint: disable=g-import-not-at-top
  ids, vocab = data.tokenize([b"A good film.<br />Good!", "bad film"], max_len=4, vocab_size=4)
  assert vocab == {"good": 2, "film": 3}
  np.testing.assert_array_equal(ids, [[1, 2, 3, 2], [1, 3, 0, 0]])
