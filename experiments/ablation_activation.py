"""Ablation: activation sigmoid/tanh/relu/leaky_relu/elu/prelu on the Fashion-MNIST convnet, 3 seeds, all in one
compiled program.

  python launch.py --experiment=ablation_activation
  python launch.py --experiment=ablation_activation --sweep.seeds=5 --config.train.epochs=5

Budget: 2 epochs on the first 20,000 training images (full test set), to run in minutes on a 2-core CPU.
Expected (measured, H100, 3 seeds): sigmoid 69.0 ± 0.7% (the vanishing-gradient effect: its derivative
is at most 0.25 per layer), tanh 84.8 ± 0.6%, relu 83.2 ± 1.4%, leaky_relu 82.9 ± 2.1%, elu 84.3 ± 1.4%,
prelu 83.9 ± 1.6%.
Results: summary.md/.csv/.json, accuracy_vs_activation.png, curves.png in the workdir.
"""
from experiments import ablation_dropout


def get_config():
  c = ablation_dropout.get_config()
  c.name = "ablation_activation"
  c.description = "sweep: activation sigmoid/tanh/relu/leaky_relu/elu/prelu x 3 seeds, Fashion-MNIST convnet, vmapped"
  return c


def get_sweep():
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  s = sweep.default_sweep()
  s.activation = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "prelu")
  return s
