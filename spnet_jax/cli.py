"""Runs a command's absl main for `python -m` and the installed `spnet-*` scripts alike.

An installed script's `__main__` is pip's generated stub, whose docstring absl would print as the
usage text: the command module's own docstring is used instead. absl ends `--help` with exit
status 1; a help request that was answered exits 0.
"""

import importlib
import os
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
  for path in _config_paths(sys.argv[1:]):
    add_configs_package_parent(os.path.dirname(os.path.abspath(path)))
  if usage:
    sys.modules["__main__"].__doc__ = usage
  asked_for_help = any(arg.split("=")[0] in HELP_FLAGS for arg in sys.argv[1:])
  try:
    app.run(main)
  except SystemExit as stop:
    if asked_for_help and stop.code == 1:
      raise SystemExit(0) from None
    raise


def _config_paths(args: list[str]) -> list[str]:
  """The files given to --config (as `--config=F` or `--config F`)."""
  paths = []
  for i, arg in enumerate(args):
    if arg.startswith("--config="):
      paths.append(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(args):
      paths.append(args[i + 1])
  return [p for p in paths if p.endswith(".py")]


def add_configs_package_parent(configs_dir: str) -> None:
  """Lets config files import their siblings (`from configs import base`) from any folder.

  The configs folder is a package named `configs`: its parent goes on sys.path, so a config file
  given by path works whatever the current directory (installed commands included).
  """
  if os.path.basename(configs_dir) == "configs" and os.path.exists(
    os.path.join(configs_dir, "__init__.py")
  ):
    parent = os.path.dirname(configs_dir)
    if parent not in sys.path:
      sys.path.insert(0, parent)


def import_config_module(configs_dir: str, name: str):
  """The config module `name` (e.g. 'shapes_zlss') of the configs folder `configs_dir`."""
  configs_dir = os.path.abspath(configs_dir)
  if not os.path.exists(os.path.join(configs_dir, f"{name}.py")):
    raise ValueError(
      f"{os.path.join(configs_dir, name + '.py')} does not exist: pass --configs_dir=<the "
      "repository's configs folder>."
    )
  add_configs_package_parent(configs_dir)
  return importlib.import_module(f"configs.{name}")
