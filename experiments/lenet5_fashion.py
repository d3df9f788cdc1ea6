"""LeNet-5 (61,706 params) on Fashion-MNIST padded to 32x32, offline.

  python launch.py --experiment=lenet5_fashion

lenet5_mnist's recipe on Fashion-MNIST. Expected: ~90% test accuracy after 10 epochs (see docs/zoo.md for the run).
"""
from experiments import lenet5_mnist


def get_config():
  c = lenet5_mnist.get_config()
  c.name = "lenet5_fashion"
  c.description = "LeNet-5 on Fashion-MNIST padded to 32x32, offline; ~90% test accuracy in 10 epochs"
  c.data.name = "fashion_mnist"
  return c
