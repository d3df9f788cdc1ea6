"""The only entry point: python launch.py --experiment=NAME [--config.a.b=value ...] [--sweep.a=value ...]
                                         [--workdir=DIR] | --list
                       python launch.py ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                       srun python launch.py ... --distributed          (SLURM / Open MPI find the processes)
                       python launch.py --mode=predict --workdir=DIR --images=a.png,DIR [--top_k=3] [--variant=K]
                       python launch.py --mode=predict --workdir=DIR --inputs=FEATURES.csv   (tables, toy problems)
                       python launch.py --mode=export --workdir=DIR [--format=onnx] [--variant=K]
                                        [--checkpoint=best]   (predict / export: the best epoch, not the newest)

An experiment is experiments/NAME.py with get_config() (and get_sweep() for an ablation). Config overrides use
ml_collections' flag syntax; the config is locked, so a mistyped key is an error, not a silent new field; every value is
checked against its row in jcnn/config.py. The same command with the same --workdir resumes an unfinished run from its
newest checkpoint; a workdir another process is training in is refused.

JAX's persistent compilation cache is on (~/.cache/jcnn/xla; JCNN_COMPILATION_CACHE=DIR moves it, =0 turns it off).

Exit status: 0 done; 2 bad input (one `error:` line naming the fix; nothing already written is touched); 3 training
diverged; 1 a bug in jcnn (one line naming the file that holds the traceback); 130 / 143 stopped by SIGINT / SIGTERM
after saving a checkpoint. This file only defines the flags: the rest is jcnn/cli.py.
"""
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # `jcnn` and `experiments` from this checkout

from jcnn import cli  # noqa: E402  pylint: disable=g-import-not-at-top


def define_flags(fv: flags.FlagValues):
  """launch.py's flags on a fresh FlagValues (the --config.* and --sweep.* overrides come from the experiment)."""
  flags.DEFINE_string("experiment", None, "experiment name: a file experiments/NAME.py (see --list)", flag_values=fv)
  flags.DEFINE_string("workdir", None, "where results go (default runs/NAME/TIMESTAMP); an unfinished run there "
                      "resumes", flag_values=fv)
  flags.DEFINE_bool("list", False, "list the experiments with their descriptions", flag_values=fv)
  flags.DEFINE_enum("mode", "train", ["train", "predict", "export"], "train (default), predict (top-k classes of "
                    "image files with a trained run's model) or export (the model as an ONNX file)", flag_values=fv)
  flags.DEFINE_list("images", [], "--mode=predict: image files (PNG, JPEG) or folders of them, comma-separated",
                    flag_values=fv)
  flags.DEFINE_string("inputs", None, "--mode=predict: a CSV of feature vectors (a table or toy run), one row per "
                      "example; prints values in the target's units (regression) or the top-k classes", flag_values=fv)
  flags.DEFINE_integer("top_k", 3, "--mode=predict: classes shown per image", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("variant", None, "--mode=predict/export on a sweep: the variant (a line of variants.jsonl, "
                       "from 0)", lower_bound=0, flag_values=fv)
  flags.DEFINE_enum("format", "onnx", ["onnx"], "--mode=export: the file format", flag_values=fv)
  flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "--mode=predict/export: the newest checkpoint "
                    "(latest) or the best epoch's (best: a run trained with --config.checkpoint.best=METRIC)",
                    flag_values=fv)
  flags.DEFINE_string("coordinator_address", "", "several processes: process 0's HOST:PORT (also "
                      "$JCNN_COORDINATOR_ADDRESS)", flag_values=fv)
  flags.DEFINE_integer("num_processes", 0, "several processes: how many (also $JCNN_NUM_PROCESSES)", flag_values=fv)
  flags.DEFINE_integer("process_id", -1, "several processes: this one's id, 0 to num_processes - 1 (also "
                       "$JCNN_PROCESS_ID)", flag_values=fv)
  flags.DEFINE_bool("distributed", False, "several processes under SLURM or Open MPI: jax.distributed.initialize() "
                    "finds the coordinator, count and id itself", flag_values=fv)
  flags.DEFINE_integer("distributed_timeout", 120, "seconds to wait for the other processes", lower_bound=1,
                       flag_values=fv)


def run(argv) -> int:
  """One command line (argv[0] is the program name) -> exit status."""
  return cli.run(argv, define_flags, __doc__)


if __name__ == "__main__":
  sys.exit(run(sys.argv))
