"""Ablation: init scale x0.01/0.1/1/3 on the Fashion-MNIST convnet, 3 seeds, every variant in one compiled program.

  python launch.py --experiment=ablation_init_scale
  python launch.py --experiment=ablation_init_scale --sweep.seeds=5 --config.train.epochs=5

Budget: 2 epochs on the first 20,000 training images (full test set), to run in minutes on a 2-core CPU.
Expected: the course calls x0.01 init "stable": with ReLU and 5 layers it shrinks every signal ~100x per layer, so training starts on vanishing activations and lags far behind (often stuck near chance for the first epoch); x3 explodes the logits early. x1 (Glorot) trains best.
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
