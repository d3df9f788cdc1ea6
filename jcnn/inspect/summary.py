"""A layer table like Keras' `model.summary()`, extended: per layer the output shape, parameters, FLOPs for one image
(2 per multiply-add of every convolution and dense layer), the cumulative stride on the input ("jump") and the
receptive field; totals, and the layer count (convolutions + dense layers on the longest path from input to output:
VGG-16 16, ResNet-18 18, the Keras convnet 5, GoogLeNet 22; pooling, BatchNorm, activations, flatten not counted).

    print(summary(ConvNet(), (28, 28, 1)))

Rows come from the outputs each submodule returns (recorded with flax's intercept_methods). Shapes are traced abstractly
(jax.eval_shape / jax.make_jaxpr), so even a 138M-parameter VGG costs no memory or compute to summarise. Receptive
fields, jumps, depth and FLOPs come from one pass of rules over the model's jaxpr (below), so they hold for any model
built from jax primitives: branches (Inception: the largest field of its branches), residual additions, dilation,
strided shortcuts, function-style pooling, and either convolution lowering.

Receptive field conventions: the theoretical field, not clipped at the image border (so with SAME padding it may exceed
the input: ResNet-18's last stage sees 435 pixels of a 224 input); "all" after a flatten / global pool / dense layer.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jcnn.nn import layers


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _shape(out) -> str:
  leaves = jax.tree.leaves(out)
  return ", ".join(str(tuple(x.shape[1:])) for x in leaves) if leaves else "-"


def _call_recorder(depth: int, calls: list):
  """An nn.intercept_methods interceptor appending {'path', 'out'} for each submodule call up to `depth` deep."""

  def record(next_fun, args, kwargs, context):
    path = tuple(context.module.path)
    if context.method_name != "__call__" or not 0 < len(path) <= depth:
      return next_fun(*args, **kwargs)
    row = {"path": path}
    calls.append(row)          # appended at call start, so parents come before their children
    out = next_fun(*args, **kwargs)
    row.setdefault("out", out)
    return out
  return record


def layer_rows(model: nn.Module, input_shape: Sequence[int], depth: int = 1, variables=None,
               input_dtype=jnp.float32) -> list[dict]:
  """[{'name', 'output_shape' (no batch axis), 'params', 'state'}] per submodule up to `depth` deep, in call order."""
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), input_dtype)
  calls: list[dict] = []
  record = _call_recorder(depth, calls)

  def run(x):
    with nn.intercept_methods(record):
      return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)

  abstract = jax.eval_shape(run, x)
  params = (variables or abstract).get("params", {})
  stats = (variables or abstract).get("batch_stats", {})
  rows, seen = [], set()
  for c in calls:
    if c["path"] in seen:      # a shared module called twice shows once
      continue
    seen.add(c["path"])
    rows.append({"name": "/".join(c["path"]), "output_shape": _shape(c["out"]),
                 "params": count_params(_get(params, c["path"])), "state": count_params(_get(stats, c["path"]))})
  return rows


def _get(tree, path):
  for k in path:
    if not isinstance(tree, dict) or k not in tree:
      return {}
    tree = tree[k]
  return tree


def _abstract_variables(model: nn.Module, x: jax.ShapeDtypeStruct):
  return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x,
                                             train=False), x)


def flops_per_example(model: nn.Module, input_shape: Sequence[int], input_dtype=jnp.float32) -> float:
  """Forward-pass FLOPs for one example, from XLA's cost analysis of the lowered (unoptimised) program."""
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), input_dtype)
  variables = _abstract_variables(model, x)
  with layers.xla_lowering():        # XLA's cost analysis cannot see inside a oneDNN custom call
    cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))



