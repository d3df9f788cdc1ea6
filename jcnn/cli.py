"""The command line behind launch.py: modes (train, predict, export), process start-up, and errors -> one line and an
exit status.

    python launch.py --experiment=NAME [--config.a.b=value ...] [--sweep.a=value ...] [--workdir=DIR] | --list
    python launch.py --mode=predict | export --workdir=DIR ...

launch.py defines the flags and calls `run(argv, define_flags, usage)`; everything else happens here. Imports of jcnn's
packages are deferred to the mode that needs them, so `--list` and `--help` stay fast.

Exit status: 0 done; 2 bad input (one `error:` line naming the fix; nothing already written is touched); 3 training
diverged; 1 a bug in jcnn (one line naming the file that holds the traceback); 130 / 143 stopped by SIGINT / SIGTERM
after saving a checkpoint.

An entry point: the top of the house; it may import anything of jcnn, and it loads experiments by name (importlib),
never by a static import.
"""
import difflib
import importlib
import os
import sys
import tempfile
import time
import traceback
from typing import Callable

from absl import flags, logging
from ml_collections import config_flags


class Exit(Exception):
  """Ends `run` with a status, after printing its line."""

  def __init__(self, code: int):
    super().__init__(code)
    self.code = code


def experiments() -> list[str]:
  """The experiment names: the files of the `experiments` package on sys.path (launch.py puts the repo root there)."""
  try:
    folder = os.path.dirname(importlib.import_module("experiments").__file__)
  except ImportError:
    fail("no experiments package on the path: run launch.py from a checkout of jcnn (it holds experiments/)")
  return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f[0] != "_")


def fail(msg: str, code: int = 2):
  print(f"error: {msg}", file=sys.stderr, flush=True)
  raise Exit(code)


def check_overrides(argv, name, config):
  """Every --NAME.a.b=... must name an existing key; say which one is wrong and what it might have meant."""
  keys = []

  def walk(c, prefix):
    for k, v in c.items():
      keys.append(prefix + k)
      if hasattr(v, "items"):
        walk(v, prefix + k + ".")

  walk(config, "")
  for a in argv:
    if a.startswith(f"--{name}."):
      key = a[len(name) + 3:].split("=", 1)[0]
      if key not in keys:
        near = difflib.get_close_matches(key, keys, n=1)
        where = "jcnn/config.py" if name == "config" else "jcnn/sweep/grid.py (default_sweep)"
        fail(f"unknown {name} key --{name}.{key}" + (f"; did you mean --{name}.{near[0]}?" if near else "") +
             f" (keys and their meaning: {where})")


def _argv_value(argv, name):
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse(argv, define_flags: Callable[[flags.FlagValues], None]):
  """Fresh flags for one command line: (FlagValues, experiment name or None)."""
  saved_argv, sys.argv = sys.argv, list(argv)   # config_flags registers the --config.* overrides it finds in sys.argv
  try:
    return _parse(argv, define_flags)
  finally:
    sys.argv = saved_argv


def _parse(argv, define_flags):
  fv = flags.FlagValues()
  define_flags(fv)
  experiment = _argv_value(argv, "experiment")
  if experiment is not None:
    if experiment not in experiments():
      fail(f"unknown experiment {experiment!r}; known: {', '.join(experiments())} (python launch.py --list)")
    module = importlib.import_module(f"experiments.{experiment}")
    config = module.get_config()
    check_overrides(argv, "config", config)
    config_flags.DEFINE_config_dict("config", config, "the experiment's config", flag_values=fv, lock_config=True)
    if hasattr(module, "get_sweep"):
      sweep = module.get_sweep()
      check_overrides(argv, "sweep", sweep)
      config_flags.DEFINE_config_dict("sweep", sweep, "the sweep grid", flag_values=fv, lock_config=True)
    elif any(a.startswith("--sweep.") for a in argv):
      fail(f"--sweep.* flags need a sweep experiment; {experiment} has no get_sweep() (try ablation_dropout)")
  try:
    fv(argv)
  except flags.Error as e:   # wrong value type, unknown flag: one line, naming the flag
    fail(f"{str(e).strip().splitlines()[0]} (check the spelling against jcnn/config.py)")
  return fv, experiment


def compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache, so a second run of the same program loads it instead of compiling:
  $JCNN_COMPILATION_CACHE, else $XDG_CACHE_HOME/jcnn/xla (~/.cache/jcnn/xla); JCNN_COMPILATION_CACHE=0 (or empty)
  turns it off. Returns the folder, or None."""
  path = os.environ.get("JCNN_COMPILATION_CACHE")
  if path is None:
    path = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jcnn", "xla")
  if path in ("", "0", "off"):
    return None
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)   # steps and evaluations, not tiny helpers
  return path


def run(argv, define_flags: Callable[[flags.FlagValues], None], usage: str) -> int:
  """One command line (argv[0] is the program name) -> exit status. Prints what the user sees. `define_flags` adds
  launch.py's flags to a fresh FlagValues; `usage` is printed for --help."""
  logging.set_verbosity(logging.ERROR)   # jax's backend probing and TFDS's cache notes are not the run's output
  workdir = None
  try:
    if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
      print(usage)
      return 0
    fv, experiment = parse(argv, define_flags)
    if fv.mode != "train":
      return use_trained(fv)
    if fv.list or experiment is None:
      for name in experiments():
        print(f"{name:<24} {importlib.import_module(f'experiments.{name}').get_config().get('description', '')}")
      if experiment is None and not fv.list:
        fail("no experiment given: python launch.py --experiment=NAME (one of the above)")
      return 0
    from jcnn.errors import Interrupted, UserError  # pylint: disable=g-import-not-at-top  (keeps --list fast)
    compilation_cache()
    workdir = fv.workdir or os.path.join("runs", experiment, time.strftime("%Y%m%d-%H%M%S"))
    module = importlib.import_module(f"experiments.{experiment}")
    try:
      start_processes(fv)
      if hasattr(module, "main"):         # an experiment that is not a training run (gradient_flow)
        module.main(fv.config, workdir)
      else:
        from jcnn import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
        if "sweep" in fv:
          experiment_lib.run_sweep(fv.config, fv.sweep, workdir)
        else:
          experiment_lib.train_and_evaluate(fv.config, workdir)
    except UserError as e:
      fail(str(e), e.exit_code)
    except Interrupted as e:
      args = argv[1:]
      again = [a for i, a in enumerate(args) if not a.startswith("--workdir=") and a != "--workdir" and
               (i == 0 or args[i - 1] != "--workdir")] + [f"--workdir={workdir}"]
      print(f"stopped: {e}; resume with: python launch.py {' '.join(again)}", file=sys.stderr, flush=True)
      return e.exit_code
    return 0
  except Exit as e:
    return e.code
  except KeyboardInterrupt:
    print("stopped before training began (nothing to resume)", file=sys.stderr, flush=True)
    return 130
  except Exception as e:  # pylint: disable=broad-except  (a bug in jcnn: one line, the traceback kept in a file)
    return report_bug(e, workdir)


def start_processes(fv):
  """Several processes: joins them (jcnn.parallel.mesh.initialize) before any other JAX call; nothing for one
  process."""
  from jcnn.parallel import mesh  # pylint: disable=g-import-not-at-top
  from jcnn.errors import ConfigError  # pylint: disable=g-import-not-at-top
  settings = mesh.settings(fv.coordinator_address, fv.num_processes, fv.process_id)
  if settings and fv.distributed:
    raise ConfigError("--distributed finds the processes itself (SLURM, Open MPI): drop --coordinator_address, "
                      "--num_processes and --process_id, or drop --distributed")
  if settings:
    mesh.initialize(**settings, timeout_s=fv.distributed_timeout)
  elif fv.distributed:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    mesh.same_cpu_chunks()
    try:
      jax.distributed.initialize(initialization_timeout=fv.distributed_timeout)
    except (ValueError, RuntimeError) as e:
      raise ConfigError(f"--distributed found no cluster to join ({str(e).strip().splitlines()[0][:160]}); run it "
                        f"under srun / mpirun, or pass --coordinator_address, --num_processes and --process_id") \
          from None


def use_trained(fv) -> int:
  """--mode=predict / export: a trained run's model, from its workdir's newest checkpoint (--checkpoint=best: its
  best epoch's)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jcnn import export  # pylint: disable=g-import-not-at-top
  from jcnn.errors import UserError  # pylint: disable=g-import-not-at-top
  if not fv.workdir:
    fail(f"--mode={fv.mode} needs --workdir=DIR, a trained run's folder")
  if fv.mode == "predict" and not fv.images and not fv.inputs:
    fail("--mode=predict needs --images=a.png[,b.png ...] (image models) or --inputs=FILE.csv (feature vectors)")
  try:
    p = export.load(fv.workdir, fv.variant, fv.checkpoint)
    if fv.mode == "predict" and fv.inputs:
      for r in export.predict_inputs(p, fv.inputs, fv.top_k):
        print(f"row {r['row']}: " + (", ".join(f"{v:.6g}" for v in r["values"]) if "values" in r else
                                     ", ".join(f"{t['name']} ({t['class']}) {t['probability']:.4f}" for t in r["top"])))
    elif fv.mode == "predict":
      for r in export.predict_files(p, fv.images, fv.top_k):
        print(f"{r['image']}: " + ", ".join(f"{t['name']} ({t['class']}) {t['probability']:.4f}" for t in r["top"]))
    else:
      name = "model.onnx" if fv.variant is None else f"model_variant{fv.variant}.onnx"
      path = export.to_onnx(p, os.path.join(fv.workdir, name))
      given = ("as in the data (the run's preprocessing is inside)" if export.vectors(p) else
               "in [0, 1] (uint8 pixels / 255; the run's preprocessing is inside)")
      width = int(p.predict(np.zeros((1, *p.raw_shape), p.input_dtype)).shape[-1])
      out = (f"'values' [batch, {width}] in the target's units" if p.task == "regress" else
             f"'probabilities' [batch, {len(p.class_names)}]")
      print(f"wrote {path}: input '{export.input_name(p)}' float32 [batch, {', '.join(map(str, p.raw_shape))}] "
            f"{given}, output {out}")
  except UserError as e:
    fail(str(e), e.exit_code)
  return 0


def report_bug(e: BaseException, workdir) -> int:
  """An exception nobody anticipated: its traceback goes to a file (the workdir's, or the temp folder's), the terminal
  gets one line naming it."""
  text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
  path = None
  if workdir and os.path.isdir(workdir):
    path = os.path.join(workdir, "traceback.txt")
  try:
    if path is None:
      fd, path = tempfile.mkstemp(prefix="jcnn-traceback-", suffix=".txt")
      os.close(fd)
    with open(path, "w") as f:
      f.write(" ".join(sys.argv) + "\n\n" + text)
  except OSError:
    print(text, file=sys.stderr)   # never hide it: no file could be written
    path = "(printed above)"
  first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
  print(f"error: jcnn hit a bug ({type(e).__name__}: {first}); the full traceback is in {path}; please report it",
        file=sys.stderr, flush=True)
  return 1
