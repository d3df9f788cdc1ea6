"""`python -m jcnn.inspect <capability> [flags]`: draws what is inside a model as PNG and JSON files.

    python -m jcnn.inspect summary --model=convnet
    python -m jcnn.inspect kernels --out=docs/inspect
    python -m jcnn.inspect filters --train_steps=938 --out=docs/inspect       # trains the Keras convnet ~1 epoch
    python -m jcnn.inspect feature_maps --layer=conv1 --index=0 --out=docs/inspect
    python -m jcnn.inspect actmax --layer=conv3 --channels=0-15 --out=docs/inspect
    python -m jcnn.inspect saliency --index=0-7 --out=docs/inspect
    python -m jcnn.inspect retrieval --k=10 --out=docs/inspect
    python -m jcnn.inspect gradient_flow --workdir=runs/gradient_flow
Commands that need a trained model train the Keras convnet briefly (`--train_steps`, RMSprop 1e-3, batch 64; cached
in `--params_cache`); `--workdir=RUN` takes a trained run's parameters from its newest checkpoint (a sweep's: with
`--variant=K`, a line of its variants.jsonl).

A trained run comes from jcnn.train.checkpoint, the quick convnet from jcnn.train's step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jcnn import data, models
from jcnn.errors import UserError
from jcnn.inspect import figures, gradflow, retrieval, summary
from jcnn.inspect.visualize import activation_maximisation, feature_maps, first_conv_kernel, saliency
from jcnn.nn import kernels as kernels_lib


# ----------------------------------------------------------------------------------------------------------------
# Where the parameters come from.
def load_trained(workdir: str, variant: int | None = None):
  """(model, variables, dataset) of a trained run in `workdir` (a sweep's: pass `variant`, a line of its
  variants.jsonl), from its newest checkpoint; the dataset is the run's own config.data."""
  from jcnn.train import checkpoint  # pylint: disable=g-import-not-at-top  (orbax: only for a trained run)
  trained = checkpoint.load_trained(workdir, variant)
  config = trained["config"]
  ds = data.load(config.data, seed=config.train.seed, task=config.train.get("task", "classify"))
  return trained["model"], trained["variables"], ds


def quick_convnet(train_steps: int = 938, seed: int = 0, params_cache: str = "", batch_size: int = 64):
  """Trains the Keras convnet on Fashion-MNIST for train_steps steps (RMSprop 1e-3, batch 64; 938 steps = 1 epoch)
  and returns (model, variables, dataset). With params_cache, reuses parameters saved there by an earlier call with
  the same steps and seed."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  from jcnn import train  # pylint: disable=g-import-not-at-top
  ds = data.load({"name": "fashion_mnist"})
  model = models.get({"name": "convnet"})
  tx = train.make_optimizer({"name": "rmsprop", "learning_rate": 1e-3})
  state = train.init_state(model, tx, jax.random.key(seed), ds.train_x[:1])
  tag = f"{train_steps}-{seed}"
  if params_cache and os.path.exists(params_cache) and os.path.exists(params_cache + ".tag") and \
     open(params_cache + ".tag").read() == tag:
    with open(params_cache, "rb") as f:
      return model, {"params": serialization.from_bytes(state.params, f.read())}, ds
  step = jax.jit(train.make_train_step(model, tx), donate_argnums=0)
  done, epoch = 0, 0
  while done < train_steps:
    for idx in data.epoch_batches(jax.random.key(seed * 1000 + epoch + 1), len(ds.train_y), batch_size):
      if done == train_steps:
        break
      state, _ = step(state, ds.train_x[idx], ds.train_y[idx], jax.random.key(2))
      done += 1
    epoch += 1
  if params_cache:
    os.makedirs(os.path.dirname(os.path.abspath(params_cache)), exist_ok=True)
    with open(params_cache, "wb") as f:
      f.write(serialization.to_bytes(state.params))
    with open(params_cache + ".tag", "w") as f:
      f.write(tag)
  return model, {"params": state.params}, ds


# ----------------------------------------------------------------------------------------------------------------
# Command line: python -m jcnn.inspect <capability> [flags]. Bad input: one line "error: ..." on stderr, exit 2.
class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise ValueError(message)


def _ints(text: str) -> list[int]:
  """'0-3,7' -> [0, 1, 2, 3, 7]."""
  out = []
  for part in text.split(","):
    lo, _, hi = part.partition("-")
    out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
  return out


def _model(args):
  if args.workdir:
    return load_trained(args.workdir, args.variant)
  return quick_convnet(args.train_steps, args.seed, args.params_cache)


def _load_image(path: str, shape) -> np.ndarray:
  """A PNG/JPEG as [H, W, C] in [0, 1], converted to the model's channels and resized to its input (Pillow)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.open(path).convert("L" if shape[-1] == 1 else "RGB").resize((shape[1], shape[0]))
  a = np.asarray(img, np.float32) / 255.0
  return a[..., None] if a.ndim == 2 else a