# ----------------------------------------------------------------------------------------------------------------
# Receptive fields, jumps, layer depth and matmul FLOPs from the model's jaxpr.
#
# Every tensor of the traced forward pass carries, for each spatial axis k of the input, either
#   (axis, start, jump, rf): along its axis `axis`, element i sees input positions [start + i*jump, start + i*jump + rf)
#   FULL:                    every element depends on the whole input axis (after flatten/dense or a global pool)
# and a depth: the most convolutions / dense layers (a dot_general or conv with a parameter operand) on any path from
# the input. Each primitive has a rule: slices move the start and multiply the jump, pads move the start, a window
# (reshape into [n/w, w] and reduce, or reduce_window, or a native conv) widens rf by (w-1)*dilation*jump, elementwise
# ops and channel concatenations take the union of their inputs (branches and residual additions: the largest field).
# Because the rules act on primitives, the conv lowering (im2col slices or native), function-style pooling, shortcuts
# and dilation need no special cases; anything unknown is treated conservatively as FULL.
FULL = "full"


class _Info(NamedTuple):
  maps: dict        # input spatial axis k -> (axis, start, jump, rf) | FULL; empty = does not depend on the input
  depth: int        # conv/dense layers on the longest path from the input (-1: no input dependence)


_NONE = _Info({}, -1)


def _union(infos: Sequence[_Info], out_ndim: int) -> _Info:
  """Elementwise combination of same-shaped tensors: per input axis, the union of the intervals."""
  maps: dict = {}
  for info in infos:
    for k, m in info.maps.items():
      old = maps.get(k)
      if old is None:
        maps[k] = m
      elif old == FULL or m == FULL or old[0] != m[0] or old[2] != m[2]:
        maps[k] = FULL
      else:
        lo, hi = min(old[1], m[1]), max(old[1] + old[3], m[1] + m[3])
        maps[k] = (old[0], lo, old[2], hi - lo)
  return _Info(maps, max([i.depth for i in infos] + [-1]))


def _full(infos: Sequence[_Info], extra_depth: int = 0) -> _Info:
  dep = [i for i in infos if i.maps]
  if not dep:
    return _NONE
  return _Info({k: FULL for i in dep for k in i.maps}, max(i.depth for i in dep) + extra_depth)


def _remap(info: _Info, axis_map: dict, full_axes=()) -> _Info:
  """Moves mapped axes by `axis_map` (old -> new); axes in full_axes (or missing from axis_map) become FULL."""
  maps = {}
  for k, m in info.maps.items():
    if m == FULL or m[0] in full_axes or m[0] not in axis_map:
      maps[k] = FULL
    else:
      maps[k] = (axis_map[m[0]],) + tuple(m[1:])
  return _Info(maps, info.depth)


def _window(m, pad_lo: int, size: int, stride: int, dilation: int):
  """A sliding window of `size` taps (dilated), stride and low padding on one mapped axis."""
  axis, start, jump, rf = m
  return (axis, start - pad_lo * jump, jump * stride, rf + (size - 1) * dilation * jump)


def _inner_jaxprs(eqn):
  for v in eqn.params.values():
    if isinstance(v, jcore.ClosedJaxpr):
      yield v.jaxpr
    elif isinstance(v, jcore.Jaxpr):
      yield v


