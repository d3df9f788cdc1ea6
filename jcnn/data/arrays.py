"""Arrays on disk: an uncompressed .npz with x_train, y_train, x_test, y_test (optionally x_val, y_val), or a folder
of .npy files with those names. Images are memory-mapped (mmap_mode='r'; for an .npz, each stored member is mapped at
its offset in the zip), so a file larger than memory is never read whole: a batch reads its rows only. A compressed
.npz cannot be mapped and is read whole (np.savez, not np.savez_compressed, for large data).

Images are [N, H, W, C] or [N, H, W] (one channel), uint8 (scaled by 1/255) or float; labels integers in [0, classes).
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from jcnn.errors import DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")


class MappedArray:
  """A read-only memory map of one array in a file, reopened after pickling (grain's worker processes) instead of
  being copied: mapped[i] -> np.ndarray. [N, H, W] arrays read as [N, H, W, 1]."""

  def __init__(self, path: str, offset: int, dtype, shape, fortran: bool = False):
    self.path, self.offset, self.dtype, self.fortran = path, offset, np.dtype(dtype), fortran
    self.stored = tuple(shape)
    self.shape = self.stored + (1,) if len(self.stored) == 3 else self.stored
    self._map = None

  def __len__(self) -> int:
    return self.shape[0]

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_map"} | {"_map": None}

  def array(self) -> np.ndarray:
    if self._map is None:
      m = np.memmap(self.path, self.dtype, "r", self.offset, self.stored, order="F" if self.fortran else "C")
      self._map = m.reshape(self.shape)
    return self._map

  def __getitem__(self, i) -> np.ndarray:
    return np.asarray(self.array()[i])


def _npy_header(f):
  version = np.lib.format.read_magic(f)
  shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
  return shape, fortran, dtype, f.tell()


def _npy(path: str) -> MappedArray:
  with open(path, "rb") as f:
    shape, fortran, dtype, offset = _npy_header(f)
  return MappedArray(path, offset, dtype, shape, fortran)


def _npz(path: str) -> dict:
  """Each member of an .npz: mapped where it is stored uncompressed, else read whole."""
  out = {}
  with zipfile.ZipFile(path) as z:
    for info in z.infolist():
      key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
      if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:   # the member's data starts after its local header (30 bytes + name + extra)
          f.seek(info.header_offset + 26)
          n, extra = np.frombuffer(f.read(4), "<u2")
          f.seek(info.header_offset + 30 + int(n) + int(extra))
          shape, fortran, dtype, offset = _npy_header(f)
        out[key] = MappedArray(path, offset, dtype, shape, fortran)
      else:
        with z.open(info) as f:
          out[key] = np.lib.format.read_array(f)
  return out


def open_arrays(path: str):
  """-> ({'train' | 'test' | 'val': (images, labels [N] int32)}, num_classes)."""
  if path.endswith(".npz") and os.path.isfile(path):
    try:
      found = _npz(path)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
      raise DataError(f"cannot read {path} as an .npz ({e}); write it with np.savez(path, x_train=..., ...)") from None
  elif os.path.isdir(path):
    found = {k[:-4]: _npy(os.path.join(path, k)) for k in os.listdir(path) if k.endswith(".npy")}
  else:
    raise DataError(f"config.data.path={path!r} is neither an .npz file nor a folder of .npy files: save "
                    f"x_train, y_train, x_test, y_test with np.savez")
  missing = [k for k in KEYS if k not in found]
  if missing:
    raise DataError(f"{path} lacks {', '.join(missing)} (it has {', '.join(sorted(found)) or 'nothing'}): save "
                    f"{', '.join(KEYS)} (and optionally x_val, y_val)")
  splits = {}
  for s in ("train", "test", "val"):
    if f"x_{s}" not in found:
      continue
    x, y = found[f"x_{s}"], np.asarray(found[f"y_{s}"][:])
    if isinstance(x, np.ndarray) and x.ndim == 3:
      x = x[..., None]
    if len(x.shape) != 4:
      raise DataError(f"{path}: x_{s} has shape {tuple(x.shape)}; images must be [N, H, W] or [N, H, W, C]")
    if y.ndim != 1 or len(y) != len(x):
      raise DataError(f"{path}: x_{s} has {len(x)} rows but y_{s} has shape {tuple(y.shape)}; give one label per "
                      f"image")
    splits[s] = (x, labels(y, f"{path}: y_{s}"))
  num_classes = int(max(y.max() for _, y in splits.values())) + 1
  return splits, num_classes


def labels(y: np.ndarray, what: str) -> np.ndarray:
  """Class labels as int32, refused when they are not integers or are negative."""
  if y.dtype.kind == "f":
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
      bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
      raise DataError(f"{what}[{bad}] = {y[bad]} is not an integer: labels are class numbers 0, 1, ...")
  elif y.dtype.kind not in "iub":
    raise DataError(f"{what} has {y.dtype} values: labels are class numbers 0, 1, ...")
  if len(y) and y.min() < 0:
    bad = int(np.flatnonzero(y < 0)[0])
    raise DataError(f"{what}[{bad}] = {y[bad]} is negative: labels are class numbers 0, 1, ...")
  return y.astype(np.int32)
