"""How every command-line entry point reports errors: one ``error:`` line, a hint, exit 2.

A user error (bad flag, bad config value, missing file, a checkpoint that cannot be read)
prints ``error: <what is wrong and what to do>`` on stderr and exits with status 2; a
traceback is shown only for real bugs, or with ``--verbose``. :func:`run` replaces
``absl.app.run`` for the project's absl-based CLIs (``train/main.py``, ``infer/main.py``).
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import flags, logging

EXIT_USAGE = 2

flags.DEFINE_bool("verbose", False, "Show tracebacks for errors (for bug reports).")


class UsageError(ValueError):
  """A user error detected by a CLI itself (the message says what to do)."""


# Exception types that mean "the input is wrong": reported in one line. Anything else is a
# bug and keeps its traceback. Matched by name too, so that packages above this layer can
# define their own (IncompatibleWorkdirError, CheckpointError, ...) without registering.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               UnicodeDecodeError, FloatingPointError)
USER_ERROR_NAMES = ("CheckpointError", "IncompatibleWorkdirError", "ExportDestinationError")


def fail(message: str, code: int = EXIT_USAGE):
  """Prints ``error: message`` (first line) to stderr and exits with ``code``."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def is_user_error(e: BaseException) -> bool:
  return isinstance(e, USER_ERRORS) or type(e).__name__ in USER_ERROR_NAMES


def report_user_errors(body: Callable[[], int | None], *, verbose: bool = False) -> int:
  """For the argparse CLIs: ``body()``'s exit status, or, on a user error, one ``error:`` line
  on stderr and :data:`EXIT_USAGE` (bugs keep their traceback, as in :func:`run`)."""
  try:
    return body() or 0
  except Exception as e:  # pylint: disable=broad-except
    if verbose or not is_user_error(e):
      raise
    print(f"error: {str(e).strip()}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def run(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None,
        *, precheck: Callable[[Sequence[str]], None] | None = None):
  """Parses absl flags, runs ``main(remaining argv)`` and exits with its status.

  ``precheck(argv)`` runs before flag parsing (e.g. config-file checks that absl would
  report as tracebacks) and may raise a user error.
  """
  argv = list(sys.argv if argv is None else argv)
  verbose = "--verbose" in argv
  try:
    if precheck is not None:
      precheck(argv)
    try:
      rest = flags.FLAGS(argv)
    except flags.Error as e:
      raise UsageError(f"{str(e).rstrip('.')}. Run with --helpfull to list the flags.") from e
    logging.use_absl_handler()
    code = main(rest)
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if verbose or not is_user_error(e):
      raise
    fail(str(e).strip().replace("\n", " "))
  sys.exit(code or 0)
