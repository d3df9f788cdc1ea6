"""Non-linear classification: moons, circles and spirals, each learnt by an MLP of two hidden layers of 64 ReLU units.
One sweep (a group per problem, 3 seeds).

  python launch.py --experiment=nonlinear_classification

2048 training and 512 test points per problem, noise 0.1 (spirals 0.05: the arms are 1/3 apart), Adam lr 0.01, batch
64, 60 epochs. boundary.png draws each variant's decision boundary over its training points.
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
  c.train.epochs = 60
  c.train.batch_size = 64
  c.train.log_every = 32
  c.optim.name = "adam"
  c.optim.learning_rate = 0.01
  return c


def get_sweep():
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  s = sweep.default_sweep()
  s.groups = ("data.name='toy:moons'", "data.name='toy:circles'", "data.name='toy:spirals'; data.noise=0.05")
  return s
