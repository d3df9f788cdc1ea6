"""Ablation: init scale x0.01/0.1/1/3 on the Fashion-MNIST convnet, 3 seeds, every variant in one compiled program.

  python launch.py --experiment=ablation_init_scale
  python launch.py --experiment=ablation_init_scale --sweep.seeds=5 --config.train.epochs=5

Budget: 2 epochs on the first 20,000 training images (full test set), to run in minutes on a 2-core CPU.
Expected (measured, H100, 3 seeds): x0.01 and x0.1 stay at chance (10.0%, loss 2.3027) for both epochs: the
signal shrinks ~10-100x per layer, so every gradient but the head's vanishes — "stable" only in that nothing moves;
x1 (Glorot) 83.0 ± 2.0%; x3 81.4 ± 2.4%.
Results: summary.md/.csv/.json, accuracy_vs_init_scale.png, curves.png in the workdir.
"""
from experiments import ablation_dropout


def get_config():
  c = ablation_dropout.get_config()
  c.name = "ablation_init_scale"
  c.description = "sweep: init scale x0.01/0.1/1/3 x 3 seeds on the Fashion-MNIST convnet, vmapped"
  return c


def get_sweep():
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  s = sweep.default_sweep()
  s.init_scale = (0.01, 0.1, 1.0, 3.0)
  return s
