"""Checkpoints with orbax-checkpoint: save, restore, resume.

A checkpoint is one step folder under `<workdir>/checkpoints[/<program>]/<step>/` holding two items:
  state  the loop's whole carried state (jcnn.train.program.RunState): parameters, optimizer state, BatchNorm
         statistics, step, the epoch's metric sums, and the failed-at step; for a sweep every leaf has the leading
         variant axis V;
  meta   JSON: a `jcnn` marker, the step, the epoch rows so far, and for a sweep the variant table (which row is which
         hyperparameters, which variants failed at which step).
PRNG keys and the data order are not stored as state of their own: every key is derived from the seed (in the
variant table / config) and the step, so the step is the whole PRNG and data-order state (the meta records the seed).
Writes go through orbax's CheckpointManager: a temporary folder renamed into place once complete, so a process killed
in the middle of a save leaves the previous checkpoint restorable (tests/test_checkpoint.py kills one with SIGKILL).
A step damaged later (a truncated file) is skipped on resume, saying so, in favour of the newest one that restores.
"""
from __future__ import annotations

import errno
import os
import shutil
from typing import Any, Callable

import jax
import numpy as np

from jcnn.errors import UserError

FORMAT = 1   # the `jcnn` marker in every checkpoint's meta


class CheckpointError(UserError):
  pass


class _Unreadable(CheckpointError):
  """One step's checkpoint cannot be read: restore() tries the one before."""


def _ocp():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (slow import; only runs that checkpoint)
  return ocp


def _is_disk_full(e: BaseException) -> bool:
  while e is not None:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


class Checkpoints:
  """The checkpoints of one training program in `directory`: the newest `keep` are kept.

  save(step, state, meta) writes asynchronously (the arrays are copied off the device before it returns); restore()
  returns (state, meta) of the newest step, or None when there is none.
  """

  def __init__(self, directory: str, keep: int = 2):
    ocp = _ocp()
    self.directory = os.path.abspath(directory)
    self.last_saved = None
    try:
      self._mngr = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                               cleanup_tmp_directories=True),
          item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"cannot open checkpoint folder {self.directory}: {_first_line(e)}; check the path and "
                            f"its permissions, or pass a new --workdir") from None
    self._existing = set(self._mngr.all_steps())   # a resumed run does not save its restored step again

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> bool:
    """Saves unless this step is saved already. A full disk raises CheckpointError; the previous step stays."""
    # Only the steps on disk when the folder was opened count: with several processes, process 0 may commit a step
    # before another process asks, and every process must take part in each save.
    if step == self.last_saved or step in self._existing:
      return False
    ocp = _ocp()
    meta = dict(meta, jcnn=FORMAT, step=int(step))
    try:
      self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # pylint: disable=broad-except
      self._failed(step, e)
    self.last_saved = step
    return True

  def wait(self):
    """Blocks until the last save is on disk (and reports a failed one)."""
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(self.last_saved, e)

  def _failed(self, step, e):
    try:
      self._mngr.wait_until_finished()   # an earlier save still in flight lands first
    except Exception:  # pylint: disable=broad-except
      pass
    previous = [s for s in self._mngr.all_steps() if s != step]
    kept = f"the previous checkpoint (step {max(previous)}) is kept" if previous else "no earlier checkpoint exists"
    if _is_disk_full(e):
      raise CheckpointError(f"no space left on the device while saving checkpoint step {step} in {self.directory}; "
                            f"{kept}; free some space and run the same command to resume") from None
    raise CheckpointError(f"could not save checkpoint step {step} in {self.directory} ({_first_line(e)}); {kept}; "
                          f"fix the cause and run the same command to resume") from None

  def restore(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """The newest checkpoint that restores, as (state, meta), into the structure of `abstract_state` (jax.eval_shape
    of the program's init); None when the folder holds none. A step that cannot be read (truncated, damaged) is
    skipped with one line saying which and why, and moved aside to <step>.unreadable (orbax ignores it there), so
    the run resumes from the newest good one. When none can be read, or a checkpoint is not jcnn's or holds arrays of
    other shapes, raises CheckpointError naming the fix."""
    steps = sorted(self._mngr.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        return self._restore(step, abstract_state)
      except _Unreadable as e:
        if i + 1 == len(steps):
          earlier = "no earlier checkpoint can be read either" if i else "there is no earlier checkpoint"
          raise CheckpointError(f"{e}; {earlier}: pass a new --workdir") from None
        print(f"{e}: skipped (kept as {step}.unreadable); resuming from the step before", flush=True)
        self._set_aside(step)
    return None

  def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    ocp = _ocp()
    where = os.path.join(self.directory, str(step))
    try:
      saved = self._mngr.item_metadata(step)["state"]
      saved = getattr(saved, "tree", saved)
    except Exception as e:  # pylint: disable=broad-except
      raise _Unreadable(f"checkpoint {where} cannot be read ({_first_line(e)}): truncated or not jcnn's") from None
    if not saved:
      raise _Unreadable(f"{where} is not a jcnn checkpoint (it has no state item)")
    mismatch = first_shape_mismatch(saved, abstract_state)
    if mismatch:
      raise CheckpointError(f"checkpoint {where} is of a different model or config: {mismatch}; pass a new --workdir "
                            f"for this config")
    try:
      state = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                               meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise _Unreadable(f"checkpoint {where} cannot be read ({_first_line(e)}): truncated or damaged") from None
    meta = state["meta"]
    if not isinstance(meta, dict) or meta.get("jcnn") != FORMAT:
      raise CheckpointError(f"{where} is not a jcnn checkpoint (its meta has no jcnn marker); delete it to resume "
                            f"from an earlier checkpoint, or pass a new --workdir")
    return state["state"], meta

  def _set_aside(self, step: int):
    """Moves an unreadable step out of orbax's sight (kept for a look; process 0 moves it, every process forgets it),
    so later saves of that step number and the keep-newest clean-up do not trip over it."""
    if jax.process_index() == 0:
      where = os.path.join(self.directory, str(step))
      try:
        if os.path.exists(f"{where}.unreadable"):   # an earlier resume set this step number aside already
          shutil.rmtree(f"{where}.unreadable")
        os.replace(where, f"{where}.unreadable")
      except OSError:
        pass
    self._mngr.reload()
    self._existing.discard(step)

  def restore_untyped(self, step: int) -> dict:
    """{'state': nested dicts of arrays (no target structure: NamedTuples come back as lists), 'meta'}: for reading a
    run's parameters without rebuilding its optimizer."""
    ocp = _ocp()
    where = os.path.join(self.directory, str(step))
    try:   # onto this process's first device, whatever devices the run was saved from (a mesh of 4, of 2 hosts)
      saved = self._mngr.item_metadata(step)["state"]
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            getattr(saved, "tree", saved), is_leaf=lambda m: hasattr(m, "shape"))
      return self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                              meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint {where} cannot be read ({_first_line(e)}); it is truncated or damaged; delete "
                            f"it to use an earlier one") from None

  def meta(self, step: int | None = None) -> dict:
    """The JSON meta of a step (default: the newest): its epoch rows, seed, and a sweep's variant table."""
    ocp = _ocp()
    step = self._mngr.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{self.directory} holds no checkpoint; train a run first")
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def close(self):
    self.wait()
    self._mngr.close()


