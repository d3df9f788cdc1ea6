"""A layer table like Keras' `model.summary()`: layer, output shape, parameters, and totals (plus forward FLOPs).

    print(summary(ConvNet(), (28, 28, 1)))

Rows come from the outputs each submodule returns (recorded with flax's intercept_methods), traced abstractly with
jax.eval_shape, so even a 138M-parameter VGG costs no memory or compute to summarise.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _shape(out) -> str:
  leaves = jax.tree.leaves(out)
  return ", ".join(str(tuple(x.shape[1:])) for x in leaves) if leaves else "-"


def layer_rows(model: nn.Module, input_shape: Sequence[int], depth: int = 1, variables=None,
               input_dtype=jnp.float32) -> list[dict]:
  """[{'name', 'output_shape' (no batch axis), 'params', 'state'}] per submodule up to `depth` deep, in call order."""
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), input_dtype)
  calls: list[dict] = []

  def record(next_fun, args, kwargs, context):
    path = tuple(context.module.path)
    if context.method_name != "__call__" or not 0 < len(path) <= depth:
      return next_fun(*args, **kwargs)
    row = {"path": path}
    calls.append(row)          # appended at call start, so parents come before their children
    out = next_fun(*args, **kwargs)
    row.setdefault("output_shape", _shape(out))
    return out

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
    rows.append({"name": "/".join(c["path"]), "output_shape": c["output_shape"],
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
  cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def summary(model: nn.Module, input_shape: Sequence[int], depth: int = 1, variables=None, flops: bool = True,
            input_dtype=jnp.float32) -> str:
  """The table as text. `depth` > 1 also lists the layers inside blocks. `input_dtype=jnp.int32` for token ids."""
  rows = layer_rows(model, input_shape, depth, variables, input_dtype)
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), input_dtype)
  all_vars = variables or _abstract_variables(model, x)
  total = count_params(all_vars.get("params", {}))
  state = count_params(all_vars.get("batch_stats", {}))
  w = max([len(r["name"]) for r in rows] + [12]) + 2
  s = max([len(r["output_shape"]) for r in rows] + [14]) + 2
  lines = [f"Model: {type(model).__name__}  (input {tuple(input_shape)})", "-" * (w + s + 12),
           f"{'Layer':<{w}}{'Output shape':<{s}}{'Params':>12}", "=" * (w + s + 12)]
  for r in rows:
    lines.append(f"{r['name']:<{w}}{r['output_shape']:<{s}}{r['params']:>12,}")
  lines.append("=" * (w + s + 12))
  lines.append(f"Total params: {total:,}" + (f"   (+ {state:,} BatchNorm statistics, not trained)" if state else ""))
  if flops:
    lines.append(f"Forward FLOPs per example: {flops_per_example(model, input_shape, input_dtype) / 1e6:,.2f} M")
  return "\n".join(lines)
