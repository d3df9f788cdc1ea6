"""Image-classification datasets that tensorflow-datasets has already PREPARED on disk in the ArrayRecord format,
read at random access through `tfds.data_source` (never `as_dataset`, never the whole split in memory).

`open_prepared(name, data_dir)` returns ({'train': (images, labels), 'test': ..., ['val': ...]}, num_classes,
class_names): `labels` an int32 array [N] read once, `images` a `TfdsImages`, a read-only array-like [N, H, W, C]
uint8 whose `images[idx]` decodes only the records at `idx`. It pickles as (name, split, data_dir) and reopens the data
source lazily, so grain can send it to its worker processes.

Prepare a dataset once, where there is a network (or copy the prepared folder to this machine):
  tfds build mnist --file_format=array_record [--data_dir=DIR]
or in Python:
  tfds.builder("mnist", data_dir=DIR).download_and_prepare(file_format="array_record")
Reading needs only tensorflow_datasets, array_record and PIL (or OpenCV) to decode the images: it does not import
TensorFlow, preparing does.
"""
from __future__ import annotations

import os

import numpy as np

from jcnn.errors import DataError

SPLITS = {"train": "train", "test": "test", "val": "validation"}  # ours -> TFDS's split names
LABEL_CHUNK = 4096  # records read per call while collecting the labels: bounds the list of decoded dicts in memory


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (imported here: keep jcnn.data light)
  except ImportError:
    raise DataError("tensorflow_datasets is not installed: `pip install -e '.[tfds]'`") from None
  return tfds


def _where(data_dir: str) -> str:
  return data_dir or os.environ.get("TFDS_DATA_DIR", "") or "~/tensorflow_datasets"


def _prepare_hint(name: str, data_dir: str) -> str:
  flag = f" --data_dir={data_dir}" if data_dir else ""
  return f"`tfds build {name.split(':')[0]} --file_format=array_record{flag}`"


def _data_source(name: str, split: str, data_dir: str, **kw):
  """The ArrayRecord data source of one split. download=False: reading must never start a download or a build."""
  tfds = _tfds()
  # Asking for array_record explicitly: a folder prepared in several formats must not be read through another one.
  return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                          builder_kwargs={"file_format": "array_record"}, **kw)


class TfdsImages:
  """One split's images as a read-only array [N, H, W, C] uint8; indexing decodes only the records asked for."""
  decodes = True  # indexing decodes (PNG/JPEG) records: callers should index in batches, not one image at a time

  def __init__(self, name: str, split: str, data_dir: str, shape: tuple, source=None):
    self.name, self.split, self.data_dir = name, split, data_dir
    self.shape = tuple(int(d) for d in shape)  # (N, H, W, C)
    self.dtype = np.dtype(np.uint8)
    self._source = source

  def __getstate__(self):
    # The open data source holds file readers: drop it, the unpickled copy (a grain worker) reopens its own.
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  @property
  def source(self):
    if self._source is None:
      self._source = _data_source(self.name, self.split, self.data_dir)
    return self._source

  def __len__(self) -> int:
    return self.shape[0]

  def __repr__(self) -> str:
    return f"TfdsImages({self.name!r}, split={self.split!r}, shape={self.shape})"

  def __getitem__(self, idx) -> np.ndarray:
    n = self.shape[0]
    if isinstance(idx, slice):
      keys = list(range(n))[idx]
    else:
      arr = np.asarray(idx)
      if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise TypeError(f"TfdsImages takes a slice or a 1-D int array of indices, not {idx!r}")
      keys = [int(i) + n if i < 0 else int(i) for i in arr]  # numpy's negative indices
      bad = [k for k in keys if not 0 <= k < n]
      if bad:
        raise IndexError(f"index {bad[0]} out of range for {n} images of {self.name}/{self.split}")
    out = np.empty((len(keys),) + self.shape[1:], np.uint8)  # [len(idx), H, W, C]
    if not keys:
      return out
    for k, example in enumerate(self.source.__getitems__(keys)):
      image = np.asarray(example["image"])
      out[k] = image[..., None] if image.ndim == 2 else image  # grey [H, W] -> [H, W, 1]
    return out


def _read_labels(name: str, split: str, data_dir: str) -> np.ndarray:
  """The split's labels [N] int32. An ArrayRecord record is one serialized tf.Example holding image and label
  together, so there is no reading the labels alone: every record is read and parsed once (about 40 us each: 2-3 s
  for 60k images, a minute for ImageNet's 1.3M), but SkipDecoding leaves the image bytes undecoded."""
  tfds = _tfds()
  source = _data_source(name, split, data_dir, decoders={"image": tfds.decode.SkipDecoding()})
  labels = np.empty(len(source), np.int32)
  for start in range(0, len(source), LABEL_CHUNK):
    keys = list(range(start, min(start + LABEL_CHUNK, len(source))))
    labels[start:start + len(keys)] = [int(example["label"]) for example in source.__getitems__(keys)]
  return labels


def open_prepared(name: str, data_dir: str = ""):
  """({'train': (images, labels), 'test': ..., ['val': ...]}, num_classes, class_names) of a dataset prepared in the
  ArrayRecord format: images a TfdsImages [N, H, W, C] uint8, labels int32 [N]."""
  tfds = _tfds()
  where, hint = _where(data_dir), _prepare_hint(name, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:  # neither a registered name nor prepared files in data_dir
    raise DataError(f"dataset {name!r} is not prepared in {where}: prepare it with {hint}") from None
  if not builder.is_prepared():
    raise DataError(f"dataset {name!r} is not prepared in {where}: prepare it with {hint}")
  info = builder.info
  formats = {getattr(f, "value", str(f)) for f in info.available_file_formats()}
  if "array_record" not in formats:
    raise DataError(f"dataset {name!r} in {where} is prepared as {', '.join(sorted(formats)) or 'an unknown format'}, "
                    f"not array_record (needed for random access): re-prepare it with file_format='array_record', "
                    f"e.g. {hint} into another data_dir")
  missing = [f for f in ("image", "label") if f not in info.features]
  if missing:
    raise DataError(f"dataset {name!r} has no {' or '.join(repr(f) for f in missing)} feature "
                    f"(it has {', '.join(sorted(info.features))}): use an image-classification dataset")
  image, label = info.features["image"], info.features["label"]
  shape = tuple(image.shape)  # (H, W, C), or (H, W) for some grey datasets; None where the size varies
  if len(shape) not in (2, 3) or any(d is None for d in shape):
    raise DataError(f"dataset {name!r} has images of variable or unknown size {shape}: prepare it at one size "
                    f"(resize the images in its builder, e.g. tfds.features.Image(shape=(H, W, C)))")
  if np.dtype(image.np_dtype) != np.uint8:
    raise DataError(f"dataset {name!r} stores {np.dtype(image.np_dtype).name} images, not uint8: use a uint8 one")
  shape = shape if len(shape) == 3 else shape + (1,)  # [H, W, C]
  missing = [s for s in ("train", "test") if s not in info.splits]
  if missing:
    raise DataError(f"dataset {name!r} has no {' or '.join(repr(s) for s in missing)} split "
                    f"(it has {', '.join(sorted(info.splits))}): use a dataset with train and test splits")
  splits = {}
  for ours, theirs in SPLITS.items():
    if theirs not in info.splits:
      continue
    source = _data_source(name, theirs, data_dir)
    images = TfdsImages(name, theirs, data_dir, (len(source),) + shape, source=source)
    splits[ours] = (images, _read_labels(name, theirs, data_dir))
  return splits, int(label.num_classes), tuple(label.names)
