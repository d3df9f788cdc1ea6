"""Every conv lowering and the pooling helpers against XLA's own ops: values and gradients (fast, CPU)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jcnn.nn import layers

LOWERINGS = {"patches": layers.conv_patches, "native": layers.conv_native}
CASES = [  # (spatial input, kernel, strides, padding, dilation, C_in, C_out)
    ((9, 9), (3, 3), (1, 1), "VALID", (1, 1), 1, 4),
    ((9, 8), (3, 3), (2, 2), "SAME", (1, 1), 3, 5),
    ((10, 10), (3, 2), (2, 1), ((1, 2), (0, 1)), (1, 1), 2, 3),
    ((11, 11), (3, 3), (1, 1), "SAME", (2, 2), 2, 4),
    ((20,), (5,), (1,), "SAME", (1,), 4, 6),            # 1-d (text)
    ((17,), (3,), (2,), "VALID", (2,), 3, 2),
]


def _reference(x, w, strides, pads, dilation):
  nd = w.ndim - 2
  sp = "HW"[:nd] if nd <= 2 else "HWD"
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("N" + sp + "C", sp + "IO", "N" + sp + "C"))
  return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=dn,
                                  precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("lowering,case", [("patches", c) for c in CASES] + [("native", c) for c in CASES[1:3]],
                         ids=lambda c: c if isinstance(c, str) else f"{c[0]}k{c[1]}s{c[2]}p{c[3]}d{c[4]}")
def test_conv_lowering_matches_lax(lowering, case):
  spatial, k, strides, padding, dilation, c_in, c_out = case
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2,) + spatial + (c_in,))
  w = jax.random.normal(kw, k + (c_in, c_out)) / np.sqrt(np.prod(k) * c_in)
  pads = layers._pairs(padding, k, dilation, strides, spatial)
  fn = LOWERINGS[lowering]
  with jax.default_matmul_precision("highest"):
    y, y_ref = fn(x, w, strides, pads, dilation), _reference(x, w, strides, pads, dilation)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, y.shape)
    loss = lambda f: lambda x, w: (f(x, w, strides, pads, dilation) * g).sum()
    dx, dw = jax.grad(loss(fn), (0, 1))(x, w)
    dx_ref, dw_ref = jax.grad(loss(_reference), (0, 1))(x, w)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lowering", sorted(LOWERINGS))
def test_conv_lowering_under_vmap(lowering):
  """V=3 variants (own kernels, own inputs) in one vmapped call equal three separate calls."""
  kx, kw = jax.random.split(jax.random.key(1))
  x, w = jax.random.normal(kx, (3, 2, 7, 7, 2)), jax.random.normal(kw, (3, 3, 3, 2, 4))
  pads = [(1, 1), (1, 1)]
  fn = lambda x, w: LOWERINGS[lowering](x, w, (1, 1), pads, (1, 1))
  with jax.default_matmul_precision("highest"):
    y = jax.vmap(fn)(x, w)
    dw = jax.vmap(jax.grad(lambda x, w: fn(x, w).sum(), 1))(x, w)
    for v in range(3):
      np.testing.assert_allclose(y[v], _reference(x[v], w[v], (1, 1), pads, (1, 1)), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(dw[v], jax.grad(lambda w: _reference(x[v], w, (1, 1), pads, (1, 1)).sum())(w[v]),
                                 rtol=1e-5, atol=1e-5)


def test_conv_module_lowerings_share_parameters():
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  conv = layers.Conv(4, (3, 3), padding="SAME", lowering="patches")
  v = conv.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, v["params"]) == {"kernel": (3, 3, 3, 4), "bias": (4,)}
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(conv.apply(v, x), layers.Conv(4, (3, 3), padding="SAME", lowering="native").apply(v, x),
                               rtol=1e-5, atol=1e-5)


def test_shape_lowering_rule_and_values(monkeypatch):
  """'shape' picks native for multi-tap kernels with outputs >= NATIVE_MIN_OUT per dim, patches otherwise; same values."""
  assert layers.shape_lowering((3, 3), (8, 8)) == "native"
  assert layers.shape_lowering((3, 3), (4, 4)) == "native"
  assert layers.shape_lowering((3, 3), (2, 2)) == "patches"            # VGG's last stage: native is ~100x slower
  assert layers.shape_lowering((1, 1), (32, 32)) == "patches"          # a 1x1 conv is a matmul
  chosen = []
  for name in ("native", "patches"):
    fn = getattr(layers, f"conv_{name}")
    monkeypatch.setattr(layers, f"conv_{name}", lambda *a, fn=fn, name=name: chosen.append(name) or fn(*a))
  for spatial, ks, strides, want in (((8, 8), (3, 3), 1, "native"), ((8, 8), (3, 3), 2, "native"),
                                     ((3, 3), (3, 3), 1, "patches"), ((8, 8), (1, 1), 1, "patches"),
                                     ((8, 8), (3, 3), 4, "patches")):                # 8 / 4 -> 2x2 output
    x = jax.random.normal(jax.random.key(2), (2,) + spatial + (3,))
    conv = layers.Conv(4, ks, strides=strides, padding="SAME", lowering="shape")
    v = conv.init(jax.random.key(0), x)
    chosen.clear()
    with jax.default_matmul_precision("highest"):
      y = conv.apply(v, x)
      assert chosen == [want], (spatial, ks, strides)
      np.testing.assert_allclose(y, conv.clone(lowering="patches").apply(v, x), rtol=1e-5, atol=1e-5)


def test_auto_lowering_is_patches_everywhere_on_cpu(monkeypatch):
  """CPU 'auto': im2col at a program's top level, inside lax.scan (chunked steps, CPU sweeps) and under vmap alike, so
  a sweep variant and its standalone run compute with the same lowering ('shape' is opt-in per layer)."""
  if jax.default_backend() != "cpu":
    pytest.skip("the rule is the CPU one")
  chosen = []
  for name in ("native", "patches"):
    fn = getattr(layers, f"conv_{name}")
    monkeypatch.setattr(layers, f"conv_{name}", lambda *a, fn=fn, name=name: chosen.append(name) or fn(*a))
  conv = layers.Conv(4, (3, 3), padding="SAME")
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  v = conv.init(jax.random.key(0), x)
  loss = lambda p, x: conv.apply(p, x).sum()
  cases = {"jit(grad)": lambda: jax.jit(jax.grad(loss))(v, x),
           "scan": lambda: jax.jit(lambda v, x: jax.lax.scan(lambda c, xi: (c + jax.grad(loss)(v, xi[None])["params"]
                                                                            ["kernel"].sum(), None), 0.0, x)[0])(v, x),
           "vmap": lambda: jax.jit(jax.vmap(loss, (None, 0)))(v, x[:, None])}
  want = {"jit(grad)": "patches", "scan": "patches", "vmap": "patches"}
  for case, run in cases.items():
    chosen.clear()
    run()
    assert set(chosen) == {want[case]}, case


POOLS = [  # (spatial, window, strides, padding)
    ((9, 7), (2, 2), None, "VALID"),       # odd sizes: the last row/column is dropped
    ((9, 9), (3, 3), (2, 2), "VALID"),     # overlapping
    ((7, 7), (2, 2), None, "SAME"),
    ((10,), (2,), None, "VALID"),          # 1-d
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOLS, ids=lambda c: f"{c[0]}w{c[1]}s{c[2]}{c[3]}")
def test_pool_matches_flax(kind, case):
  spatial, window, strides, padding = case
  x = jax.random.normal(jax.random.key(3), (2,) + spatial + (3,))
  ours = lambda x: (layers.max_pool if kind == "max" else layers.avg_pool)(x, window, strides, padding)
  fs = window if strides is None else strides          # flax's default stride is 1, ours the window
  ref = lambda x: (nn.max_pool(x, window, fs, padding) if kind == "max" else
                   nn.avg_pool(x, window, fs, padding, count_include_pad=False))
  y, y_ref = ours(x), ref(x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  g = jax.random.normal(jax.random.key(4), y.shape)
  np.testing.assert_allclose(jax.grad(lambda x: (ours(x) * g).sum())(x), jax.grad(lambda x: (ref(x) * g).sum())(x),
                             rtol=1e-6, atol=1e-6)


def test_max_pool_ties_route_to_first_maximum_like_flax():
  """Post-ReLU zeros and saturated activations tie; the whole gradient goes to one element (flax, PyTorch, TF)."""
  x = jnp.array([[1., 1., 0., 2.], [1., 1., 2., 2.], [0., 0., 3., 0.], [0., 0., 0., 3.]])[None, :, :, None]
  g = jnp.array([[1., 2.], [3., 4.]])[None, :, :, None]
  ours = jax.grad(lambda x: (layers.max_pool(x) * g).sum())(x)
  ref = jax.grad(lambda x: (nn.max_pool(x, (2, 2), (2, 2)) * g).sum())(x)
  np.testing.assert_array_equal(ours, ref)
  assert float(ours.sum()) == float(g.sum())


def test_max_pool_grad_under_vmap():
  x = jax.random.normal(jax.random.key(5), (3, 2, 6, 6, 4))
  f = lambda x: (layers.max_pool(x) ** 2).sum()
  ref = lambda x: (nn.max_pool(x, (2, 2), (2, 2)) ** 2).sum()
  np.testing.assert_allclose(jax.vmap(jax.grad(f))(x), jax.vmap(jax.grad(ref))(x), rtol=1e-6)
