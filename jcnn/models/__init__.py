"""The model zoo: a plain dict from name to a linen Module class or partial. `get(config.model)` builds one.

Each family lives in its own file; add a model by importing it here and adding one line to ZOO. The `*_tiny` entries
are small members of each family, for tests. Parameter counts and FLOPs: docs/zoo.md.

May import: jcnn.nn, jcnn.errors.
"""
from typing import Any, Mapping

import flax.linen as nn

from jcnn.errors import ConfigError
from jcnn.models import alexnet, densenet, googlenet, lenet, resnet, textcnn, vgg
from jcnn.models.convnet import ConvNet, MLP

ZOO: dict[str, Any] = {
    "convnet": ConvNet,
    "mlp": MLP,
    "lenet5": lenet.LeNet5,
    "alexnet": alexnet.AlexNet,
    "vgg11": vgg.VGG11,
    "vgg13": vgg.VGG13,
    "vgg16": vgg.VGG16,
    "vgg19": vgg.VGG19,
    "vgg11_cifar": vgg.VGG11CIFAR,
    "vgg_tiny": vgg.VGGTiny,
    "googlenet": googlenet.GoogLeNet,
    "googlenet_tiny": googlenet.GoogLeNetTiny,
    # ResNets (He et al. 2016): ImageNet layout, the same with a CIFAR stem, and the 6n+2 CIFAR family.
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "resnet18_cifar": resnet.ResNet18CIFAR,
    "resnet20": resnet.ResNet20,
    "resnet32": resnet.ResNet32,
    "resnet44": resnet.ResNet44,
    "resnet56": resnet.ResNet56,
    "resnet110": resnet.ResNet110,
    "resnet_tiny": resnet.ResNetTiny,
    "densenet121": densenet.DenseNet121,
    "densenet_bc100": densenet.DenseNetBC100,
    "densenet_tiny": densenet.DenseNetTiny,
    "textcnn": textcnn.TextCNN,
    "textcnn_tiny": textcnn.TextCNNTiny,
}


def get(model_config: Mapping[str, Any], **overrides) -> nn.Module:
  """Builds `ZOO[config.name](**other fields, **overrides)`; overrides may be traced values (sweeps)."""
  cfg = dict(model_config)
  name = cfg.pop("name")
  if name not in ZOO:
    raise ConfigError(f"unknown model {name!r}: set config.model.name to one of {', '.join(sorted(ZOO))}")
  cfg.update(overrides)
  try:
    return ZOO[name](**cfg)
  except TypeError as e:
    raise ConfigError(f"model {name!r} does not take these fields {sorted(cfg)}: {e}") from None
