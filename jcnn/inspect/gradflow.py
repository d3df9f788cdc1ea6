"""Gradient flow: per-layer gradient norms of deep plain stacks at initialisation and over the first training steps.

Two comparisons, each run as ONE jitted program vmapped over the variant axis (the variants share parameter shapes):
  activations  a plain stack of `depth` dense layers with sigmoid / tanh / ReLU (a traced index into
               layers.ACTIVATIONS): sigmoid's derivative is at most 1/4, so its gradients vanish toward the input
  residual     a plain stack of `depth` 3x3 convolutions (ReLU) with and without identity shortcuts (a traced 0/1
               `residual` weight on x in x + act(conv(x)))
"""
from __future__ import annotations

import json
import os
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from jcnn import data
from jcnn.inspect import figures
from jcnn.nn import layers

Array = jax.Array


class DeepMLP(nn.Module):
  """Flatten -> `depth` x (Dense(width) -> act [+ residual * x after the first]) -> Dense(classes)."""
  depth: int = 12
  width: int = 64
  activation: Union[str, int, Array] = "relu"
  residual: Union[float, Array] = 0.0
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = layers.Flatten()(x)                                           # [B, H*W*C]
    for i in range(self.depth):
      h = layers.Activation(self.activation, name=f"act{i + 1}")(layers.Dense(self.width, name=f"layer{i + 1}")(x))
      x = h + self.residual * x if i else h                           # [B, width]
    return layers.Dense(self.num_classes, name="head")(x)


class DeepConv(nn.Module):
  """`depth` x (Conv3x3(width, SAME) -> act [+ residual * x after the first]) -> global average pool -> Dense."""
  depth: int = 12
  width: int = 16
  activation: Union[str, int, Array] = "relu"
  residual: Union[float, Array] = 0.0
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for i in range(self.depth):
      h = layers.Conv(self.width, (3, 3), padding="SAME", name=f"layer{i + 1}")(x)
      h = layers.Activation(self.activation, name=f"act{i + 1}")(h)
      x = h + self.residual * x if i else h                           # [B, H, W, width]
    return layers.Dense(self.num_classes, name="head")(layers.global_avg_pool(x))


def layer_grad_norms(grads, depth: int) -> Array:
  """[depth] L2 norms of the kernels' gradients, input layer first."""
  return jnp.stack([jnp.linalg.norm(grads[f"layer{i + 1}"]["kernel"]) for i in range(depth)])


