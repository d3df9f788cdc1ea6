"""benchmarks/throughput.py's PyTorch twins: same parameter counts as jcnn's models, and they run."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, require_torch
from jcnn import models
from jcnn.inspect import summary

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import throughput  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.parametrize("name", sorted(throughput.CASES))
def test_torch_twin_has_jcnn_parameter_count_and_runs(name):
  torch = require_torch()
  cfg, shape, optim = throughput.CASES[name]
  model = models.get(cfg, num_classes=10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + shape), train=False))
  twin = throughput.torch_model(name)
  assert sum(p.numel() for p in twin.parameters()) == summary.count_params(variables["params"])
  x = torch.from_numpy(np.zeros((2, shape[2], shape[0], shape[1]), np.float32))
  twin.train()
  out = twin(x)
  assert tuple(out.shape) == (2, 10)
  throughput.torch_optimizer(optim, twin.parameters())


def test_twins_batch_norm_matches_jcnn():
  """BatchNorm layers (and so running-statistics buffers) in the twins exactly where jcnn has them."""
  torch = require_torch()
  for name in ("resnet20", "vgg11_cifar", "densenet_bc100"):
    cfg, shape, _ = throughput.CASES[name]
    variables = jax.eval_shape(lambda cfg=cfg, shape=shape: models.get(cfg, num_classes=10).init(
        jax.random.key(0), jnp.zeros((1,) + shape), train=False))
    n_jcnn = len(jax.tree.leaves(variables["batch_stats"])) // 2      # mean and var per BatchNorm
    n_torch = sum(isinstance(m, torch.nn.BatchNorm2d) for m in throughput.torch_model(name).modules())
    assert n_jcnn == n_torch, name
