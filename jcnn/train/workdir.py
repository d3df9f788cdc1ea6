"""Workdirs: a run's folder is new, resumed, or refused, before any data is loaded; it is held by one process while
a run trains in it; and it records what ran there.

  with claim(workdir, config, finished) as resumed:   the checks below, then the workdir held until the block ends
  prepare_workdir(workdir, config, finished)          True: an unfinished run of the same config (resume); False: new
  hold(workdir)                                       an exclusive lock on <workdir>/.lock, or one line naming its holder
  write_config(workdir, config, resumed)              config.json: the resolved config, the run record, each resume's

Two runs in one workdir would delete each other's checkpoints (orbax keeps the newest `keep` of the steps it sees)
and interleave their metrics. The lock is flock(2) on an open file, so the operating system releases it when its
process ends however it ends: a killed run never leaves a stale lock. With several processes, process 0 holds it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time

from jcnn import config as config_lib
from jcnn.errors import ConfigError
from jcnn.parallel import mesh as mesh_lib
from jcnn.train import writers

MIN_FREE_BYTES = 64 << 20   # a new run's workdir must have this much room (checkpoints of the zoo's small models fit)
LOCK = ".lock"              # in the workdir: flock'd while a run trains there; holds its holder's pid, host, command


@contextlib.contextmanager
def claim(workdir: str, config, finished: str, extra: dict | None = None):
  """Process 0 checks `workdir` (a run training there first, then prepare_workdir: all before anything is written)
  and holds it for the body; every process is refused together when it cannot. Then every process checks it (again,
  under the lock: a run that finished or began meanwhile is seen) and the body gets True to resume an unfinished run,
  False for a new one. A folder this created is removed again if the body leaves nothing in it."""
  lock, refused = None, None
  if mesh_lib.is_main():
    try:
      busy = holder(workdir)   # read-only: a run training here is the first thing to say, whatever else differs
      if busy:
        raise _in_use(workdir, busy)
      prepare_workdir(workdir, config, finished, extra)
      lock = hold(workdir)
    except ConfigError as e:
      refused = e
  if mesh_lib.any_process(refused is not None):
    raise refused or ConfigError(f"process 0 refused --workdir {workdir}; its error line says why")
  try:
    resumed = prepare_workdir(workdir, config, finished, extra)
    mesh_lib.sync("workdir checked")   # before process 0 writes config.json, every process has looked at the workdir
    yield resumed
  finally:
    if lock is not None:
      lock.release()


class Lock:
  """A held workdir: `release()` unlocks it (ending the process does too)."""

  def __init__(self, fd: int, workdir: str, made: str | None):
    self.fd, self.workdir, self.made = fd, workdir, made

  def release(self):
    if self.fd is None:
      return
    fcntl.flock(self.fd, fcntl.LOCK_UN)
    os.close(self.fd)
    self.fd = None
    # The lock file stays (unlinking a flock'd path lets a late opener lock a file nobody else sees), except in a
    # folder this run created and left empty: a run that could not start leaves no folder behind.
    if self.made and os.listdir(self.workdir) == [LOCK]:
      os.remove(os.path.join(self.workdir, LOCK))
      folder = os.path.abspath(self.workdir)
      while True:
        os.rmdir(folder)
        if folder == self.made or os.listdir(os.path.dirname(folder)):
          break
        folder = os.path.dirname(folder)


def hold(workdir: str) -> Lock:
  """Takes `workdir` for this process (creating it if needed), or raises ConfigError naming the process that holds
  it. Writes the holder's pid, host, command and start time into the lock file for that message."""
  made, folder = None, os.path.abspath(workdir)
  while not os.path.exists(folder):   # the top-most folder this creates, removed again if the run writes nothing
    made, folder = folder, os.path.dirname(folder)
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(os.path.join(workdir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    who = _describe(fd)
    os.close(fd)
    raise _in_use(workdir, who) from None
  me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
        "since": time.strftime("%Y-%m-%d %H:%M:%S")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
  return Lock(fd, workdir, made)


def holder(workdir: str) -> str | None:
  """Who holds `workdir` ('process 123 on host h (...)'), or None when no run holds it. Writes nothing."""
  try:
    fd = os.open(os.path.join(workdir, LOCK), os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)   # granted unless a run holds it exclusively
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  except OSError:
    return _describe(fd)
  finally:
    os.close(fd)


def _in_use(workdir: str, who: str) -> ConfigError:
  return ConfigError(f"--workdir {workdir} is in use by {who}; wait for it to end (a stopped run resumes with its "
                     f"own command) or pass another --workdir")


def _describe(fd: int) -> str:
  """'process 123 on host h (python launch.py ..., since 2026-12-02 10:00:00)' from a held lock file."""
  try:
    h = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    return f"process {h['pid']} on {h['host']} ({h['command']}, since {h['since']})"
  except (OSError, ValueError, KeyError):
    return "another process (it has not written its name yet)"


def prepare_workdir(workdir: str, config, finished: str, extra: dict | None = None) -> bool:
  """Checks `workdir` before any data is loaded: True when it holds an unfinished run of the same config (resume),
  False when it is new (created). Refuses a finished run, a different config, a missing checkpoint folder, a path
  that is a file, and a folder that cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir {workdir} is a file, not a folder; pass a folder")
  if os.path.exists(os.path.join(workdir, finished)):
    raise ConfigError(f"{workdir} already holds a finished run ({finished}); pass a new --workdir")
  cfg_path = os.path.join(workdir, "config.json")
  if os.path.exists(cfg_path):
    try:
      with open(cfg_path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(f"{cfg_path} cannot be read ({e}); pass a new --workdir") from None
    sections = {"config": (config, config_lib.RESUMABLE_CHANGES), **{k: (v, ()) for k, v in (extra or {}).items()}}
    differ = [f"{name}.{k}" if name != "config" else k for name, (c, allowed) in sections.items()
              for k in config_lib.diff(saved.get(name, {}), c.to_dict(), allowed)]
    new = {name: json.loads(c.to_json_best_effort()) for name, (c, _) in sections.items()}   # shown as saved: lists
    if differ:
      path = lambda k: k if k.split(".")[0] in sections else f"config.{k}"
      shown = ", ".join(f"{k}: {_get(saved, path(k))!r} -> {_get(new, path(k))!r}" for k in differ[:4])
      raise ConfigError(f"{workdir} holds a run with another config ({shown}{', ...' if len(differ) > 4 else ''}); "
                        f"rerun with the same config to resume it (raising train.epochs is allowed), or pass a new "
                        f"--workdir")
    ckpts = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpts) or not os.listdir(ckpts):
      raise ConfigError(f"{workdir} holds a run (config.json) but no checkpoint to resume from ({ckpts} is missing "
                        f"or empty); pass a new --workdir")
    return True
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):   # nothing is created yet: a run that cannot start leaves no folder behind
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"cannot write to --workdir {workdir} ({existing} is not a writable folder); pass a folder you "
                      f"can write")
  free = shutil.disk_usage(existing).free
  if free < MIN_FREE_BYTES:
    raise ConfigError(f"--workdir {workdir}: only {free // 2**20} MiB free on its disk ({MIN_FREE_BYTES // 2**20} MiB "
                      f"needed for checkpoints and logs); free some space or pass a folder on another disk")
  return False


def _get(d: dict, dotted: str):
  for k in dotted.split("."):
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def write_config(workdir: str, config, resumed: bool, extra: dict | None = None, mesh=None):
  """config.json: the resolved config, the run record (versions, device, commit, mesh), and each resume's record."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  record = writers.run_record()
  if mesh is not None:
    record["mesh"] = mesh_lib.describe(mesh)
  out = {"config": json.loads(config.to_json_best_effort()),
         **{k: json.loads(v.to_json_best_effort()) for k, v in (extra or {}).items()}, "record": record}
  if resumed:
    with open(path) as f:
      old = json.load(f)
    out["record"] = old["record"]
    out["resumed"] = old.get("resumed", []) + [record]
  writers.write_json(path, out)
