"""Choices measured once per machine and kept in a JSON table: the CPU chunk size (jcnn.parallel.machine) and the CPU
convolution lowering per layer shape (jcnn.nn.onednn).

  cache_root()                    $XDG_CACHE_HOME/jcnn (~/.cache/jcnn)
  cache_dir()                     $JCNN_MACHINE_CACHE, else $XDG_CACHE_HOME/jcnn (~/.cache/jcnn); None when set to 0
  lookup(file, key, measure)      the table's entry for `key`, measured by `measure()` -> dict the first time

May import: nothing of jcnn.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import time
from typing import Callable


def cache_root() -> str:
  """$XDG_CACHE_HOME/jcnn (~/.cache/jcnn): where jcnn keeps what it measured or built on this machine."""
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jcnn")


def cache_dir() -> str | None:
  """$JCNN_MACHINE_CACHE, else $XDG_CACHE_HOME/jcnn (~/.cache/jcnn); JCNN_MACHINE_CACHE=0 (or empty): no cache, no
  measurement (tests/conftest.py sets it: tests never time anything behind the user's back nor write ~/.cache)."""
  env = os.environ.get("JCNN_MACHINE_CACHE")
  if env is not None:
    return None if env in ("", "0") else env
  return cache_root()


def lookup(file: str, key: str, measure: Callable[[], dict]) -> dict:
  """The entry for `key` in <cache_dir()>/<file>; measured by `measure()` and written there the first time (call only
  when cache_dir() is not None). Delete the file to measure again."""
  path = os.path.join(cache_dir(), file)
  try:
    with open(path) as f:
      table = json.load(f)
  except (OSError, ValueError):
    table = {}
  if key not in table:
    # In a thread of its own: this runs while a step is being traced, and JAX's tracing state is per thread, so the
    # measurement's programs compile and run now instead of being staged into the caller's trace.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      entry = pool.submit(measure).result() | {"time": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:                                       # re-read: another key may have been written meanwhile
      with open(path) as f:
        table = json.load(f)
    except (OSError, ValueError):
      table = {}
    table[key] = entry
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "w") as f:
        json.dump(table, f, indent=1)
      os.replace(tmp, path)                    # atomic: a concurrent run reads the old or the new table, never half
    except OSError:
      pass                                     # a read-only home: measured again next run, still correct
  return table[key]