def norms_over_training(make_model, values, x: Array, y: Array, key: Array, steps: int, lr: float,
                        batch_size: int) -> Array:
  """Per-layer gradient norms for every variant, vmapped over `values`, in one jitted program.

  Args:
    make_model: value -> linen model (the value is traced: an activation index, a residual weight).
    values: [V] the variant values. x [N, ...], y [N]: data; step t trains on rows [t*batch, (t+1)*batch) mod N.
    key: the init key, the same for every variant (same initial kernels). steps: SGD steps with learning rate lr.
  Returns:
    [V, steps + 1, depth]: row 0 at initialisation, row t after t steps.
  """
  depth = make_model(values[0]).depth
  n_batches = x.shape[0] // batch_size

  def one(v):
    model = make_model(v)
    params = model.init(key, x[:1])["params"]
    tx = optax.sgd(lr)

    def loss(p, xb, yb):
      logits = model.apply({"params": p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step(carry, t):
      p, opt = carry
      b = (t % n_batches) * batch_size
      xb, yb = lax.dynamic_slice_in_dim(x, b, batch_size), lax.dynamic_slice_in_dim(y, b, batch_size)
      g = jax.grad(loss)(p, xb, yb)
      updates, opt = tx.update(g, opt, p)
      return (optax.apply_updates(p, updates), opt), layer_grad_norms(g, depth)

    _, norms = lax.scan(step, (params, tx.init(params)), jnp.arange(steps + 1))
    return norms                                                      # [steps + 1, depth]

  return jax.jit(jax.vmap(one))(jnp.asarray(values))


def activation_names(indices: Sequence[int]) -> list[str]:
  return [layers.ACTIVATIONS[i] for i in indices]


# ----------------------------------------------------------------------------------------------------------------
# The study: experiments/gradient_flow.py and `python -m jcnn.inspect gradient_flow`.
def default_config() -> ml_collections.ConfigDict:
  """The study's settings (experiments/gradient_flow.py's get_config)."""
  c = ml_collections.ConfigDict()
  c.name = "gradient_flow"
  c.description = "Per-layer gradient norms: sigmoid/tanh/ReLU 12-layer MLP; 12-conv plain vs residual (JSON + PNG)"
  c.depth = 12                  # layers in each stack
  c.mlp_width = 64              # units per dense layer
  c.conv_width = 16             # channels per conv layer
  c.activations = ("sigmoid", "tanh", "relu")
  c.steps = 50                  # SGD steps after initialisation (row 0 of the norms is the initialisation)
  c.learning_rate = 0.05        # SGD
  c.batch_size = 64
  c.conv_image = 14             # conv stack input: Fashion-MNIST downsampled to 14x14 (2x2 mean), to keep it quick
  c.examples = 3200             # training images used (batches cycle through them)
  c.seed = 0
  c.lock()
  return c


def _data(config):
  try:
    ds = data.load({"name": "fashion_mnist", "train_limit": config.examples})
  except Exception:  # pylint: disable=broad-except  (no dataset on disk: synthetic images keep the experiment runnable)
    ds = data.load({"name": "synthetic", "synthetic_size": (config.examples, 16)})
  return ds.train_x, ds.train_y


def study(config, workdir: str) -> dict:
  """Runs both comparisons; writes workdir/gradient_flow.json and .png; returns the record."""
  os.makedirs(workdir, exist_ok=True)
  x, y = _data(config)
  key = jax.random.key(config.seed)
  acts = [layers.activation_index(a) for a in config.activations]
  mlp = norms_over_training(
      lambda a: DeepMLP(config.depth, config.mlp_width, activation=a), acts, x, y, key, config.steps,
      config.learning_rate, config.batch_size)                                   # [3, steps + 1, depth]
  s = 28 // config.conv_image
  xc = x.reshape(x.shape[0], config.conv_image, s, config.conv_image, s, x.shape[-1]).mean((2, 4))
  conv = norms_over_training(
      lambda r: DeepConv(config.depth, config.conv_width, residual=r), [0.0, 1.0], xc, y, key, config.steps,
      config.learning_rate, config.batch_size)                                   # [2, steps + 1, depth]
  mlp, conv = np.asarray(mlp), np.asarray(conv)
  rec = {"config": config.to_dict(),
         "mlp": {a: mlp[i].tolist() for i, a in enumerate(config.activations)},
         "conv": {"plain": conv[0].tolist(), "residual": conv[1].tolist()},
         "first_layer_at_init": {**{a: float(mlp[i, 0, 0]) for i, a in enumerate(config.activations)},
                                 "conv_plain": float(conv[0, 0, 0]), "conv_residual": float(conv[1, 0, 0])}}
  if "sigmoid" in config.activations and "relu" in config.activations:
    rec["relu_over_sigmoid_first_layer_at_init"] = float(mlp[list(config.activations).index("relu"), 0, 0] /
                                                         mlp[list(config.activations).index("sigmoid"), 0, 0])
  with open(os.path.join(workdir, "gradient_flow.json"), "w") as f:
    json.dump(rec, f)
  rec["png"] = figures.plot_gradient_flow({f"{a} MLP": mlp[i] for i, a in enumerate(config.activations)},
                                      {"plain conv": conv[0], "residual conv": conv[1]},
                                      os.path.join(workdir, "gradient_flow.png"))
  return {k: v for k, v in rec.items() if k not in ("mlp", "conv")}
