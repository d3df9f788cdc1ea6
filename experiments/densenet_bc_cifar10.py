"""DenseNet-BC (L=100, k=12; 769,162 params, the paper's 0.8M) on CIFAR-10 (TFDS), Huang et al. 2017's recipe.

  python launch.py --experiment=densenet_bc_cifar10

SGD with momentum 0.9 (the paper: Nesterov), lr 0.1, batch 64, 300 epochs, lr / 10 at 50% and 75%, weight decay 1e-4
(l2 = 1e-4, see resnet20_cifar10), flips and crops, no dropout (the paper uses 0.2 only without augmentation).
Expected: ~95.5% test accuracy (paper, C10+: 4.51% error). Not run here (no CIFAR-10 offline).
"""
from experiments import resnet20_cifar10


def get_config():
  c = resnet20_cifar10.get_config()
  c.name = "densenet_bc_cifar10"
  c.description = "DenseNet-BC-100 k=12 (0.8M params) on CIFAR-10; ~95.5% test accuracy in 300 epochs"
  c.model.name = "densenet_bc100"
  c.train.epochs = 300
  c.train.batch_size = 64
  c.optim.name = "nesterov"
  return c
