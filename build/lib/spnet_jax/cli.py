"""Runs a command's absl main for `python -m` and the installed `spnet-*` scripts alike.

An installed script's `__main__` is pip's generated stub, whose docstring absl would print as the
usage text: the command module's own docstring is used instead. absl ends `--help` with exit
status 1; a help request that was answered exits 0.
"""

import sys
from collections.abc import Callable

from absl import app

HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def run(main: Callable, usage: str | None, define_flags: Callable[[], None] | None = None) -> None:
  """Defines the command's flags (if it defines them lazily) and runs `main` under absl.

  Args:
    main: the command's main(argv).
    usage: the text `--help` prints above the flags (the command module's docstring).
    define_flags: defines the command's flags, for modules that do not at import.
  """
  if define_flags is not None:
    define_flags()
  if usage:
    sys.modules["__main__"].__doc__ = usage
  asked_for_help = any(arg.split("=")[0] in HELP_FLAGS for arg in sys.argv[1:])
  try:
    app.run(main)
  except SystemExit as stop:
    if asked_for_help and stop.code == 1:
      raise SystemExit(0) from None
    raise