def cmd_kernels(args):
  ds = data.load({"name": "fashion_mnist", "train_limit": 1})
  x = ds.test_x[np.array(_ints(args.index))]                               # [B, 28, 28, 1]
  y = kernels_lib.FixedConv(kernels_lib.NAMES).apply({}, x)                 # [B, 28, 28, 10]
  ims = np.concatenate([np.concatenate([x[i:i + 1, ..., 0], np.moveaxis(y[i], -1, 0)]) for i in range(len(x))])
  path = figures.image_grid(ims, os.path.join(args.out, "kernels.png"), ("input",) + kernels_lib.NAMES * 1 if len(x) == 1
                        else None, cols=len(kernels_lib.NAMES) + 1, symmetric=False,
                        suptitle="Fixed 3x3 kernels on a Fashion-MNIST test image (each response scaled to its range)")
  return {"png": path}


def cmd_filters(args):
  model, variables, ds = _model(args)
  name, k = first_conv_kernel(model, variables, ds.test_x[:1])              # [3, 3, C_in, F]
  ims = np.moveaxis(np.asarray(k[:, :, 0, :]), -1, 0)                        # [F, 3, 3] (first input channel)
  path = figures.image_grid(ims, os.path.join(args.out, "filters.png"), [f"{i}" for i in range(len(ims))], cols=8,
                        symmetric=True, size=0.9, suptitle=f"{name} kernels (red +, blue -)")
  np.save(os.path.join(args.out, "filters.npy"), np.asarray(k))
  return {"png": path, "layer": name, "shape": list(k.shape)}


def _inputs(args, ds, shape):
  if args.image:
    return jnp.asarray(_load_image(args.image, shape))[None], os.path.basename(args.image)
  i = _ints(args.index)[0]
  return ds.test_x[i:i + 1], f"test image {i}"


def cmd_feature_maps(args):
  model, variables, ds = _model(args)
  x, what = _inputs(args, ds, ds.image_shape)
  fm = np.asarray(feature_maps(model, variables, x, args.layer))[0]        # [h, w, F]
  if fm.ndim != 3:
    raise ValueError(f"layer {args.layer!r} has output shape {fm.shape}: not a feature map")
  ims = np.concatenate([np.asarray(jax.image.resize(x[0, ..., 0], fm.shape[:2], "linear"))[None],
                        np.moveaxis(fm, -1, 0)[:args.max_maps]])
  path = figures.image_grid(ims, os.path.join(args.out, f"feature_maps_{args.layer}.png"),
                        ["input"] + [str(i) for i in range(len(ims) - 1)], cols=11, size=0.9,
                        suptitle=f"{args.layer} feature maps, {what}")
  np.savez_compressed(os.path.join(args.out, f"feature_maps_{args.layer}.npz"), maps=fm, input=np.asarray(x[0]))
  return {"png": path, "shape": list(fm.shape)}


def cmd_actmax(args):
  model, variables, ds = _model(args)
  chans = _ints(args.channels)
  t = time.time()
  ims, before, after = activation_maximisation(model, variables, args.layer, chans, ds.image_shape,
                                               jax.random.key(args.seed), args.steps)
  after.block_until_ready()
  path = figures.image_grid(np.asarray(ims[..., 0]), os.path.join(args.out, f"actmax_{args.layer}.png"),
                        [f"ch {c}" for c in chans], cols=8, size=1.0,
                        suptitle=f"Inputs maximising {args.layer} channels ({args.steps} ascent steps)")
  rec = {"png": path, "layer": args.layer, "channels": chans, "objective_before": np.asarray(before).tolist(),
         "objective_after": np.asarray(after).tolist(), "seconds": round(time.time() - t, 2)}
  with open(os.path.join(args.out, f"actmax_{args.layer}.json"), "w") as f:
    json.dump(rec, f, indent=1)
  return rec


def cmd_saliency(args):
  model, variables, ds = _model(args)
  idx = np.array(_ints(args.index))
  sal, preds = saliency(model, variables, ds.test_x[idx])
  ims = np.concatenate([np.asarray(ds.test_x[idx, ..., 0]), np.asarray(sal)])
  titles = [f"label {int(ds.test_y[i])}" for i in idx] + [f"pred {int(p)}" for p in preds]
  path = figures.image_grid(ims, os.path.join(args.out, "saliency.png"), titles, cols=len(idx), size=1.1,
                        cmap="inferno", suptitle="Test images and |d logit(pred) / d input|")
  return {"png": path, "predictions": np.asarray(preds).tolist()}


