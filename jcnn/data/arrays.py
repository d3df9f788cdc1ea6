"""Arrays on disk: an uncompressed .npz with x_train, y_train, x_test, y_test (optionally x_val, y_val), or a folder
of .npy files with those names. Images are read in place, by rows, at their offset in the file (for an .npz, each member
stored uncompressed is found in the zip), so a file larger than memory is never read whole: a batch reads its rows
only, with positional reads that leave no page of the file in the process's memory. A compressed
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
  """One array stored in a file, read by rows: mapped[i] -> np.ndarray reads only rows i, with positional reads
  (os.pread) of whole rows, so neither a batch nor a pass over the split leaves file pages in this process's resident
  memory (a memory map would count every page it touched). Picklable as (path, offset, dtype, shape): grain's worker
  processes open the file themselves. [N, H, W] arrays read as [N, H, W, 1]."""

  def __init__(self, path: str, offset: int, dtype, shape, fortran: bool = False):
    self.path, self.offset, self.dtype, self.fortran = path, offset, np.dtype(dtype), fortran
    self.stored = tuple(shape)
    self.shape = self.stored + (1,) if len(self.stored) == 3 else self.stored
    self.row = int(np.prod(self.stored[1:], dtype=np.int64)) * self.dtype.itemsize   # bytes per example
    self._fd = None

  def __len__(self) -> int:
    return self.shape[0]

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_fd"} | {"_fd": None}

  def __del__(self):
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)

  def _read(self, start: int, count: int) -> bytes:
    if self._fd is None:
      self._fd = os.open(self.path, os.O_RDONLY)
    want, got = count * self.row, b""
    while len(got) < want:   # pread may return less than asked
      part = os.pread(self._fd, want - len(got), self.offset + start * self.row + len(got))
      if not part:
        raise DataError(f"{self.path} ends early (row {start + len(got) // self.row} of {len(self)}): the file is "
                        f"truncated; write it again")
      got += part
    return got

  def __getitem__(self, i) -> np.ndarray:
    if self.fortran:   # column-major rows are not contiguous: map the file (rare; np.save writes C order)
      m = np.memmap(self.path, self.dtype, "r", self.offset, self.stored, order="F")
      return np.ascontiguousarray(m[i]).reshape((-1,) + self.shape[1:])
    idx = np.arange(len(self))[i] if isinstance(i, slice) else np.atleast_1d(np.asarray(i))
    out = np.empty((len(idx),) + self.shape[1:], self.dtype)
    if len(idx) and np.all(np.diff(idx) == 1):   # a contiguous run of rows: one read
      out[:] = np.frombuffer(self._read(int(idx[0]), len(idx)), self.dtype).reshape(out.shape)
      return out
    for k, j in enumerate(idx):
      if not 0 <= j < len(self):
        raise IndexError(f"row {j} of {len(self)}")
      out[k] = np.frombuffer(self._read(int(j), 1), self.dtype).reshape(self.shape[1:])
    return out


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
  """-> ({'train' | 'test' | 'val': (images, labels [N] int32)}, num_classes, class names from classes.txt beside
  the arrays, if there is one)."""
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
    if y.ndim not in (1, 2) or len(y) != len(x):
      raise DataError(f"{path}: x_{s} has {len(x)} rows but y_{s} has shape {tuple(y.shape)}; give one label (or "
                      f"regression target [N, T]) per example")
    splits[s] = (x, y)   # labels are checked for the task (jcnn.data.dataset.targets)
  num_classes = class_count([y for _, y in splits.values()])
  names_file = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "classes.txt")
  names = ()
  if os.path.isfile(names_file):   # one class name per line (python -m jcnn.data to-arrays writes it)
    names = tuple(line.strip() for line in open(names_file) if line.strip())
    if num_classes and len(names) < num_classes:
      raise DataError(f"{names_file} names {len(names)} classes but the labels go up to {num_classes - 1}; give one "
                      f"name per class, or remove the file")
  return splits, num_classes, names


def class_count(ys) -> int:
  """max + 1 over label arrays of class numbers; 0 when they are not all non-negative integers (regression targets)."""
  ok = all(y.ndim == 1 and (y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.all(np.isfinite(y)) and
                                                       np.all(y == np.round(y)))) and (not len(y) or y.min() >= 0)
           for y in ys)
  return int(max(y.max() for y in ys if len(y))) + 1 if ok and any(len(y) for y in ys) else 0


def labels(y: np.ndarray, what: str) -> np.ndarray:
  """Class labels as int32, refused when they are not integers or are negative."""
  if y.ndim != 1:
    raise DataError(f"{what} has shape {tuple(y.shape)}: class labels are one number per example (a target of "
                    f"several values: set config.train.task=regress)")
  if y.dtype.kind == "f":
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
      bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
      raise DataError(f"{what}[{bad}] = {y[bad]} is not an integer: labels are class numbers 0, 1, ... (real-valued "
                      f"targets: set config.train.task=regress)")
  elif y.dtype.kind not in "iub":
    raise DataError(f"{what} has {y.dtype} values: labels are class numbers 0, 1, ...")
  if len(y) and y.min() < 0:
    bad = int(np.flatnonzero(y < 0)[0])
    raise DataError(f"{what}[{bad}] = {y[bad]} is negative: labels are class numbers 0, 1, ...")
  return y.astype(np.int32)
