"""User-facing errors: one line that names the problem and the fix.

`launch.py` prints `error: <message>` for these and exits with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input from the user (config, data, shapes). The message must name the fix."""


class ConfigError(UserError):
  pass


class DataError(UserError):
  pass


class ShapeError(UserError):
  pass
