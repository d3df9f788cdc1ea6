"""ResNet-20 (CIFAR layout, 269,434 params on 1 channel) on Fashion-MNIST, offline, on a CPU budget.

  python launch.py --experiment=resnet20_fashion
  python launch.py --experiment=resnet20_fashion --config.train.epochs=1 --config.data.train_limit=2560   # timing

He et al.'s CIFAR recipe (resnet20_cifar10: SGD momentum 0.9, lr 0.1, l2 1e-4, step decay at 50% / 75%) on 28x28x1
images (the stages see 28, 14, 7 pixels), shortened to EPOCHS epochs so it fits a small shared CPU: batch 64 at lr 0.05
(the linear-scaling rule from 128 at 0.1) for twice the updates per epoch, and no augmentation (a 3-epoch run is far
from overfitting; flips and crops only slow it down).
Measured (docs/zoo.md; 2 shared CPU cores, ~1 step/s of 64 images when the machine is quiet, 2 s when busy):
  --config.train.epochs=2: 90.63% test accuracy in 47.5 min (epoch 1 at 85.45%, before the lr decay)
  3 epochs (the default): 91.74% test accuracy in 33.5 min (86.81%, 91.40%, 91.74% after each epoch)
"""
from experiments import resnet20_cifar10

EPOCHS = 3


def get_config():
  c = resnet20_cifar10.get_config()
  c.name = "resnet20_fashion"
  c.description = f"ResNet-20 on Fashion-MNIST, offline, {EPOCHS} epochs on CPU; >= 91% test accuracy"
  c.data.name = "fashion_mnist"
  c.data.augment = "none"
  c.train.batch_size = 64
  c.optim.learning_rate = 0.05
  c.train.epochs = EPOCHS
  return c
