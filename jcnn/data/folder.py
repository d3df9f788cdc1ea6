"""Image folders: one sub-folder per class, as torchvision's ImageFolder and Keras' image_dataset_from_directory read.

    DIR/train/<class>/*.png   DIR/test/<class>/*.png   [DIR/val/<class>/*.png]     (splits given)
    DIR/<class>/*.png                                                              (one tree, split by test_fraction)

Classes are the sorted sub-folder names (label i = the i-th name). PNG, JPEG, BMP and WebP files are decoded with
Pillow when a batch is read (`FolderImages[i]`), so a folder is never decoded whole unless the run keeps it in memory.
`data.image_size=(H, W)` resizes with Pillow's bilinear filter (antialiased when shrinking); `data.channels` = 1 or 3
converts to grey (Pillow's ITU-R 601-2 luma) or RGB (an alpha channel is dropped). Without them every image must have
the first image's size and channels, and the first that differs is named.

`write_folder` writes arrays out as such a folder of PNGs (`python -m jcnn.data to-folder`): how a built-in dataset
becomes a folder to test, benchmark or look at.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jcnn.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "RGB": 3, "YCbCr": 3, "CMYK": 4, "RGBA": 4, "LA": 2, "P": 0}


def _is_image(name: str) -> bool:
  return name.lower().endswith(EXTENSIONS) and not name.startswith(".")


def scan(root: str, what: str = "") -> tuple[list[str], list[str], np.ndarray]:
  """root/<class>/<image> -> (classes (sorted names), paths, labels [N] int32)."""
  where = what or root
  classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise DataError(f"{where} has no class sub-folders: put each class's images in {where}/<class name>/")
  paths, labels = [], []
  for i, c in enumerate(classes):
    files = sorted(f for f in os.listdir(os.path.join(root, c)) if _is_image(f))
    if not files:
      raise DataError(f"class folder {os.path.join(where, c)} holds no images ({', '.join(EXTENSIONS)}); add some or "
                      f"remove the folder")
    paths += [os.path.join(root, c, f) for f in files]
    labels += [i] * len(files)
  return classes, paths, np.asarray(labels, np.int32)


class FolderImages:
  """Image files as a random-access array: images[i] (an int array) -> uint8 [len(i), H, W, C], decoded on read.
  Picklable (paths only), so grain's worker processes decode in parallel."""
  decodes = True   # reading costs decoding: jcnn.data.stream may use worker processes

  def __init__(self, paths: Sequence[str], image_size: Sequence[int] = (), channels: int = 0,
               check: bool = True):
    self.paths, self.size, self.channels = list(paths), tuple(image_size), int(channels)
    if not self.paths:
      raise DataError("an image folder split holds no images")
    first = self.open(0, convert=False)
    h, w = self.size or first.size[::-1]
    c = self.channels or _channels(first, self.paths[0])
    self.shape, self.dtype = (len(self.paths), h, w, c), np.dtype(np.uint8)
    self.mode = {1: "L", 3: "RGB"}.get(c, first.mode)
    if check and not (self.size and self.channels):
      self._check_headers(first)

  def __len__(self) -> int:
    return len(self.paths)

  def open(self, j: int, convert: bool = True):
    from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
    try:
      im = Image.open(self.paths[j])
      im.load() if convert else None
    except (OSError, UnidentifiedImageError, ValueError) as e:
      raise DataError(f"cannot read image {self.paths[j]} ({type(e).__name__}: {str(e)[:80]}); replace or delete it"
                      ) from None
    return im

  def _check_headers(self, first):
    """Sizes and modes from the file headers (no decoding): the first image that differs is named before training."""
    for j in range(1, len(self.paths)):
      im = self.open(j, convert=False)
      self._same(im, j)

  def _same(self, im, j):
    if not self.size and im.size[::-1] != self.shape[1:3]:
      raise DataError(f"{self.paths[j]} is {im.size[0]}x{im.size[1]} but {self.paths[0]} is "
                      f"{self.shape[2]}x{self.shape[1]} (W x H): set config.data.image_size=(H, W) to resize them all")
    if not self.channels and _channels(im, self.paths[j]) != self.shape[3]:
      raise DataError(f"{self.paths[j]} has {_channels(im, self.paths[j])} channel(s) ({im.mode}) but "
                      f"{self.paths[0]} has {self.shape[3]}: set config.data.channels=1 (grey) or 3 (RGB)")

  def decode(self, j: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    im = self.open(j)
    self._same(im, j)
    if self.channels and im.mode != self.mode:
      im = im.convert(self.mode)
    if self.size and im.size[::-1] != self.size:
      im = im.resize(self.size[::-1], Image.BILINEAR)
    a = np.asarray(im)
    if a.dtype != np.uint8:
      raise DataError(f"{self.paths[j]} has {a.dtype} pixels ({im.mode}); convert the folder to 8-bit images")
    return a.reshape(self.shape[1:])

  def __getitem__(self, i) -> np.ndarray:
    i = np.arange(len(self))[i] if isinstance(i, slice) else np.atleast_1d(i)
    out = np.empty((len(i),) + self.shape[1:], np.uint8)
    for k, j in enumerate(i):
      out[k] = self.decode(int(j))
    return out


def _channels(im, path: str) -> int:
  c = CHANNELS.get(im.mode, 0)
  if c not in (1, 3):
    raise DataError(f"{path} is a {im.mode} image: set config.data.channels=1 (grey) or 3 (RGB) to convert it")
  return c


def open_folder(root: str, image_size=(), channels: int = 0, test_fraction: float = 0.2, check: bool = True):
  """A folder -> ({'train' | 'test' | 'val': (FolderImages, labels)}, classes). Without train/ and test/ sub-folders,
  each class's files are split by test_fraction (the last files of a fixed shuffle, the same for every seed)."""
  if not root or not os.path.isdir(root):
    raise DataError(f"config.data.path={root!r} is not a folder: point it at DIR with DIR/<class>/*.png or "
                    f"DIR/train/<class>/ and DIR/test/<class>/")
  splits = {}
  if os.path.isdir(os.path.join(root, "train")) or os.path.isdir(os.path.join(root, "test")):
    for s in ("train", "test", "val"):
      if os.path.isdir(os.path.join(root, s)):
        splits[s] = scan(os.path.join(root, s), os.path.join(root, s))
      elif s != "val":
        raise DataError(f"{root} has a {'test' if s == 'train' else 'train'}/ folder but no {s}/: add "
                        f"{os.path.join(root, s)}/<class>/ images, or use one DIR/<class>/ tree")
    classes = splits["train"][0]
    out = {}
    for s, (c, p, y) in splits.items():   # a test or val split may lack classes; its labels are the train names'
      extra = sorted(set(c) - set(classes))
      if extra:
        raise DataError(f"{os.path.join(root, s)} has class folders {extra} that {os.path.join(root, 'train')} lacks: "
                        f"give every split the training split's class folders")
      out[s] = (p, np.asarray([classes.index(c[i]) for i in y], np.int32))
  else:
    classes, paths, labels = scan(root)
    if not 0 < test_fraction < 1:
      raise DataError(f"config.data.test_fraction={test_fraction} must be in (0, 1) for a single {root}/<class>/ tree")
    test = np.zeros(len(paths), bool)
    rng = np.random.default_rng(0)
    for c in range(len(classes)):
      where = np.flatnonzero(labels == c)
      k = int(round(test_fraction * len(where)))
      if k == 0 or k == len(where):
        raise DataError(f"class {classes[c]} has {len(where)} image(s): too few to split by "
                        f"test_fraction={test_fraction}; add images or use DIR/train/ and DIR/test/")
      test[rng.permutation(where)[:k]] = True
    out = {"train": ([p for p, t in zip(paths, test) if not t], labels[~test]),
           "test": ([p for p, t in zip(paths, test) if t], labels[test])}
  if len(classes) < 2:
    raise DataError(f"{root} has one class ({classes[0]}): a classifier needs at least two class sub-folders")
  images = {s: (FolderImages(p, image_size, channels, check), y) for s, (p, y) in out.items()}
  first = images["train"][0]
  if not (image_size and channels):   # every split must have the training split's shape
    for s, (im, _) in images.items():
      if im.shape[1:] != first.shape[1:]:
        raise DataError(f"{im.paths[0]} is {im.shape[2]}x{im.shape[1]}x{im.shape[3]} but {first.paths[0]} is "
                        f"{first.shape[2]}x{first.shape[1]}x{first.shape[3]} (W x H x C): set "
                        f"config.data.image_size=(H, W) and config.data.channels")
  return images, classes


def write_folder(out: str, x: np.ndarray, y: np.ndarray, classes: Sequence[str], split: str = "") -> int:
  """Images [N, H, W, C] uint8 and labels [N] -> out/[split/]<class>/<index>.png. Returns the number written."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = os.path.join(out, split) if split else out
  for c in sorted({int(label) for label in y}):   # the classes present (an empty class folder is refused on read)
    os.makedirs(os.path.join(root, classes[c]), exist_ok=True)
  width = len(str(max(len(x) - 1, 0)))
  for i, (img, label) in enumerate(zip(x, y)):
    a = np.asarray(img)
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(
        os.path.join(root, classes[int(label)], f"{i:0{width}d}.png"))
  return len(x)


def class_folder_names(num_classes: int, names: Sequence[str] = ()) -> list[str]:
  """Folder names whose sorted order is the label order: '0-t-shirt-top', ..., zero-padded past 10 classes."""
  width = len(str(num_classes - 1))
  clean = lambda s: "".join(ch if ch.isalnum() else "-" for ch in s.lower()).strip("-")
  return [f"{i:0{width}d}" + (f"-{clean(names[i])}" if i < len(names) else "") for i in range(num_classes)]
