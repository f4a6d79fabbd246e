"""User-facing errors: what a user can fix (a config field, an input file, a sensor).

Every entry point (`main`, `evaluate`, `data.ingest`, `tools.*`) runs through `run_cli`, which
prints a `UserError` as one line, `error: <message>`, and exits with status 2. Any other
exception is a bug and keeps its traceback (exit status 1).

Messages name where (file / field / sensor / record), what was found and what was expected.
Existing error classes of the package (ConfigError, UnknownSensorError, IngestError,
TileFormatError, ReaderError) derive from `UserError`.
"""
from __future__ import annotations

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


def run_cli(fn: Callable[[], object]) -> object:
  """Runs fn(); a UserError (anywhere in it) -> one 'error: ...' line on stderr, exit 2."""
  try:
    return fn()
  except UserError as e:
    print(format_error(e), file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
