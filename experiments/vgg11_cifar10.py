"""VGG-11 with BatchNorm and the CIFAR head (global pool -> dropout -> fc; 9,228,362 params) on CIFAR-10 (TFDS).

  python launch.py --experiment=vgg11_cifar10

SGD momentum 0.9, lr 0.05, batch 128, l2 5e-4 (= PyTorch weight_decay=5e-4, see resnet20_cifar10), cosine decay over
30 epochs, flips and 4-pixel crops, standardised pixels. Expected: ~91-92% test accuracy (not run here: no CIFAR-10
offline, and ~0.3 GFLOPs per image is too much for the shared CPU).
"""
from experiments import resnet20_cifar10


def get_config():
  c = resnet20_cifar10.get_config()
  c.name = "vgg11_cifar10"
  c.description = "VGG-11-BN (9.2M params, CIFAR head) on CIFAR-10; ~92% test accuracy in 30 epochs"
  c.model.name = "vgg11_cifar"
  c.model.dropout_rate = 0.5
  c.train.epochs = 30
  c.train.l2 = 5e-4
  c.optim.learning_rate = 0.05
  c.optim.schedule = "cosine"
  return c
