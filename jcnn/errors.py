"""User-facing errors: one line that names the problem and the fix.

`launch.py` prints `error: <message>` for these and exits with the error's `exit_code` (2 for bad input); anything else
is a bug in jcnn.
"""


class UserError(Exception):
  """Bad input from the user (config, data, shapes, workdir). The message must name the fix."""
  exit_code = 2


class ConfigError(UserError):
  pass


class DataError(UserError):
  pass


class ShapeError(UserError):
  pass


class Diverged(UserError):
  """A single run's loss or parameters became NaN/Inf: never reported as a success."""
  exit_code = 3


class Interrupted(Exception):
  """SIGINT / SIGTERM stopped training after saving a checkpoint; the same command resumes."""

  def __init__(self, signum: int, step: int, directory: str | None):
    import signal  # pylint: disable=g-import-not-at-top
    self.signum, self.step, self.directory = signum, step, directory
    self.exit_code = 128 + signum
    saved = f"checkpoint saved in {directory}" if directory else "no checkpoint (no workdir)"
    super().__init__(f"{signal.Signals(signum).name} at step {step}: {saved}")
