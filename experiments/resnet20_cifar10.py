"""ResNet-20 on CIFAR-10, He et al. 2016 §4.2 (TFDS download; 269,722 params).

  python launch.py --experiment=resnet20_cifar10
  python launch.py --experiment=resnet20_cifar10 --config.model.name=resnet56     # any 6n+2 depth in the zoo

The paper's recipe: SGD momentum 0.9, lr 0.1, batch 128, weight decay 1e-4, 64k iterations (= 164 epochs of 50k
images; we train on all 50k, the paper held out 5k), lr / 10 at 50% and 75% of training (32k, 48k), per-channel
standardised pixels, random flips and 4-pixel-padded 32x32 crops. Expected: ~91.25% test accuracy (paper: 8.75% error).

Weight decay: `config.train.l2` adds l2 * 0.5 * sum(kernel ** 2) to the loss, whose gradient is l2 * kernel, the same
step as PyTorch's SGD(weight_decay=1e-4); so l2 = 1e-4 (Keras' regularizers.l2(lam) has no 0.5: lam = 5e-5 there).
Biases and BatchNorm scales/shifts are not decayed (PyTorch's default decays them too; the difference is small).
"""
from experiments import fashion_convnet


def get_config():
  c = fashion_convnet.get_config()
  c.name = "resnet20_cifar10"
  c.description = "ResNet-20 (269,722 params) on CIFAR-10, He et al.'s recipe; ~91.3% test accuracy in 164 epochs"
  c.model.name = "resnet20"
  c.data.name = "cifar10"
  c.data.preprocess = "standardize"
  c.data.augment = "flip_crop"
  c.train.epochs = 164
  c.train.batch_size = 128
  c.train.l2 = 1e-4             # = PyTorch weight_decay=1e-4 (see the docstring)
  c.optim.name = "momentum"
  c.optim.momentum = 0.9
  c.optim.learning_rate = 0.1
  c.optim.schedule = "step"
  c.optim.boundaries = (0.5, 0.75)
  c.optim.decay_factor = 0.1
  return c
