"""Gradient flow in deep plain stacks: sigmoid vs tanh vs ReLU (12 dense layers), and 12 plain 3x3 convs vs the same
with residual connections; per-layer gradient norms at initialisation and over the first SGD steps on Fashion-MNIST.

  python launch.py --experiment=gradient_flow --workdir=runs/gradient_flow
  python -m jcnn.inspect gradient_flow --workdir=runs/gradient_flow          # the same function

Writes gradient_flow.json (norms [variant][step][layer]) and
gradient_flow.png (log scale). Expected: at initialisation the sigmoid stack's first-layer gradient is > 1000x
smaller than ReLU's (the derivative of sigmoid is at most 1/4 per layer); the residual conv stack keeps its first
layer's gradient within a small factor of its last layer's.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def get_config():
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
  from jcnn import data  # pylint: disable=g-import-not-at-top
  try:
    ds = data.load({"name": "fashion_mnist", "train_limit": config.examples})
  except Exception:  # pylint: disable=broad-except  (no dataset on disk: synthetic images keep the experiment runnable)
    ds = data.load({"name": "synthetic", "synthetic_size": (config.examples, 16)})
  return ds.train_x, ds.train_y


def main(config, workdir: str) -> dict:
  """Runs both comparisons; writes workdir/gradient_flow.json and .png; returns the record."""
  from jcnn import gradflow, layers, viz  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  x, y = _data(config)
  key = jax.random.key(config.seed)
  acts = [layers.activation_index(a) for a in config.activations]
  mlp = gradflow.norms_over_training(
      lambda a: gradflow.DeepMLP(config.depth, config.mlp_width, activation=a), acts, x, y, key, config.steps,
      config.learning_rate, config.batch_size)                                   # [3, steps + 1, depth]
  s = 28 // config.conv_image
  xc = x.reshape(x.shape[0], config.conv_image, s, config.conv_image, s, x.shape[-1]).mean((2, 4))
  conv = gradflow.norms_over_training(
      lambda r: gradflow.DeepConv(config.depth, config.conv_width, residual=r), [0.0, 1.0], xc, y, key, config.steps,
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
  rec["png"] = viz.plot_gradient_flow({f"{a} MLP": mlp[i] for i, a in enumerate(config.activations)},
                                      {"plain conv": conv[0], "residual conv": conv[1]},
                                      os.path.join(workdir, "gradient_flow.png"))
  return {k: v for k, v in rec.items() if k not in ("mlp", "conv")}
