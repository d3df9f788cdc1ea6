"""Logistic regression: one sigmoid neuron (config.train.task=binary) separates two classes of points in the plane
that a line can separate (jcnn.data.toys `separable`: either side of x1 + x2 = 0, a margin of 0.25).

  python launch.py --experiment=binary_classification

1024 points, binary cross-entropy, SGD lr 0.5, batch 32, 20 epochs. boundary.png draws P(class 1) and its 0.5 line.
Measured (2-core AMD EPYC, 2026-12-02, 13 s): 100% test accuracy from the first epoch, test loss 0.025.
"""
from jcnn import config


def get_config():
  c = config.base_config()
  c.name = "binary_classification"
  c.description = "logistic regression (one sigmoid neuron) on a linearly separable 2-D set"
  c.model.name = "mlp"
  c.model.hidden = ()
  c.data.name = "toy:separable"
  c.data.preprocess = "none"
  c.data.synthetic_size = (1024, 256)
  c.train.task = "binary"
  c.train.epochs = 20
  c.train.batch_size = 32
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.5
  return c
