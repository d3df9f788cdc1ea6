"""Logic gates: one neuron (a single-layer perceptron) learns AND, OR, NAND, NOR and NOT but not XOR; a hidden layer
of 2 or 4 units learns XOR. One sweep over gate x hidden units, 3 seeds each.

  python launch.py --experiment=logic_gates
  python launch.py --experiment=logic_gates --sweep.seeds=5

Each gate's training split is its truth table repeated (64 rows, no noise: config.data.noise=0); the test split is the
truth table itself, so test accuracy is the share of the 4 rows (2 for NOT) the network gets right. The network is the
zoo's `mlp` with config.model.hidden = () (no hidden layer: one sigmoid neuron, config.train.task=binary), (2,) or
(4,) tanh units; Adam lr 0.05, batch 16, 100 epochs (400 steps). Results: summary.md (the table), boundary.png (each
variant's decision boundary over the truth table), accuracy_vs_group.png, curves.png.

Measured (2-core AMD EPYC, 2026-12-02, 2.5 min): one neuron: AND, OR, NAND, NOR, NOT 100% for 3 of 3 seeds, XOR
58% ± 14% (it cannot); XOR with 4 hidden units 100% (3 of 3); with 2 units 92% ± 14% (2 of 3 seeds: the third stops
at 75%, a local minimum of the 2-unit net).
"""
from jcnn import config

GATES = ("and", "or", "nand", "nor", "not", "xor")
HIDDEN = ((), (2,), (4,))


def get_config():
  c = config.base_config()
  c.name = "logic_gates"
  c.description = "sweep: AND/OR/NAND/NOR/NOT/XOR x hidden units ()/(2,)/(4,): one neuron cannot learn XOR"
  c.model.name = "mlp"
  c.model.hidden = ()
  c.model.activation = "tanh"
  c.data.name = "toy:and"
  c.data.noise = 0.0
  c.data.preprocess = "none"
  c.data.synthetic_size = (64, 4)
  c.train.task = "binary"
  c.train.epochs = 100
  c.train.batch_size = 16
  c.train.log_every = 50
  c.optim.name = "adam"
  c.optim.learning_rate = 0.05
  return c


def get_sweep():
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  s = sweep.default_sweep()
  s.groups = tuple(f"data.name='toy:{g}'; model.hidden={h}" for g in GATES for h in HIDDEN
                   if g == "xor" or h == ())   # every gate with one neuron; XOR also with hidden layers
  return s
