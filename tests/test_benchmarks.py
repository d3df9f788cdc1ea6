"""benchmarks/throughput.py's PyTorch twins: same parameter counts as jcnn's models, and they run."""
import functools
import json
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


def test_plain_flax_baseline_is_jcnns_convnet():
  """benchmarks/plain_flax.py's baseline is the same network: jcnn's convnet parameters, renamed into the plain Flax
  module, give the same logits (and the two parameter trees have the same shapes)."""
  import plain_flax  # pylint: disable=g-import-not-at-top
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  jc = models.get({"name": "convnet"}, num_classes=10)
  params = jax.jit(lambda k: jc.init(k, x, train=False))(jax.random.key(1))["params"]   # jitted: op-by-op is slow
  names = {"conv1": "Conv_0", "conv2": "Conv_1", "conv3": "Conv_2", "dense1": "Dense_0", "head": "Dense_1"}
  plain = plain_flax.PlainConvNet()
  want_shapes = jax.tree.map(jnp.shape, jax.eval_shape(plain.init, jax.random.key(2), x)["params"])
  renamed = {names[k]: v for k, v in params.items()}
  assert jax.tree.map(jnp.shape, renamed) == want_shapes
  got = jax.jit(lambda p: plain.apply({"params": p}, x))(renamed)
  want = jax.jit(lambda p: jc.apply({"params": p}, x, train=False))(params)
  assert float(jnp.abs(want).max()) > 1e-3                       # not both zero
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_mesh_same_hlo_normalise_drops_only_annotations():
  """benchmarks/mesh_same_hlo.py: sharding attributes, source locations, the header and instruction numbers go; ops,
  shapes and operands stay."""
  import mesh_same_hlo  # pylint: disable=g-import-not-at-top
  plain = ('HloModule jit__lambda, entry_computation_layout={(f32[2]{0})->f32[2]{0}}\n\nFileLocations\n'
           '1 {file_name_id=1 function_name_id=1 line=143 end_line=143 column=2 end_column=8}\n\n'
           '  %x.7 = f32[2]{0} parameter(0), metadata={op_name="x"}\n'
           '  ROOT %add.9 = f32[2]{0} add(%x.7, %x.7)\n')
  mesh = ('HloModule jit__lambda, entry_computation_layout={(f32[2]{0})->f32[2]{0}}, num_partitions=1\n\n'
          'FileLocations\n'
          '1 {file_name_id=1 function_name_id=1 line=144 end_line=144 column=2 end_column=8}\n\n'
          '  %x.8 = f32[2]{0} parameter(0), sharding={replicated}, frontend_attributes={xla.sdy.sharding='
          '"#sdy.sharding<@mesh, [{\\"data\\"}]>"}\n'
          '  ROOT %add.10 = f32[2]{0} add(%x.8, %x.8), sharding={devices=[1]<=[1]}\n')
  assert mesh_same_hlo.normalise(plain) == mesh_same_hlo.normalise(mesh)
  assert mesh_same_hlo.normalise(plain) != mesh_same_hlo.normalise(mesh.replace("add(", "multiply("))
  assert mesh_same_hlo.normalise(plain) != mesh_same_hlo.normalise(mesh.replace("f32[2]{0} param", "f32[3]{0} param"))


def test_plain_flax_resnet20_is_jcnns_resnet20():
  """benchmarks/plain_flax.py --model=resnet20: the paper's 269,722 parameters (He et al. 2016: 0.27M), and jcnn's
  resnet20 variables, renamed layer by layer into it (flax numbers its unnamed layers in creation order), give the
  same logits."""
  import plain_flax  # pylint: disable=g-import-not-at-top
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  jc = models.get({"name": "resnet20"}, num_classes=10)
  v = jax.jit(lambda k: jc.init(k, x, train=False))(jax.random.key(1))
  v = {"params": v["params"], "batch_stats": jax.tree.map(lambda a: a + 0.1, v["batch_stats"])}  # not identity stats
  plain = plain_flax.PlainResNet20()
  shapes = jax.eval_shape(lambda k: plain.init(k, x, train=False), jax.random.key(2))
  assert sum(a.size for a in jax.tree.leaves(shapes["params"])) == 269_722
  layers_in_order = ["stem"] + [f"stage{s}_block{b}/conv{c}" for s in (1, 2, 3) for b in (1, 2, 3) for c in (1, 2)]
  at = lambda tree, path: functools.reduce(lambda t, k: t[k], path.split("/"), tree)
  poured = {"params": {"Dense_0": v["params"]["head"]}, "batch_stats": {}}
  for i, name in enumerate(layers_in_order):
    poured["params"][f"Conv_{i}"] = at(v["params"], name)["conv"]
    poured["params"][f"BatchNorm_{i}"] = at(v["params"], name)["norm"]
    poured["batch_stats"][f"BatchNorm_{i}"] = at(v["batch_stats"], name)["norm"]
  for col in ("params", "batch_stats"):
    assert jax.tree.map(jnp.shape, poured[col]) == jax.tree.map(lambda s: s.shape, shapes[col])
  got = jax.jit(lambda v: plain.apply(v, x, train=False))(poured)
  want = jax.jit(lambda v: jc.apply(v, x, train=False))(v)
  assert float(jnp.abs(want).max()) > 1e-3
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gpu_suite_runs_on_cpu_with_tiny_sizes(tmp_path):
  """benchmarks/gpu_suite.py, kept for when a GPU is lent: every part runs and lands in the JSON (on CPU the device
  reports no memory, so the peak is null)."""
  import gpu_suite  # pylint: disable=g-import-not-at-top
  out = tmp_path / "gpu.json"
  gpu_suite.main(["--tiny", f"--out={out}"])
  r = json.loads(out.read_text())
  assert r["device"]["backend"] == "cpu" and r["machine"]["cores"] >= 1 and "--tiny" in r["command"]
  assert [(t["model"], t["dtype"]) for t in r["train"]] == [("convnet", "float32"), ("convnet", "bfloat16")]
  assert all(t["images_per_s"] > 0 and t["compile_s"] > 0 for t in r["train"])
  (s,) = r["sweep"]
  assert s["V"] == 2 and s["ratio"] == s["sweep_model_images_per_s"] / s["sequential_model_images_per_s"] > 0
  (m,) = r["memory"]
  assert m["rule_bytes"] == 2 * m["rule_bytes_per_variant"] > 0 and m["device_peak_bytes"] is None