def _first_line(e: BaseException) -> str:
  s = str(e).strip()
  return (s.splitlines()[0][:200] if s else type(e).__name__)


def _leaves(tree) -> dict[str, Any]:
  """{'train/params/conv1/kernel': leaf} for the saved metadata (nested dicts) and for dataclass / dict targets."""
  out = {}

  def walk(t, prefix):
    if hasattr(t, "shape") and hasattr(t, "dtype"):   # an array, an abstract array, or orbax's ArrayMetadata
      out[prefix[:-1]] = t
      return
    if hasattr(t, "__dataclass_fields__"):
      t = {k: getattr(t, k) for k in t.__dataclass_fields__}
    if isinstance(t, dict):
      for k, v in t.items():
        walk(v, f"{prefix}{k}/")
    elif isinstance(t, (list, tuple)):
      items = t._asdict().items() if hasattr(t, "_asdict") else enumerate(t)
      for k, v in items:
        walk(v, f"{prefix}{k}/")
    elif t is not None:
      out[prefix[:-1]] = t
  walk(tree, "")
  return out


def first_shape_mismatch(saved, target) -> str | None:
  """'parameter conv1/kernel has shape (3, 3, 1, 32) in the checkpoint, (3, 3, 1, 16) here' for the first parameter
  (then any other array) whose shape differs; None when every shape agrees."""
  a, b = _leaves(saved), _leaves(target)
  params = lambda d: {k.split("params/", 1)[1]: v for k, v in d.items() if "/params/" in f"/{k}" and
                      k.startswith("train/params/")}
  pa, pb = params(a), params(b)
  for k in sorted(set(pa) | set(pb)):
    if k not in pa or k not in pb:
      return (f"parameter {k} is missing from the checkpoint" if k not in pa else
              f"the checkpoint has parameter {k}, which this model lacks")
    sa, sb = tuple(pa[k].shape), tuple(pb[k].shape)
    if sa != sb:
      return f"parameter {k} has shape {sa} in the checkpoint, {sb} here"
  for k in sorted(set(a) & set(b)):
    if hasattr(a[k], "shape") and hasattr(b[k], "shape") and tuple(a[k].shape) != tuple(b[k].shape):
      return f"{k} has shape {tuple(a[k].shape)} in the checkpoint, {tuple(b[k].shape)} here"
  return None


