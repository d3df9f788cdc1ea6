"""Linear regression: one neuron without an activation fitted by SGD on the mean squared error recovers the line
y = 2 x - 1 that generated the data (jcnn.data.toys, LINE_W and LINE_B), through noise of std 0.1.

  python launch.py --experiment=linear_regression

1024 noisy points x ~ U(-1, 1), the zoo's `mlp` with no hidden layer (config.model.hidden = ()), task regress, loss
mse, SGD lr 0.1, batch 32, 20 epochs, inputs and targets as generated (no transform), so the neuron's weights are the
line's w and b: results.json's `weights` (kernel, bias), printed at the end; fit.png draws the line over the data.

Measured (2-core AMD EPYC, 2026-12-02, 34 s): learnt y = 2.0044 x - 1.0049 (the generator's: 2 x - 1), test RMSE
0.0957 (the noise's std: 0.1).
"""
from jcnn import config


def get_config():
  c = config.base_config()
  c.name = "linear_regression"
  c.description = "one neuron fits y = 2x - 1 through noise by SGD on the MSE: recovers w and b within 1e-2"
  c.model.name = "mlp"
  c.model.hidden = ()
  c.data.name = "toy:line"
  c.data.noise = 0.1
  c.data.preprocess = "none"
  c.data.synthetic_size = (1024, 256)
  c.train.task = "regress"
  c.train.loss = "mse"
  c.train.epochs = 20
  c.train.batch_size = 32
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.1
  return c
