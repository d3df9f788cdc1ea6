"""The standardisation lesson, its four cases as one sweep: a linear model fitted by SGD at one learning rate on
features of very different scales (jcnn.data.toys `scales`: quality in [0, 1], area in [0, 100], distance in
[1000, 5000]; targets 350-790).

  python launch.py --experiment=standardisation

  1 none           raw features: the gradient along `distance` is thousands of times the others; SGD diverges
  2 train only     z-scored training features, test features left raw (data.preprocess_test=none): the model
                   fits, then predicts nonsense on the test split
  3 train stats    test features z-scored with the training split's mean and std: right
  4 + targets      the targets z-scored too (data.target_preprocess=standardize): the same fit in fewer steps; the
                   predictions are transformed back, so RMSE, MAE and R² stay in the target's units

SGD lr 0.01, batch 32, 40 epochs of 1024 examples, 3 seeds. The table (summary.md) has the final test RMSE and R² in
the target's units and the steps until the test RMSE first reached 10 (noise std: 4.1).

Measured (2-core AMD EPYC, 2026-12-02, 38 s; test RMSE mean ± std over 3 seeds, steps to RMSE <= 10):
  1 none           diverged in 3 of 3 seeds
  2 train only     RMSE 187,914 ± 40, R² -5.5e6, never within 10
  3 train stats    RMSE 4.052 ± 0.003, R² 0.9975, 224 ± 0 steps
  4 + targets      RMSE 4.052 ± 0.003, R² 0.9975, 107 ± 37 steps
"""
from jcnn import config

CASES = ("data.preprocess='none'",
         "data.preprocess_test='none'",
         "data.preprocess='standardize'",
         "data.target_preprocess='standardize'")


def get_config():
  c = config.base_config()
  c.name = "standardisation"
  c.description = "sweep: no / train-only / train-statistics / +target standardisation on features of scales 1..5000"
  c.model.name = "mlp"
  c.model.hidden = ()
  c.data.name = "toy:scales"
  c.data.noise = 0.05
  c.data.preprocess = "standardize"
  c.data.synthetic_size = (1024, 256)
  c.train.task = "regress"
  c.train.loss = "mse"
  c.train.epochs = 40
  c.train.batch_size = 32
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.01
  return c


def get_sweep():
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  s = sweep.default_sweep()
  s.groups = CASES
  s.tolerance = 10.0
  return s
