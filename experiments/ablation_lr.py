"""Ablation: RMSprop learning rate 1e-4..1e-2 on the Fashion-MNIST convnet, 3 seeds, every variant in one compiled program.

  python launch.py --experiment=ablation_lr
  python launch.py --experiment=ablation_lr --sweep.seeds=5 --config.train.epochs=5

Budget: 2 epochs on the first 20,000 training images (full test set), to run in minutes on a 2-core CPU.
Expected (measured, H100, 3 seeds): 1e-4 72.8 ± 1.5%, 3e-4 78.1 ± 0.4%, 1e-3 82.9 ± 2.0%, 3e-3 84.9 ± 2.2%,
1e-2 82.8 ± 2.3%: at this short budget 3e-3 beats the Keras default; 1e-2 is noisier.
Results: summary.md/.csv/.json, accuracy_vs_learning_rate.png, curves.png in the workdir.
"""
from experiments import ablation_dropout


def get_config():
  c = ablation_dropout.get_config()
  c.name = "ablation_lr"
  c.description = "sweep: RMSprop learning rate 1e-4..1e-2 x 3 seeds on the Fashion-MNIST convnet, vmapped"
  return c


def get_sweep():
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  s = sweep.default_sweep()
  s.learning_rate = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
  return s