def _matmul_flops(eqn) -> float:
  p, out = eqn.primitive.name, eqn.outvars[0].aval
  if p == "dot_general":
    (lc, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * np.prod(out.shape) * np.prod([lhs[a] for a in lc])
  if p == "conv_general_dilated":
    rhs, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
    return 2.0 * np.prod(out.shape) * np.prod([rhs[a] for a in spec[1:]])   # C_in/groups x kernel taps per output
  return 0.0


def _propagate(jaxpr, in_infos: Sequence[_Info], flops: dict, stack: str = "") -> list[_Info]:
  """Runs the rules over `jaxpr`; adds each dot/conv's FLOPs to flops[name_stack]. Returns the outvars' infos."""
  env: dict = {}
  read = lambda v: _NONE if isinstance(v, jcore.Literal) else env.get(v, _NONE)
  for v, info in zip(jaxpr.invars, in_infos):
    env[v] = info
  for eqn in jaxpr.eqns:
    name_stack = str(eqn.source_info.name_stack)
    here = name_stack if name_stack.startswith(stack) else "/".join(s for s in (stack, name_stack) if s)
    ins = [read(v) for v in eqn.invars]
    outs = _rule(eqn, ins, flops, here)
    for v, info in zip(eqn.outvars, outs):
      env[v] = info
  return [read(v) for v in jaxpr.outvars]


def _rule(eqn, ins: list[_Info], flops: dict, stack: str) -> list[_Info]:
  p, params = eqn.primitive.name, eqn.params
  outs = eqn.outvars
  out_ndim = len(outs[0].aval.shape) if hasattr(outs[0].aval, "shape") else 0
  f = _matmul_flops(eqn)
  if f:
    flops[stack] = flops.get(stack, 0.0) + f
  inner = list(_inner_jaxprs(eqn))
  if p == "cond":                       # lax.switch (activation by index): the union of every branch
    branches = [b.jaxpr for b in params["branches"]]
    res = [_propagate(b, ins[1:], {}, stack) for b in branches]
    return [_union([r[i] for r in res], out_ndim) for i in range(len(outs))]
  if len(inner) == 1 and len(inner[0].invars) == len(ins):     # jit, custom_jvp / custom_vjp calls, remat
    return _propagate(inner[0], ins, flops, stack)
  if not any(i.maps for i in ins):
    return [_NONE] * len(outs)
  x = ins[0]
  if p == "pad":
    maps = {}
    for k, m in x.maps.items():
      lo, _, interior = params["padding_config"][m[0]] if m != FULL else (0, 0, 0)
      maps[k] = FULL if m == FULL or interior else (m[0], m[1] - lo * m[2], m[2], m[3])
    return [_union([_Info(maps, x.depth)] + ins[1:], out_ndim)]
  if p == "slice":
    strides = params["strides"] or (1,) * len(params["start_indices"])
    maps = {k: m if m == FULL else (m[0], m[1] + params["start_indices"][m[0]] * m[2], m[2] * strides[m[0]], m[3])
            for k, m in x.maps.items()}
    return [_Info(maps, x.depth)]
  if p == "concatenate":
    d = params["dimension"]
    return [_union([_remap(i, {a: a for a in range(out_ndim)}, (d,)) for i in ins], out_ndim)]
  if p == "stack":                      # a new axis at params["axis"]: later axes move up one
    d = params["axis"]
    return [_union([_remap(i, {a: a + (a >= d) for a in range(out_ndim - 1)}) for i in ins], out_ndim)]
  if p == "split":
    return [_remap(x, {a: a for a in range(out_ndim)}, (params["axis"],)) for _ in outs]
  if p == "transpose":
    perm = params["permutation"]
    return [_remap(x, {old: new for new, old in enumerate(perm)})]
  if p == "broadcast_in_dim":
    return [_remap(x, dict(enumerate(params["broadcast_dimensions"])))]
  if p == "squeeze":
    dims = set(params["dimensions"])
    kept = [a for a in range(len(eqn.invars[0].aval.shape)) if a not in dims]
    return [_remap(x, {old: new for new, old in enumerate(kept)})]
  if p.startswith("reduce_") and "axes" in params or p in ("argmax", "argmin"):
    axes = set(params["axes"])
    kept = [a for a in range(len(eqn.invars[0].aval.shape)) if a not in axes]
    return [_remap(x, {old: new for new, old in enumerate(kept)}, tuple(axes))]
  if p.startswith("reduce_window"):
    maps = {}
    for k, m in x.maps.items():
      if m == FULL:
        maps[k] = FULL
        continue
      a = m[0]
      if params["base_dilation"][a] != 1:
        maps[k] = FULL
      else:
        maps[k] = _window(m, params["padding"][a][0], params["window_dimensions"][a], params["window_strides"][a],
                          params["window_dilation"][a])
    return [_Info(maps, x.depth)]
  if p == "reshape":
    return [_reshape(x, eqn.invars[0].aval.shape, outs[0].aval.shape)]
  if p == "dot_general":
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    lhs, rhs = ins
    nl, nr = len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape)
    lfree = [a for a in range(nl) if a not in lc and a not in lb]
    rfree = [a for a in range(nr) if a not in rc and a not in rb]
    lmap = {a: i for i, a in enumerate(lb)} | {a: len(lb) + i for i, a in enumerate(lfree)}
    rmap = {a: i for i, a in enumerate(rb)} | {a: len(lb) + len(lfree) + i for i, a in enumerate(rfree)}
    res = _union([_remap(lhs, lmap, tuple(lc)), _remap(rhs, rmap, tuple(rc))], out_ndim)
    layer = 1 if (lhs.maps and not rhs.maps) or (rhs.maps and not lhs.maps) else 0   # input x parameters
    return [_Info(res.maps, res.depth + layer)]
  if p == "conv_general_dilated":
    lhs, rhs = ins
    dn = params["dimension_numbers"]
    rhs_shape = eqn.invars[1].aval.shape
    maps = {}
    for k, m in lhs.maps.items():
      if m == FULL or m[0] not in dn.lhs_spec[2:] or any(d != 1 for d in params["lhs_dilation"]):
        maps[k] = FULL
        continue
      s = dn.lhs_spec[2:].index(m[0])
      w = _window(m, params["padding"][s][0], rhs_shape[dn.rhs_spec[2 + s]], params["window_strides"][s],
                  params["rhs_dilation"][s])
      maps[k] = (dn.out_spec[2 + s],) + w[1:]
    res = _union([_Info(maps, lhs.depth), _full([rhs])], out_ndim)
    return [_Info(res.maps, res.depth + (1 if lhs.maps and not rhs.maps else 0))]
  if p == "gather" and not ins[0].maps:     # an embedding lookup: output batch axes follow the index axes
    dn = params["dimension_numbers"]
    idx_axes = list(range(len(eqn.invars[1].aval.shape) - 1))
    batch_out = [a for a in range(out_ndim) if a not in dn.offset_dims]
    return [_remap(ins[1], dict(zip(idx_axes, batch_out)))]
  shapes = [getattr(v.aval, "shape", ()) for v in eqn.invars]
  if len(outs) == 1 and all(s == outs[0].aval.shape or not i.maps for s, i in zip(shapes, ins)):
    return [_union(ins, out_ndim)]      # elementwise (add, mul, max, select_n, convert_element_type, ...)
  _UNKNOWN.add(p)
  return [_full(ins)] * len(outs)


