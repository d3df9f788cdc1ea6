"""Every conv lowering and the pooling helpers against XLA's own ops: values and gradients (fast, CPU)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jcnn.nn import layers, onednn

LOWERINGS = {"patches": layers.conv_patches, "native": layers.conv_native, "onednn": layers.conv_onednn}
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


@pytest.mark.parametrize("lowering,case", [("patches", c) for c in CASES] + [("native", c) for c in CASES[1:3]]
                         + [("onednn", c) for c in CASES],
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


def test_auto_lowering_is_onednn_everywhere_on_cpu(monkeypatch):
  """CPU 'auto' (oneDNN built, nothing measured, as in tests): the oneDNN call at a program's top level, inside
  lax.scan (chunked steps, CPU sweeps) and under vmap alike, so a sweep variant and its standalone run compute with
  the same kernel; inside layers.xla_lowering() (ONNX export) im2col; without oneDNN im2col, with a one-line notice."""
  if jax.default_backend() != "cpu":
    pytest.skip("the rule is the CPU one")
  chosen = []
  for name in ("native", "patches", "onednn"):
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
  for case, run in cases.items():
    chosen.clear()
    run()
    assert set(chosen) == {"onednn"}, case
  chosen.clear()
  with layers.xla_lowering():
    jax.jit(jax.grad(loss))(v, x)
  assert set(chosen) == {"patches"}
  chosen.clear()
  jax.jit(jax.grad(loss))(v, x.astype(jnp.bfloat16))                  # oneDNN here is float32 only
  assert set(chosen) == {"patches"}


def test_without_onednn_convs_fall_back_with_one_line(monkeypatch, capsys):
  monkeypatch.setattr(onednn, "_prefixes", lambda: [])
  reason = onednn.locate()
  assert reason == "the oneDNN wheels are not installed (pip install 'jcnn[onednn]')"
  monkeypatch.setattr(onednn, "unavailable", lambda: reason)
  onednn.notice.cache_clear()
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  conv = layers.Conv(4, (3, 3), padding="SAME", lowering="onednn")
  v = conv.init(jax.random.key(0), x)
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(conv.apply(v, x), _reference(x, v["params"]["kernel"], (1, 1), [(1, 1)] * 2, (1, 1))
                               + v["params"]["bias"], rtol=1e-5, atol=1e-5)
    layers.Conv(4, (3, 3), padding="SAME").apply(v, x)                 # 'auto' falls back too; the notice is once
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"jcnn: oneDNN convolutions unavailable ({reason}); convolutions use XLA's lowering"]
  onednn.notice.cache_clear()


def test_onednn_build_failure_is_one_reason(monkeypatch, tmp_path):
  """No compiler: build() raises a one-line reason, and nothing half-written is left in the cache."""
  monkeypatch.setenv("JCNN_ONEDNN_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", "false")
  with pytest.raises(RuntimeError, match=r"^compiling onednn_conv.cc failed: \(no output\)$"):
    onednn.build()
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("groups,c_in,c_out", [(2, 4, 6), (3, 3, 3)])
def test_onednn_grouped_conv_matches_lax(groups, c_in, c_out):
  """feature_group_count: lax's grouped HWIO kernel [kh, kw, C/g, O], O group-major."""
  kx, kw, kg = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(kx, (2, 9, 7, c_in))
  w = jax.random.normal(kw, (3, 3, c_in // groups, c_out))
  pads, strides, dilation = [(1, 0), (2, 1)], (2, 1), (1, 2)
  ref = lambda x, w: lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation, feature_group_count=groups,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
  ours = lambda x, w: onednn.conv(x, w, strides, pads, dilation, groups)
  g = jax.random.normal(kg, ref(x, w).shape)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.grad(lambda x, w: (ours(x, w) * g).sum(), (0, 1))(x, w),
                  jax.grad(lambda x, w: (ref(x, w) * g).sum(), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_onednn_race_and_cached_choice(monkeypatch, tmp_path):
  """With a machine cache the CPU choice is raced once per layer shape and read back afterwards."""
  monkeypatch.setenv("JCNN_MACHINE_CACHE", str(tmp_path))
  calls = []
  monkeypatch.setattr(onednn, "race", lambda *a, **k: calls.append(a[0]) or {"lowering": "patches", "onednn_ms": 2.0,
                                                                             "xla_ms": 1.0})
  w = jnp.zeros((3, 3, 3, 4))
  for batch in (8, 10, 8, 1):                                          # batch 1 (model.init): no race, XLA's
    assert onednn.choose(jnp.zeros((batch, 8, 8, 3)), w, (1, 1), [(1, 1)] * 2, (1, 1), layers.conv_patches) == "patches"
  assert calls == [(8, 8, 8, 3), (10, 8, 8, 3)]
  table = __import__("json").loads((tmp_path / "conv_lowering.json").read_text())
  assert sorted(k.split("|")[-1] for k in table) == [
      f"x ({b}, 8, 8, 3) k (3, 3, 3, 4) s (1, 1) p ((1, 1), (1, 1)) d (1, 1)" for b in (10, 8)]
  assert {e["xla_ms"] for e in table.values()} == {1.0}
  monkeypatch.undo()
  monkeypatch.setenv("JCNN_MACHINE_CACHE", str(tmp_path))
  out = onednn.race((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), [(1, 1)] * 2, (1, 1), layers.conv_patches, reps=1)
  assert out["lowering"] == ("onednn" if out["onednn_ms"] * 1.10 <= out["xla_ms"] else "patches") and out["xla_ms"] > 0


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
