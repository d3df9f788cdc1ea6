"""Non-linear classification: moons, circles and spirals, each learnt by an MLP of two hidden layers of 64 ReLU units.
One sweep (a group per problem, 3 seeds).

  python launch.py --experiment=nonlinear_classification

2048 training and 512 test points per problem, noise 0.1 (spirals 0.02: the arms meet at the centre), Adam lr 0.01 on
a cosine schedule, batch 64, 100 epochs. boundary.png draws each variant's decision boundary over its training points.
Measured (2-core AMD EPYC, 2026-12-02, 45 s): test accuracy moons 99.67% ± 0.11, spirals 98.83% ± 0.00, circles
98.70% ± 0.11 (3 seeds).
"""
from jcnn import config


def get_config():
  c = config.base_config()
  c.name = "nonlinear_classification"
  c.description = "sweep: moons / circles / spirals with an MLP (64, 64): decision boundaries"
  c.model.name = "mlp"
  c.model.hidden = (64, 64)
  c.data.name = "toy:moons"
  c.data.noise = 0.1
  c.data.preprocess = "none"
  c.data.synthetic_size = (2048, 512)
  c.train.epochs = 100
  c.train.batch_size = 64
  c.train.log_every = 32
  c.optim.name = "adam"
  c.optim.learning_rate = 0.01
  c.optim.schedule = "cosine"
  return c


def get_sweep():
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  s = sweep.default_sweep()
  s.groups = ("data.name='toy:moons'", "data.name='toy:circles'", "data.name='toy:spirals'; data.noise=0.02")
  return s