_UNKNOWN: set = set()    # primitives that met the conservative fallback (for debugging new models)


def _reshape(x: _Info, old: Sequence[int], new: Sequence[int]) -> _Info:
  """A mapped old axis of size n keeps its mapping on a new axis with the same size and the same number of elements
  inside it (unit axes may come and go). If it splits into new axes [n/w, w] it is a window view (our pooling): the
  outer axis takes (start, jump*w, rf + (w-1)*jump), as after reducing the window axis. Anything else (a flatten
  merging it with other axes) is FULL."""
  inner = lambda shape, a: int(np.prod(shape[a + 1:]))
  maps = {}
  for k, m in x.maps.items():
    if m == FULL:
      maps[k] = FULL
      continue
    a = m[0]
    n, below = old[a], inner(old, a)
    same = [b for b in range(len(new)) if new[b] == n and inner(new, b) == below]
    split = [b for b in range(len(new) - 1) if new[b] > 1 and inner(new, b) == below * n // new[b]
             and n % new[b] == 0 and inner(new, b) % below == 0 and inner(new, b) // below == n // new[b]]
    if same:
      maps[k] = (same[0],) + tuple(m[1:])
    elif split and n // new[split[0]] > 1:
      w = n // new[split[0]]                            # window size: the elements of axis a inside new axis b
      maps[k] = (split[0], m[1], m[2] * w, m[3] + (w - 1) * m[2])
    else:
      maps[k] = FULL
  return _Info(maps, x.depth)


# ----------------------------------------------------------------------------------------------------------------
# The table.
def _spatial_axes(input_shape: Sequence[int]) -> int:
  """Spatial axes of one example: [T] token ids -> 1; [H, W, C] -> 2; [T, C] -> 1 (the last axis is channels)."""
  return 1 if len(input_shape) == 1 else len(input_shape) - 1


def analyze(model: nn.Module, input_shape: Sequence[int], depth: int = 1, variables=None,
            input_dtype=jnp.float32) -> dict:
  """Per-layer shapes, parameters, FLOPs, jumps and receptive fields, and totals.

  Args:
    model: a linen module called as `model(x, train=False)`.
    input_shape: one example's shape, no batch axis: (28, 28, 1), or (T,) for token ids.
    depth: 1 lists the model's direct submodules; 2 also the layers inside blocks, ...
    variables: {"params": ..., ...} to count (default: the model's own init, traced abstractly).
  Returns:
    {"rows": [{"name", "output_shape", "params", "state", "flops", "jump", "rf", "layers"}], "total_params",
     "total_state", "flops" (conv/dense FLOPs per image, 2 per multiply-add), "layers" (the layer count), "rf",
     "jump" (of the last layer whose output still has spatial axes)}.
    jump and rf are tuples with one entry per spatial axis, or None where the output depends on the whole input
    ("all"); "layers" of a row is the count of conv/dense layers on the longest path up to that row's output.
  """
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), input_dtype)
  abstract = _abstract_variables(model, x)
  if variables is not None:
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), dict(variables))
  calls: list[dict] = []
  record = _call_recorder(depth, calls)

  def forward(v, x):
    with nn.intercept_methods(record):
      y = model.apply(v, x, train=False, rngs={"dropout": jax.random.key(1)})
    return [y] + [c["out"] for c in calls]

  with layers.xla_lowering():        # the rules read XLA primitives, not a oneDNN custom call
    closed, out_shapes = jax.make_jaxpr(forward, return_shape=True)(abstract, x)
  n_var = len(jax.tree.leaves(abstract))
  nd = _spatial_axes(input_shape)
  x_info = _Info({k: (1 + k, 0, 1, 1) for k in range(nd)}, 0)
  flops: dict = {}
  outs = _propagate(closed.jaxpr, [_NONE] * n_var + [x_info], flops)
  sizes = [len(jax.tree.leaves(o)) for o in out_shapes]
  per_out = [outs[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(len(sizes))]
  params, stats = abstract.get("params", {}), abstract.get("batch_stats", {})
  root = type(model).__name__
  rows, seen, last = [], set(), (None, None)
  for c, infos in zip(calls, per_out[1:]):
    if c["path"] in seen:      # a shared module called twice shows once
      continue
    seen.add(c["path"])
    jump, rf = _field(infos, nd)
    if rf is not None:
      last = (jump, rf)
    rows.append({"name": "/".join(c["path"]), "output_shape": _shape(c["out"]),
                 "params": count_params(_get(params, c["path"])), "state": count_params(_get(stats, c["path"])),
                 "flops": sum(f for s, f in flops.items() if _inside(s, root, c["path"])),
                 "jump": jump, "rf": rf, "layers": max([i.depth for i in infos] + [0])})
  return {"rows": rows, "total_params": count_params(params), "total_state": count_params(stats),
          "flops": float(sum(flops.values())), "layers": max([i.depth for i in per_out[0]] + [0]),
          "jump": last[0], "rf": last[1]}


def _inside(stack: str, root: str, path: tuple) -> bool:
  parts = stack.split("/")
  i = parts.index(root) + 1 if root in parts else 0
  return tuple(parts[i:i + len(path)]) == path


def _field(infos: Sequence[_Info], nd: int):
  """(jump, rf) per spatial axis of a layer's output: the widest over its output leaves; (None, None) when it no
  longer has spatial axes (every axis FULL)."""
  best = None
  for info in infos:
    ms = [info.maps.get(k, FULL) for k in range(nd)]
    if any(m == FULL for m in ms) or not info.maps:
      continue
    cand = (tuple(int(m[2]) for m in ms), tuple(int(m[3]) for m in ms))
    best = cand if best is None or cand[1] > best[1] else best
  return best if best else (None, None)


def receptive_fields(model: nn.Module, input_shape: Sequence[int], depth: int = 1,
                     input_dtype=jnp.float32) -> dict[str, tuple]:
  """{layer name: (jump, rf)} (tuples per spatial axis; None once the output depends on the whole input)."""
  return {r["name"]: (r["jump"], r["rf"]) for r in analyze(model, input_shape, depth, None, input_dtype)["rows"]}


def layer_count(model: nn.Module, input_shape: Sequence[int], input_dtype=jnp.float32) -> int:
  """Convolutions + dense layers on the longest input-to-output path (VGG-16: 16, ResNet-18: 18, convnet: 5)."""
  return analyze(model, input_shape, 1, None, input_dtype)["layers"]


def _fmt_field(t) -> str:
  if t is None:
    return "all"
  return str(t[0]) if len(set(t)) == 1 else "x".join(map(str, t))


def _human(f: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if f >= scale:
      return f"{f / scale:,.2f} {unit}"
  return f"{f:,.0f}"


def summary(model: nn.Module, input_shape: Sequence[int], depth: int = 1, variables=None, flops: bool = True,
            input_dtype=jnp.float32) -> str:
  """The table as text. `depth` > 1 also lists the layers inside blocks. `input_dtype=jnp.int32` for token ids.
  `flops=True` adds XLA's whole-program count (elementwise ops included) to the conv/dense count of the table."""
  a = analyze(model, input_shape, depth, variables, input_dtype)
  rows = a["rows"]
  w = max([len(r["name"]) for r in rows] + [12]) + 2
  s = max([len(r["output_shape"]) for r in rows] + [14]) + 2
  width = w + s + 12 + 12 + 7 + 7
  lines = [f"Model: {type(model).__name__}  (input {tuple(input_shape)})", "-" * width,
           f"{'Layer':<{w}}{'Output shape':<{s}}{'Params':>12}{'FLOPs':>12}{'Jump':>7}{'RF':>7}", "=" * width]
  for r in rows:
    lines.append(f"{r['name']:<{w}}{r['output_shape']:<{s}}{r['params']:>12,}{_human(r['flops']):>12}"
                 f"{_fmt_field(r['jump']) if r['rf'] else '-':>7}{_fmt_field(r['rf']):>7}")
  lines.append("=" * width)
  state = a["total_state"]
  lines.append(f"Total params: {a['total_params']:,}" +
               (f"   (+ {state:,} BatchNorm statistics, not trained)" if state else ""))
  lines.append(f"Layers (conv + dense on the longest path): {a['layers']}")
  if a["rf"]:
    lines.append(f"Receptive field of the last spatial layer: {_fmt_field(a['rf'])} (jump {_fmt_field(a['jump'])})")
  lines.append(f"Conv + dense FLOPs per example (2 per multiply-add): {_human(a['flops'])}")
  if flops:
    lines.append(f"Forward FLOPs per example (XLA, all ops): "
                 f"{flops_per_example(model, input_shape, input_dtype) / 1e6:,.2f} M")
  return "\n".join(lines)