def restore_or_init(ckpt: Checkpoints | None, init: Callable[[], Any], sharding=None) -> tuple[Any, dict]:
  """The newest checkpoint's (state, meta), or (init(), {}) when there is none (or no checkpoints are kept). Every
  array is restored with `sharding` (default: this process's first device), whatever devices it was saved from: a
  run saved on 4 devices resumes on 1, and the reverse."""
  if ckpt is not None:
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), jax.eval_shape(init))
    restored = ckpt.restore(abstract)
    if restored is not None:
      return restored
  return init(), {}


# ----------------------------------------------------------------------------------------------------------------
# A trained run, for inference and inspection.
WHICH = ("latest", "best")   # load_trained's `checkpoint`: the newest step, or the best epoch (config.checkpoint.best)


def best_directory(workdir: str) -> str:
  """Where a single run keeps its best epoch's checkpoint (config.checkpoint.best)."""
  return os.path.join(workdir, "checkpoints", "best")


def load_trained(workdir: str, variant: int | None = None, checkpoint: str = "latest") -> dict:
  """A finished or interrupted run's model and variables from its newest checkpoint, or with checkpoint='best' from
  its best epoch's (a run trained with config.checkpoint.best).

  workdir: a run's or a sweep's workdir; `variant`: for a sweep, the line of variants.jsonl (0-based). Returns
  {'config' (the variant's own config), 'model', 'variables' ({'params' (the parameters' moving average when the run
  kept one: config.train.ema_decay), 'batch_stats'}), 'meta' (epoch rows, data:
  num_classes, outputs, task, input shape and dtype, preprocessing and target statistics), 'hparams' (sweeps)}.
  """
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jcnn import config as config_lib, models  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{workdir} holds no jcnn run (no config.json); pass the --workdir of a trained run")
  with open(path) as f:
    saved = json.load(f)
  config = ml_collections.ConfigDict(saved["config"])
  root = os.path.join(workdir, "checkpoints")
  programs = sorted((d for d in (os.listdir(root) if os.path.isdir(root) else []) if "-" in d),
                    key=lambda d: tuple(int(x) for x in d.split("-")))
  if "sweep" in saved:
    if variant is None:
      raise CheckpointError(f"{workdir} holds a sweep: pass a variant (a line of its variants.jsonl, from 0)")
    first, hparams = 0, None
    for name in programs:
      meta = Checkpoints(os.path.join(root, name)).meta()
      if first <= variant < first + len(meta["variants"]):
        j, hparams, directory = variant - first, meta["variants"][variant - first], os.path.join(root, name)
        break
      first += len(meta["variants"])
    if hparams is None:
      raise CheckpointError(f"{workdir} has no variant {variant} (it has {first}); pick one of 0-{first - 1}")
    if hparams["failed_at"] >= 0:
      raise CheckpointError(f"variant {variant} of {workdir} diverged at step {hparams['failed_at']} "
                            f"({hparams['hparams']}); pick a variant that did not fail")
    group = hparams["hparams"].get("group", "")
    if group:
      config = config_lib.apply_group(config, group)
    config = config_lib.variant_config(config, hparams["hparams"])
  else:
    j, hparams, directory = None, None, root
  if checkpoint not in WHICH:
    raise CheckpointError(f"checkpoint={checkpoint!r}: pass one of {', '.join(WHICH)}")
  if checkpoint == "best":
    directory = best_directory(workdir)
    if "sweep" in saved or not os.path.isdir(directory) or Checkpoints(directory).latest_step() is None:
      raise CheckpointError(f"{workdir} keeps no best checkpoint (train with --config.checkpoint.best=val_accuracy, "
                            f"or any epoch-row metric); use --checkpoint=latest")
  ck = Checkpoints(directory)
  step = ck.latest_step()
  if step is None:
    raise CheckpointError(f"{directory} holds no checkpoint; train the run first")
  restored = ck.restore_untyped(step)
  train = restored["state"]["train"]
  pick = (lambda t: jax.tree.map(lambda a: np.asarray(a)[j], t)) if j is not None else (lambda t: t)
  params = train.get("ema") or train["params"]   # the moving average, when the run kept one (config.train.ema_decay)
  variables = {"params": pick(params), "batch_stats": pick(train.get("batch_stats") or {})}
  meta = restored["meta"]
  model = models.get(config.model, num_classes=meta["data"].get("outputs", meta["data"]["num_classes"]))
  return {"config": config, "model": model, "variables": variables, "meta": meta,
          "hparams": hparams["hparams"] if hparams else None, "step": step}
