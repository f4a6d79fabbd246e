"""User-facing errors: what a user can fix (a config field, an input file, a sensor).

Every entry point (`main`, `evaluate`, `data.ingest`, `tools.*`) runs through `run_cli`, which
prints a `UserError` as one line, `error: <message>`, and exits with status 2. Any other
exception is a bug and keeps its traceback (exit status 1).

Messages name where (file / field / sensor / record), what was found and what was expected.
Existing error classes of the package (ConfigError, UnknownSensorError, IngestError,
TileFormatError, ReaderError) derive from `UserError`.
"""
from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(ValueError):
  """An error in a config or an input that the user can fix; printed without a traceback."""


class ReaderError(UserError):
  """A dataset file or layout that a reader cannot take (names the file and what was expected)."""


EXIT_USER_ERROR = 2


def format_error(err: BaseException) -> str:
  """One line: 'error: <message>' (newlines in the message folded to '; ')."""
  text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
  text = "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())
  return f"error: {text or type(err).__name__}"


def run_cli(fn: Callable[[], object], also: tuple[type[BaseException], ...] = ()) -> object:
  """Runs fn(); a UserError (anywhere in it) -> one 'error: ...' line on stderr, exit 2.

  also: further exception types that are the user's at this entry point (e.g. a tool's
  FileNotFoundError for a path given on its command line).
  """
  try:
    return fn()
  except (UserError, *also) as e:
    _exit_with(format_error(e))


def _exit_with(line: str) -> None:
  print(line, file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _user_cause(err: BaseException) -> UserError | None:
  """The innermost UserError among err and the exceptions it was raised from or during."""
  found, seen = None, set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    if isinstance(err, UserError):
      found = err
    err = err.__cause__ or err.__context__
  return found


def parse_absl_flags(argv: list[str]) -> list[str]:
  """`flags_parser` for `absl.app.run`: a bad flag or config -> one 'error:' line, exit 2.

  ml_collections' config flags load the config file while the flags are parsed, so a
  `get_config(arg)` that raises a UserError (a bad variant, `config.args.check_choice`), a bad
  `--config.x=...` override, an unknown field or a missing config file surfaces here (absl
  would print a 'FATAL Flags parsing error' with the config's traceback, exit 1, or a bare
  traceback). Any other exception raised while loading a config file is a bug in it and keeps
  its traceback.
  """
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    # absl: "flag --NAME=VALUE: <message of the parser's exception>".
    where = text.split(": ", 1)[0].removeprefix("flag ") if text.startswith("flag --") else ""
    cause = _user_cause(e)
    if cause is None and "Error whilst parsing config file" in text:
      raise
    msg = format_error(cause if cause is not None else e).removeprefix("error: ")
    _exit_with(f"error: {where}: {msg}" if where and cause is not None else f"error: {msg}")
  except (AttributeError, KeyError) as e:
    field = _unknown_override(e)
    if field is None:
      raise
    _exit_with(f"error: --{field}: the config has no field {field.split('.', 1)[1]!r} (a "
               "typo? fields cannot be added from the command line)")
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if type(value).__name__ == "_ErrorConfig":  # ml_collections: the file could not be loaded
      path = getattr(flags.FLAGS[name], "config_filename", "")
      _exit_with(f"error: --{name}: config file {path!r} not found (a path relative to "
                 f"{os.getcwd()}, or absolute)")
  quiet_library_logs(explicit=flags.FLAGS["verbosity"].present)
  return rest


def quiet_library_logs(explicit: bool = False) -> None:
  """By default a user sees our lines (progress, losses, checkpoints, errors) and the libraries'
  warnings, not their INFO logging (Orbax prints ~150 INFO lines around a tiny run); an
  explicit --verbosity (absl's -v) keeps whatever it asked for."""
  if explicit:
    return
  import logging as std_logging  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)
  for name in ("orbax", "jax", "grain", "tensorboardX"):
    std_logging.getLogger(name).setLevel(std_logging.WARNING)


def _unknown_override(err: BaseException) -> str | None:
  """'config.train.nope' when err comes from ml_collections resolving an override's field."""
  tb = err.__traceback__
  while tb is not None:
    frame = tb.tb_frame
    if frame.f_code.co_filename.endswith("config_flags.py") and "field_path" in frame.f_locals:
      owner = frame.f_locals.get("self")
      return f"{getattr(owner, 'name', 'config')}.{frame.f_locals['field_path']}"
    tb = tb.tb_next
  return None
