"""A search that decides: successive halving over learning rate x dropout on the Fashion-MNIST convnet.

  python launch.py --experiment=fashion_halving                       # Ctrl-C any time; the same command resumes
  python launch.py --experiment=fashion_halving --sweep.search=pbt    # population-based training instead
  python launch.py --experiment=fashion_halving --sweep.search=grid   # every variant every epoch, to compare

9 variants train in one program. After epoch 1 the best 3 on the validation split go on, after epoch 3 the best one;
it trains to epoch 9. That is 9 + 3 x 2 + 1 x 6 = 21 variant-epochs, against the grid's 81. Budget: 12,000 training
and 2,000 validation images. Results: summary.md (with the epoch each variant reached), lineage.jsonl (each
decision), variants.jsonl, curves.png; with pbt also pbt.png (each variant's hyperparameters over training).
"""
from experiments import fashion_convnet


def get_config():
  c = fashion_convnet.get_config()
  c.name = "fashion_halving"
  c.description = "successive halving: learning rate x dropout on the Fashion-MNIST convnet, in one program"
  c.train.epochs = 9
  c.data.train_limit = 12000
  c.data.val_size = 2000
  return c


def get_sweep():
  from jcnn import sweep  # pylint: disable=g-import-not-at-top
  s = sweep.default_sweep()
  s.seeds = 1
  s.learning_rate = (3e-4, 1e-3, 3e-3)
  s.dropout_rate = (0.0, 0.25, 0.5)
  s.search = "halving"
  s.rungs = (1, 3, 9)
  s.eta = 3
  return s
