"""The only entry point: python launch.py --experiment=NAME [--config.a.b=value ...] [--workdir=DIR] | --list

An experiment is experiments/NAME.py with get_config() (and get_sweep() for an ablation). Config overrides use
ml_collections' flag syntax; the config is locked, so a mistyped key is an error, not a silent new field. The same
command with the same --workdir resumes an unfinished run from its newest checkpoint.

Exit status: 0 done; 2 bad input (one `error:` line naming the fix); 3 training diverged; 130 / 143 stopped by
SIGINT / SIGTERM after saving a checkpoint.
"""
import importlib
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def experiments() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(os.path.join(HERE, "experiments")) if f.endswith(".py") and f[0] != "_")


def fail(msg: str, code: int = 2):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(code)


def check_overrides(argv, name, config):
  """Every --NAME.a.b=... must name an existing key; say which one is wrong and what it might have meant."""
  import difflib  # pylint: disable=g-import-not-at-top
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
        fail(f"unknown config key --{name}.{key}" + (f"; did you mean --{name}.{near[0]}?" if near else "") +
             f" (keys and their meaning: jcnn/config.py)")


def _argv_value(argv, name):
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


flags.DEFINE_string("experiment", None, "experiment name: a file experiments/NAME.py (see --list)")
flags.DEFINE_string("workdir", None, "where results go (default runs/NAME/TIMESTAMP)")
flags.DEFINE_bool("list", False, "list the experiments with their descriptions")
EXPERIMENT = _argv_value(sys.argv, "experiment")
if EXPERIMENT is not None:
  if EXPERIMENT not in experiments():
    fail(f"unknown experiment {EXPERIMENT!r}; known: {', '.join(experiments())} (python launch.py --list)")
  _module = importlib.import_module(f"experiments.{EXPERIMENT}")
  _config = _module.get_config()
  check_overrides(sys.argv, "config", _config)
  config_flags.DEFINE_config_dict("config", _config, "the experiment's config", lock_config=True)
  if hasattr(_module, "get_sweep"):
    _sweep = _module.get_sweep()
    check_overrides(sys.argv, "sweep", _sweep)
    config_flags.DEFINE_config_dict("sweep", _sweep, "the sweep grid", lock_config=True)


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:   # unknown config key, wrong value type, unknown flag: one line, naming the flag
    fail(f"{str(e).splitlines()[0]} (check the spelling against experiments/{EXPERIMENT or 'NAME'}.py)")


def main(argv):
  del argv
  from jcnn.errors import UserError  # pylint: disable=g-import-not-at-top  (after flags: keeps --list fast)
  FLAGS = flags.FLAGS
  logging.set_verbosity(logging.ERROR)   # jax's backend probing and TFDS's cache notes are not the run's output
  if FLAGS.list or EXPERIMENT is None:
    for name in experiments():
      print(f"{name:<24} {importlib.import_module(f'experiments.{name}').get_config().get('description', '')}")
    if EXPERIMENT is None and not FLAGS.list:
      fail("no experiment given: python launch.py --experiment=NAME (one of the above)")
    return
  from jcnn.errors import Interrupted  # pylint: disable=g-import-not-at-top
  workdir = FLAGS.workdir or os.path.join("runs", EXPERIMENT, time.strftime("%Y%m%d-%H%M%S"))
  try:
    if "sweep" in FLAGS:
      from jcnn import sweep  # pylint: disable=g-import-not-at-top
      sweep.run_sweep(FLAGS.config, FLAGS.sweep, workdir)
    else:
      from jcnn import loop  # pylint: disable=g-import-not-at-top
      loop.train_and_evaluate(FLAGS.config, workdir)
  except UserError as e:
    fail(str(e), e.exit_code)
  except Interrupted as e:
    args = sys.argv[1:]
    again = [a for i, a in enumerate(args) if not a.startswith("--workdir=") and a != "--workdir" and
             (i == 0 or args[i - 1] != "--workdir")] + [f"--workdir={workdir}"]
    print(f"stopped: {e}; resume with: python launch.py {' '.join(again)}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    print(f"stopped before training began; nothing to resume in {workdir}", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
