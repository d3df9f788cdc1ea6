"""The model zoo: a plain dict from name to a linen Module class or partial. `get(config.model)` builds one.

Each family lives in its own file; add a model by importing it here and adding one line to ZOO.
"""
from typing import Any, Mapping

import flax.linen as nn

from jcnn.errors import ConfigError
from jcnn.models.convnet import ConvNet, MLP

ZOO: dict[str, Any] = {
    "convnet": ConvNet,
    "mlp": MLP,
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
