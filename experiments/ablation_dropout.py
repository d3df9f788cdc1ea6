"""Ablation: dropout rate 0 / 0.25 / 0.5 on the Fashion-MNIST convnet, 3 seeds, all 9 variants in one program.

  python launch.py --experiment=ablation_dropout
  python launch.py --experiment=ablation_dropout --sweep.seeds=5 --config.train.epochs=5

Budget: 2 epochs on the first 20,000 training images (full test set), so the sweep runs in minutes on a 2-core CPU.
Expected: all three rates within about a point of each other at this budget (~87-88%); dropout's train/test gap
shrinks as the rate grows. Results: summary.md/.csv/.json, accuracy_vs_dropout_rate.png, curves.png.
"""
from experiments import fashion_convnet


def get_config():
  c = fashion_convnet.get_config()
  c.name = "ablation_dropout"
  c.description = "sweep: dropout 0/0.25/0.5 x 3 seeds on the Fashion-MNIST convnet, vmapped"
  c.train.epochs = 2
  c.data.train_limit = 20000
  return c


def get_sweep():
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  s = sweep.default_sweep()
  s.dropout_rate = (0.0, 0.25, 0.5)
  return s
