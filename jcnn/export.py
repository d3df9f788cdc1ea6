"""A trained model outside its run: a pure `predict` with the run's own preprocessing, image files, and ONNX export.

    p = export.load("runs/mine")                       # a run's workdir (a sweep's: variant=k or {"dropout_rate": 0.25})
    probs = p.predict(images)                          # [B, classes]; images [B, H, W, C] uint8 0..255 or floats 0..1
    export.to_onnx(p, "runs/mine/model.onnx")          # needs the [export] extra (jax2onnx)

`predict` applies what training applied, with the statistics saved in the run's checkpoint (the training split's
mean/std or min/max; never recomputed from the inputs): uint8 pixels are divided by 255 (floats are taken as already in
[0, 1]), then transformed per channel as config.data.preprocess says (jcnn.data.preprocess.apply), then zero-padded by
config.data.pad. Images may come at the dataset's size (before padding) or at the model's. Token models (TextCNN) take
integer ids as they are.

The ONNX file takes `images`: float32 [batch, H, W, C] in [0, 1] at the dataset's size (the batch dimension is
dynamic; divide uint8 pixels by 255 first) and returns `probabilities` [batch, classes]; the preprocessing is inside the
graph, and BatchNorm is in its inference form (running statistics folded in as constants).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.data.preprocess import apply as apply_preprocessing
from jcnn.data.sources import CLASS_NAMES
from jcnn.errors import UserError
from jcnn.nn import layers
from jcnn.train import tasks



class ExportError(UserError):
  pass


class Predictor(NamedTuple):
  predict: Callable[[Any], jax.Array]   # jitted: images -> probabilities [B, classes] (regress: values [B, T])
  prepare: Callable[[Any], jax.Array]   # images -> the model's input (the run's preprocessing); pure, traceable
  model: Any
  variables: dict
  input_shape: tuple                    # one example as the model takes it (after padding)
  raw_shape: tuple                      # one example as the dataset holds it (before padding)
  input_dtype: str                      # 'float32', or an integer type for token ids
  class_names: tuple
  image_size: tuple = ()                # a folder run's data.image_size: image files are resized as in training
  task: str = "classify"                # what the outputs mean (jcnn.train.tasks): classify | binary | regress
  features: tuple = ()                  # vector data: the feature (column) names, for --inputs=FILE.csv
  target: dict | None = None            # regress: the target statistics that turn outputs into the target's units


def predictor(model, variables, *, preprocess: dict | None = None, pad: int = 0, input_shape: Sequence[int],
              input_dtype: str = "float32", class_names: Sequence[str] = (), task: str = "classify",
              target: dict | None = None, features: Sequence[str] = ()) -> Predictor:
  """A Predictor for live parameters. `preprocess` is a run's statistics record (data.preprocess's `stats`);
  `task` and `target` (the regression targets' statistics) say what the outputs mean (jcnn.train.tasks)."""
  stats = preprocess or {"method": "scale", "scale": 255.0}
  input_shape = tuple(input_shape)
  tokens = np.issubdtype(np.dtype(input_dtype), np.integer)
  raw_shape = input_shape if tokens or not pad else (input_shape[0] - 2 * pad, input_shape[1] - 2 * pad) + \
      input_shape[2:]
  unit = {**stats, "scale": 1.0}   # prepare divides uint8 by 255 itself (floats are taken as already in [0, 1])

  def prepare(images):
    if tokens:
      return images
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    if pad and x.shape[1:] == raw_shape:   # zeros padded before the statistics apply, as training pads raw images
      x = jnp.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    return apply_preprocessing(x, unit, xp=jnp)         # the training split's statistics, per channel

  def predict(images):
    return tasks.predictions(task, model.apply(variables, prepare(images), train=False), target)

  k = 2 if task == "binary" else _num_classes(model, variables)
  names = tuple(class_names) or (() if task == "regress" else tuple(str(i) for i in range(k)))
  return Predictor(jax.jit(predict), prepare, model, variables, input_shape, raw_shape, input_dtype, names,
                   task=task, features=tuple(features), target=target)


def output_name(p: Predictor) -> str:
  return "values" if p.task == "regress" else "probabilities"


def input_name(p: Predictor) -> str:
  return "features" if vectors(p) else "images"


def vectors(p: Predictor) -> bool:
  """The model takes feature vectors ([1, 1, D] examples: CSV tables, toy problems), not images."""
  return len(p.raw_shape) == 3 and tuple(p.raw_shape[:2]) == (1, 1)


def _num_classes(model, variables) -> int:
  head = jax.tree.leaves(variables["params"])[-1]   # the last parameter: the head's bias or kernel
  return int(getattr(model, "num_classes", head.shape[-1]))


def _variant_index(workdir: str, variant) -> int | None:
  """A sweep variant given by index or by hyperparameters ({'dropout_rate': 0.25, 'seed': 1}) -> its index."""
  if variant is None or isinstance(variant, int):
    return variant
  path = os.path.join(workdir, "variants.jsonl")
  rows = [json.loads(line)["hparams"] for line in open(path)] if os.path.exists(path) else []
  hits = [i for i, h in enumerate(rows) if all(h.get(k) == v for k, v in variant.items())]
  if len(hits) != 1:
    raise ExportError(f"{len(hits)} variants of {workdir} match {variant} (variants.jsonl lists them); give more "
                      f"hyperparameters or the variant's index")
  return hits[0]


def load(workdir: str, variant: int | dict | None = None, checkpoint: str = "latest") -> Predictor:
  """The newest checkpoint of the run in `workdir` as a Predictor (a sweep: `variant`, an index into variants.jsonl
  or a dict of its hyperparameters; a diverged variant is refused); checkpoint='best': the run's best epoch
  (config.checkpoint.best)."""
  from jcnn.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  trained = checkpoint_lib.load_trained(workdir, _variant_index(workdir, variant), checkpoint)
  config, data = trained["config"], trained["meta"]["data"]
  p = predictor(trained["model"], trained["variables"], preprocess=data["preprocess"], pad=config.data.pad,
                input_shape=data["input_shape"], input_dtype=data["input_dtype"],
                class_names=data.get("classes") or CLASS_NAMES.get(config.data.name, ()),
                task=data.get("task", "classify"), target=data.get("target"), features=data.get("features", ()))
  return p._replace(image_size=tuple(getattr(config.data, "image_size", ())))


# ----------------------------------------------------------------------------------------------------------------
# Image files.
def read_image(path: str, shape: Sequence[int]) -> np.ndarray:
  """One PNG/JPEG/... as uint8 [H, W, C] for a model whose examples are `shape` (H, W, C). Conversions are made only
  where they lose nothing the model could use and are unambiguous: colour -> grey (ITU-R 601 luma, Pillow's 'L') for
  a 1-channel model, grey -> 3 equal channels for a 3-channel one, an alpha channel that is fully opaque dropped.
  A different size is refused (resizing would change what the model sees)."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  h, w, c = shape
  try:
    img = Image.open(path)
    img.load()
  except FileNotFoundError:
    raise ExportError(f"{path}: no such file") from None
  except (UnidentifiedImageError, OSError) as e:
    raise ExportError(f"{path} is not an image Pillow can read ({type(e).__name__}); pass PNG or JPEG files") from None
  if img.size != (w, h):
    raise ExportError(f"{path} is {img.size[0]}x{img.size[1]} pixels; the model takes {w}x{h} ({c} channel"
                      f"{'s' if c > 1 else ''}): resize or crop it first")
  if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
    img = img.convert("RGBA" if img.mode != "LA" else "LA")
    if np.asarray(img)[..., -1].min() < 255:
      raise ExportError(f"{path} has transparent pixels; flatten it onto a background first")
    img = img.convert("RGB" if img.mode == "RGBA" else "L")
  if img.mode not in ("L", "RGB"):
    img = img.convert("RGB")
  if c == 1 and img.mode == "RGB":
    img = img.convert("L")
  elif c == 3 and img.mode == "L":
    img = img.convert("RGB")
  elif c not in (1, 3):
    raise ExportError(f"the model takes {c}-channel images; only 1 (grey) and 3 (RGB) channels can be read from files")
  x = np.asarray(img, np.uint8)
  return x[..., None] if x.ndim == 2 else x


def image_files(entries: Sequence[str]) -> list[str]:
  """Files as given, and every image file under each folder given (sorted; PNG, JPEG, BMP, WebP)."""
  from jcnn.data.folder import EXTENSIONS  # pylint: disable=g-import-not-at-top
  out = []
  for e in entries:
    if not os.path.isdir(e):
      out.append(e)
      continue
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(e) for f in files
                   if f.lower().endswith(EXTENSIONS) and not f.startswith("."))
    if not found:
      raise ExportError(f"{e} holds no image files ({', '.join(EXTENSIONS)}); pass a folder of images or files")
    out += found
  return out


def read_images(p: Predictor, paths: Sequence[str]) -> np.ndarray:
  """Image files -> uint8 [B, H, W, C] as the model takes them: resized and converted as in training for a folder
  run with data.image_size (jcnn.data.folder's decoding), else read strictly by `read_image`."""
  if p.image_size:
    from jcnn.data import folder  # pylint: disable=g-import-not-at-top
    from jcnn.errors import DataError  # pylint: disable=g-import-not-at-top
    try:
      return folder.FolderImages(paths, p.image_size, p.raw_shape[-1], check=False)[np.arange(len(paths))]
    except DataError as e:
      raise ExportError(str(e)) from None
  return np.stack([read_image(path, p.raw_shape) for path in paths])


def predict_files(p: Predictor, paths: Sequence[str], top_k: int = 3) -> list[dict]:
  """Top-k classes with names and probabilities per image file (a folder: every image under it)."""
  if vectors(p):
    raise ExportError("this model takes feature vectors, not images: pass --inputs=FILE.csv (one row of features "
                      "per example)")
  if p.task == "regress":
    raise ExportError("this model regresses: --images prints class probabilities; use export.load(...).predict")
  if np.issubdtype(np.dtype(p.input_dtype), np.integer):
    raise ExportError("this model takes token ids, not images; use export.load(...).predict on token arrays")
  paths = image_files(paths)
  probs = np.concatenate([np.asarray(p.predict(read_images(p, paths[i:i + 256])))   # [B, classes], 256 files at
                          for i in range(0, len(paths), 256)])                      # a time: a folder of any size
  k = max(1, min(top_k, probs.shape[-1]))
  out = []
  for path, row in zip(paths, probs):
    top = np.argsort(-row, kind="stable")[:k]
    out.append({"image": path, "top": [{"class": int(i), "name": p.class_names[i], "probability": float(row[i])}
                                       for i in top]})
  return out


# ----------------------------------------------------------------------------------------------------------------
# Feature vectors (CSV tables and toy problems).
def read_inputs(p: Predictor, path: str) -> np.ndarray:
  """A CSV of feature vectors -> float32 [N, 1, 1, D] for the model: columns named as in training (p.features; any
  others, such as the target, are ignored), in any order; a file without those names is read as D numeric columns."""
  from jcnn.data import tables  # pylint: disable=g-import-not-at-top
  from jcnn.errors import DataError  # pylint: disable=g-import-not-at-top
  d = p.raw_shape[-1]
  if not vectors(p):
    raise ExportError(f"this model takes images {p.raw_shape}, not feature vectors: pass --images=FILES")
  try:
    x, names = tables.read_features(path)
  except DataError as e:
    raise ExportError(str(e)) from None
  if p.features and set(p.features) <= set(names):
    x = x[:, [names.index(f) for f in p.features]]
  elif x.shape[1] != d:
    want = ", ".join(p.features) if p.features else f"{d} numeric columns"
    raise ExportError(f"{path} has columns {', '.join(names)}; the model takes {want}: give a header with those names")
  return x[:, None, None, :]


def predict_inputs(p: Predictor, path: str, top_k: int = 3) -> list[dict]:
  """Per row of a CSV of features: the values in the target's units (regress) or the top-k classes."""
  x = read_inputs(p, path)
  out = np.concatenate([np.asarray(p.predict(x[i:i + 4096])) for i in range(0, len(x), 4096)])   # [N, T or K]
  if p.task == "regress":
    return [{"row": i + 1, "values": [float(v) for v in row]} for i, row in enumerate(out)]
  k = max(1, min(top_k, out.shape[-1]))
  return [{"row": i + 1, "top": [{"class": int(c), "name": p.class_names[c], "probability": float(row[c])}
                                 for c in np.argsort(-row, kind="stable")[:k]]} for i, row in enumerate(out)]


# ----------------------------------------------------------------------------------------------------------------
# ONNX.
def to_onnx(p: Predictor, path: str) -> str:
  """Writes `path`: input `images` float32 [batch, H, W, C] in [0, 1] (token ids int32 [batch, T]; feature vectors
  [batch, 1, 1, D] as in the data), output `probabilities` [batch, classes] (regress: `values` [batch, T] in the
  target's units, the inverse target transform inside the graph); dynamic batch. Needs the [export] extra."""
  try:
    import logging  # pylint: disable=g-import-not-at-top
    from jax2onnx import to_onnx as convert  # pylint: disable=g-import-not-at-top
    for name in ("onnx_ir", "jax2onnx"):      # their per-tensor serialisation notes are not the user's business
      logging.getLogger(name).setLevel(logging.ERROR)
  except ImportError:
    raise ExportError("ONNX export needs the [export] extra: pip install -e '.[export]' (jax2onnx, onnxruntime)") \
      from None
  tokens = np.issubdtype(np.dtype(p.input_dtype), np.integer)
  spec = jax.ShapeDtypeStruct(("B",) + tuple(p.raw_shape), jnp.int32 if tokens else jnp.float32)
  fn = lambda images: tasks.predictions(p.task, p.model.apply(p.variables, p.prepare(images), train=False), p.target)
  try:
    with layers.xla_lowering():               # a oneDNN custom call cannot be exported: trace XLA's convolutions
      proto = convert(fn, inputs=[spec], model_name="jcnn", input_names=[input_name(p)],
                      output_names=[output_name(p)])
  except Exception as e:  # pylint: disable=broad-except
    raise ExportError(f"jax2onnx could not convert {type(p.model).__name__} ({str(e).strip().splitlines()[0][:200]})"
                      f"; see docs/inference.md's export table") from None
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(proto.SerializeToString())
  return path

