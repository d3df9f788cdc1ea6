"""The dense-only baseline the course compares the convnet with: Flatten -> Dense512 + ReLU -> Dense10.

  python launch.py --experiment=fashion_mlp

Same recipe as fashion_convnet. Expected: ~88% test accuracy (the convnet gets ~91% with 4x fewer parameters).
"""
from experiments import fashion_convnet


def get_config():
  c = fashion_convnet.get_config()
  c.name = "fashion_mlp"
  c.description = "Dense-only baseline (Flatten, Dense512, Dense10; 407,050 params) on Fashion-MNIST; ~88%"
  c.model.name = "mlp"
  return c
