"""Gradient flow: per-layer gradient norms of deep plain stacks at initialisation and over the first training steps.

Two comparisons, each run as ONE jitted program vmapped over the variant axis (the variants share parameter shapes):
  activations  a plain stack of `depth` dense layers with sigmoid / tanh / ReLU (a traced index into
               layers.ACTIVATIONS): sigmoid's derivative is at most 1/4, so its gradients vanish toward the input
  residual     a plain stack of `depth` 3x3 convolutions (ReLU) with and without identity shortcuts (a traced 0/1
               `residual` weight on x in x + act(conv(x)))
"""
from __future__ import annotations

from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jcnn import layers

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