def cmd_retrieval(args):
  model, variables, ds = _model(args)
  t0 = time.time()
  index = retrieval.embed(model, variables, ds.train_x).block_until_ready()   # [60000, D]
  queries = retrieval.embed(model, variables, ds.test_x).block_until_ready()  # [10000, D]
  t1 = time.time()
  sims, nbrs = retrieval.top_k(queries, index, args.k)
  nbrs.block_until_ready()
  t2 = time.time()
  metrics = retrieval.precision_recall_at_k(nbrs, ds.test_y, ds.train_y, args.k)
  rec = dict(metrics, embed_seconds=round(t1 - t0, 2), search_seconds=round(t2 - t1, 2), index=int(index.shape[0]),
             dim=int(index.shape[1]), device=str(jax.devices()[0].device_kind), cpus=os.cpu_count())
  q = _ints(args.index)
  ims, titles = [], []
  for i in q:
    ims.append(np.asarray(ds.test_x[i, ..., 0]))
    titles.append(f"query ({int(ds.test_y[i])})")
    for j, s in zip(np.asarray(nbrs[i, :args.show]), np.asarray(sims[i, :args.show])):
      ims.append(np.asarray(ds.train_x[j, ..., 0]))
      titles.append(f"{int(ds.train_y[j])} {s:.2f}")
  rec["png"] = figures.image_grid(ims, os.path.join(args.out, "retrieval.png"), titles, cols=args.show + 1, size=1.0,
                              suptitle=f"Test queries and their nearest training images (label, cosine); "
                                       f"precision@{args.k} = {metrics['precision']:.3f}")
  with open(os.path.join(args.out, "retrieval.json"), "w") as f:
    json.dump(rec, f, indent=1)
  return rec


def cmd_summary(args):
  shape = tuple(_ints(args.input_shape))
  print(summary.summary(models.get({"name": args.model}), shape, depth=args.depth, flops=False))
  return None


def cmd_gradient_flow(args):
  config = gradflow.default_config()
  if args.steps is not None:
    config.steps = args.steps
  return gradflow.study(config, args.workdir)


COMMANDS = {"summary": cmd_summary, "kernels": cmd_kernels, "filters": cmd_filters,
            "feature_maps": cmd_feature_maps, "actmax": cmd_actmax, "saliency": cmd_saliency,
            "retrieval": cmd_retrieval, "gradient_flow": cmd_gradient_flow}


def parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m jcnn.inspect", description="Draws what is inside a model as PNG and JSON files.")
  p.add_argument("capability", choices=sorted(COMMANDS))
  p.add_argument("--out", default="inspect_out", help="folder for PNG / JSON / npz files")
  p.add_argument("--workdir", default="", help="a trained run (load_trained); gradient_flow: its output folder")
  p.add_argument("--variant", type=int, default=None, help="with a sweep's --workdir: the variant (variants.jsonl line)")
  p.add_argument("--train_steps", type=int, default=938, help="without --workdir: convnet steps (938 = 1 epoch)")
  p.add_argument("--params_cache", default="", help="file to keep the quickly trained parameters in between calls")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--layer", default="conv1", help="a submodule name, e.g. conv1, act2, conv3")
  p.add_argument("--index", default="0", help="test image indices, e.g. 0 or 0-7")
  p.add_argument("--image", default="", help="feature_maps: a PNG/JPEG file instead of a test image")
  p.add_argument("--channels", default="0-15", help="actmax: channels, e.g. 0-15")
  p.add_argument("--steps", type=int, default=None, help="actmax / gradient_flow: optimisation steps")
  p.add_argument("--max_maps", type=int, default=32)
  p.add_argument("--k", type=int, default=10, help="retrieval: neighbours for precision@k / recall@k")
  p.add_argument("--show", type=int, default=8, help="retrieval: neighbours drawn per query")
  p.add_argument("--model", default="convnet", help="summary: a zoo name")
  p.add_argument("--input_shape", default="28,28,1", help="summary: one example's shape")
  p.add_argument("--depth", type=int, default=1, help="summary: 2 lists the layers inside blocks")
  return p


def main(argv=None) -> int:
  try:
    args = parser().parse_args(argv)
    if args.capability == "actmax" and args.steps is None:
      args.steps = 200
    if args.capability == "gradient_flow" and not args.workdir:
      raise ValueError("gradient_flow needs --workdir=DIR for its JSON and PNG")
    if args.image and not os.path.exists(args.image):
      raise ValueError(f"--image={args.image}: no such file")
    if args.capability not in ("summary", "gradient_flow"):
      os.makedirs(args.out, exist_ok=True)
    rec = COMMANDS[args.capability](args)
  except (ValueError, NotImplementedError, UserError, OSError, KeyError) as e:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2
  if rec is not None:
    if args.workdir and args.capability != "gradient_flow":   # a trained run: its pictures also in its TensorBoard
      from jcnn.train import writers  # pylint: disable=g-import-not-at-top
      rec["tensorboard"] = writers.tb_images(os.path.join(args.workdir, "tb", "inspect"), _pngs(rec))
    print(json.dumps(rec, indent=1))
  return 0


def _pngs(rec) -> list[str]:
  """Every PNG path in a command's record."""
  if isinstance(rec, dict):
    return [p for v in rec.values() for p in _pngs(v)]
  if isinstance(rec, (list, tuple)):
    return [p for v in rec for p in _pngs(v)]
  return [rec] if isinstance(rec, str) and rec.endswith(".png") else []
