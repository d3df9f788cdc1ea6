"""Gradient flow in deep plain stacks: sigmoid vs tanh vs ReLU (12 dense layers), and 12 plain 3x3 convs vs the same
with residual connections; per-layer gradient norms at initialisation and over the first SGD steps on Fashion-MNIST.

  python launch.py --experiment=gradient_flow --workdir=runs/gradient_flow
  python -m jcnn.inspect gradient_flow --workdir=runs/gradient_flow          # the same study (jcnn.inspect.gradflow)

Writes gradient_flow.json (norms [variant][step][layer]) and
gradient_flow.png (log scale). Expected: at initialisation the sigmoid stack's first-layer gradient is > 1000x
smaller than ReLU's (the derivative of sigmoid is at most 1/4 per layer); the residual conv stack keeps its first
layer's gradient within a small factor of its last layer's.
"""
from jcnn.inspect import gradflow


def get_config():
  return gradflow.default_config()


def main(config, workdir: str) -> dict:
  """Runs both comparisons; writes workdir/gradient_flow.json and .png; returns the record."""
  return gradflow.study(config, workdir)
