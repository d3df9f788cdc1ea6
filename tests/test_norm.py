"""jcnn.nn.norm.BatchNorm (one-pass custom VJP, optionally fused with ReLU) against flax's nn.BatchNorm."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn import models, train
from jcnn.nn import blocks, norm


class Ref(nn.Module):
  relu: bool

  @nn.compact
  def __call__(self, x, train):
    y = nn.BatchNorm(momentum=0.9, epsilon=1e-5, name="bn")(x, use_running_average=not train)
    return jax.nn.relu(y) if self.relu else y


class Ours(nn.Module):
  relu: bool

  @nn.compact
  def __call__(self, x, train):
    return norm.BatchNorm(momentum=0.9, epsilon=1e-5, name="bn")(x, use_running_average=not train,
                                                                  act="relu" if self.relu else None)


@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_matches_flax(relu):
  x = jax.random.normal(jax.random.key(0), (6, 5, 4, 3)) * 3 + 1.5
  ref, ours = Ref(relu), Ours(relu)
  v_ref = ref.init(jax.random.key(1), x, train=False)
  v_ours = ours.init(jax.random.key(1), x, train=False)
  assert jax.tree.map(jnp.shape, v_ref) == jax.tree.map(jnp.shape, v_ours)        # same variables: drop-in
  params = {"bn": {"scale": jnp.array([0.5, -1.0, 2.0]), "bias": jnp.array([0.1, 0.3, -0.2])}}
  stats = v_ref["batch_stats"]
  w = jax.random.normal(jax.random.key(2), x.shape)                                  # a loss that is not symmetric

  def loss(m, p, x):
    y, upd = m.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
    return (y * w).sum() + (y ** 2).sum(), (y, upd["batch_stats"])

  (l_r, (y_r, s_r)), (gp_r, gx_r) = jax.value_and_grad(functools.partial(loss, ref), (0, 1), has_aux=True)(params, x)
  (l_o, (y_o, s_o)), (gp_o, gx_o) = jax.value_and_grad(functools.partial(loss, ours), (0, 1), has_aux=True)(params, x)
  np.testing.assert_allclose(y_o, y_r, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gx_o, gx_r, rtol=1e-4, atol=1e-4)
  for k in ("scale", "bias"):
    np.testing.assert_allclose(gp_o["bn"][k], gp_r["bn"][k], rtol=1e-4, atol=1e-4)
  for k in ("mean", "var"):                                                           # running statistics
    np.testing.assert_allclose(s_o["bn"][k], s_r["bn"][k], rtol=1e-6, atol=1e-6)
  # evaluation: running statistics
  y_r = ref.apply({"params": params, "batch_stats": s_r}, x, train=False)
  y_o = ours.apply({"params": params, "batch_stats": s_o}, x, train=False)
  np.testing.assert_allclose(y_o, y_r, rtol=1e-5, atol=1e-5)


def test_fusion_is_chosen_only_for_plain_relu():
  bn = functools.partial(norm.BatchNorm, momentum=0.9)
  assert blocks.fuses_relu(bn, blocks.layers.Activation, "relu")
  assert not blocks.fuses_relu(bn, blocks.layers.Activation, "elu")
  assert not blocks.fuses_relu(bn, blocks.layers.Activation, 2)                      # traced index: no
  assert not blocks.fuses_relu(functools.partial(nn.BatchNorm), blocks.layers.Activation, "relu")  # flax's
  assert blocks.fuses_relu(blocks.FUSED_BATCH_NORM, blocks.layers.Activation, "relu")
  assert not blocks.fuses_relu(None, blocks.layers.Activation, "relu")


@pytest.mark.parametrize("name", ["resnet_tiny", "densenet_tiny", "vgg_tiny"])
def test_model_with_jcnn_batch_norm_trains_like_flax(name):
  """Same model, flax BatchNorm vs jcnn.nn.norm.BatchNorm (fused where it applies): same variables, one step equal."""
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  y = jnp.arange(8) % 10
  out = []
  for n in (blocks.BATCH_NORM, blocks.FUSED_BATCH_NORM):
    model = models.get({"name": name}, num_classes=10).clone(norm=n)
    tx = train.make_optimizer({"name": "sgd", "learning_rate": 0.1})
    state = train.init_state(model, tx, jax.random.key(1), x)
    state, metrics = jax.jit(train.make_train_step(model, tx))(state, x, y, jax.random.key(2))
    out.append((state, metrics))
  (s_a, m_a), (s_b, m_b) = out
  assert jax.tree.structure(s_a.params) == jax.tree.structure(s_b.params)
  np.testing.assert_allclose(m_a["loss_sum"], m_b["loss_sum"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), s_a.params, s_b.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), s_a.batch_stats, s_b.batch_stats)
