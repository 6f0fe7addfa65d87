"""Runs a command's absl main for `python -m` and the installed `spnet-*` scripts alike.

A mistake the user can fix (an errors.UserError, an app.UsageError, a flag absl rejects, a
misspelt `--config.<field>`, a config file that is missing or does not load) prints
`Error: <what is wrong>` and, where the message does not say it, what to do, then exits with
status 2; `--verbose` (defined for every command) prints the traceback instead. Anything else is
a bug and keeps its traceback. `--help` and `--helpfull` print the usage and exit 0.

An installed script's `__main__` is pip's generated stub, whose docstring absl would print as the
usage text: the command module's own docstring is used instead.
"""

import glob
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags

from spnet_jax.errors import USER_ERROR_EXIT_CODE, UserError

HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")
VERBOSE_FLAGS = ("--verbose", "-verbose", "--verbose=true", "--verbose=1")
FLAGS_HINT = "Run with --help to see the flags."
CONFIG_HINT = (
  "The config file defines the fields (a comment each); override one with --config.<field>=V."
)
CONFIG_LOAD_HINT = "Run with --verbose to see where in the config file it fails."
# What TensorFlow's C++ libraries print while they load, before any log setting applies
# (TF_CPP_MIN_LOG_LEVEL included), once per library that holds a copy (twice), and the note on
# CPU instructions the build does not use (two lines).
TENSORFLOW_LOAD_NOTICES = (
  "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
  "] oneDNN custom operations are on.",
  "] This TensorFlow binary is optimized to use available CPU instructions",
  "rebuild TensorFlow with the appropriate compiler flags.",
)
GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips are PCI devices of Google's vendor id.


def run(main: Callable, usage: str | None, define_flags: Callable[[], None] | None = None) -> None:
  """Defines the command's flags (if it defines them lazily) and runs `main` under absl.

  Args:
    main: the command's main(argv).
    usage: the text `--help` prints above the flags (the command module's docstring).
    define_flags: defines the command's flags, for modules that do not at import.
  """
  if define_flags is not None:
    define_flags()
  _define_verbose_flag()
  args = sys.argv[1:]
  for path in _config_paths(args):
    add_configs_package_parent(os.path.dirname(os.path.abspath(path)))
  if usage:
    sys.modules["__main__"].__doc__ = usage
  asked_for_help = any(arg.split("=")[0] in HELP_FLAGS for arg in args)
  _keep_jax_off_an_absent_tpu()
  try:
    app.run(_with_usage_errors_as_user_errors(main), flags_parser=_parse_flags)
  except UserError as error:
    exit_on_user_error(error, _asked_for_verbose(args))
  except SystemExit as stop:
    # absl prints the usage while it parses a help flag, then exits with status 1.
    if asked_for_help and stop.code == 1:
      raise SystemExit(0) from None
    raise


def run_without_flags(main: Callable[[list[str]], None], usage: str) -> None:
  """Runs a command that takes positional arguments only (no absl flags) like `run` does.

  `--help` prints `usage`; `--verbose` is taken out of the arguments `main` receives.
  """
  args = sys.argv[1:]
  if any(arg.split("=")[0] in HELP_FLAGS for arg in args):
    print(usage)
    raise SystemExit(0)
  verbose = any(arg in VERBOSE_FLAGS for arg in args)
  try:
    main([arg for arg in args if arg not in VERBOSE_FLAGS])
  except UserError as error:
    exit_on_user_error(error, verbose)


def exit_on_user_error(error: UserError, verbose: bool) -> NoReturn:
  """Prints `Error: <message>` (or the traceback, when verbose) and exits with status 2."""
  sys.stdout.flush()
  if verbose:
    traceback.print_exception(error)
  else:
    print(f"Error: {error}", file=sys.stderr)
  sys.stderr.flush()
  raise SystemExit(USER_ERROR_EXIT_CODE)


def _define_verbose_flag() -> None:
  if "verbose" not in flags.FLAGS:
    # Listed under the command's own flags (absl's main module is sys.argv[0]), so --help shows it.
    flags.DEFINE_bool(
      "verbose",
      False,
      "On an error, print the whole traceback (a user error prints one or two lines otherwise).",
      module_name=sys.argv[0],
    )


def _asked_for_verbose(args: list[str]) -> bool:
  if flags.FLAGS.is_parsed():
    return bool(flags.FLAGS.verbose)
  return any(arg in VERBOSE_FLAGS for arg in args)


def _with_usage_errors_as_user_errors(main: Callable) -> Callable:
  """absl answers an app.UsageError with the whole usage text and status 1: one line instead."""

  def checked_main(argv):
    try:
      return main(argv)
    except (app.UsageError, flags.Error) as error:
      raise UserError(f"{error}\n{FLAGS_HINT}") from error

  return checked_main


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with every flag or config file mistake raised as a UserError."""
  args = argv[1:]
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as error:
    raise UserError(_flag_error_message(str(error))) from error
  except (AttributeError, KeyError) as error:  # ml_collections: a field the config lacks.
    _check_config_files_exist(args)
    raise UserError(_config_error_message(error, args)) from error
  except (OSError, ImportError, SyntaxError) as error:  # The config file does not load.
    _check_config_files_exist(args)
    raise UserError(_config_load_message(error, args)) from error
  # A missing config file is only reported when the config is first read: say it now.
  _check_config_files_exist(args)
  return remaining


def _flag_error_message(text: str) -> str:
  """absl's 'flag --x=v: reason' as 'what is wrong' and 'what to do' lines."""
  required = re.search(r"Flag --(\S+) must have a value other than None", text)
  if required:
    return f"--{required.group(1)} is required.\n{FLAGS_HINT}"
  text = text.removeprefix("flag ")
  if "Error whilst parsing config file" in text:  # get_config() raised: keep its last line.
    flag = text.split(": Error whilst parsing config file")[0]
    return f"{flag}: the config file failed to load: {_last_line(text)}\n{CONFIG_LOAD_HINT}"
  return f"{text}\n{CONFIG_HINT if '--config' in text else FLAGS_HINT}"


def _config_error_message(error: BaseException, args: list[str]) -> str:
  """ml_collections' KeyError/AttributeError for a misspelt --config.<field> override."""
  text = _innermost_message(error)
  key = re.match(r"'(\w+)'", text)
  override = next((a for a in _overrides(args) if key and key.group(1) in a.split(".")[1:]), None)
  if override is None:  # Raised by the config file's own code.
    return _config_load_message(error, args)
  message = f"{override}: the config has no field {key.group(1)!r}"
  suggestion = re.search(r'Did you mean "(\w+)"', text)
  if suggestion:
    message += f" (did you mean {suggestion.group(1)!r}?)"
  return f"{message}.\n{CONFIG_HINT}"


def _config_load_message(error: BaseException, args: list[str]) -> str:
  files = ", ".join(_config_paths(args)) or "the config file"
  what = f"{type(error).__name__}: {_last_line(_innermost_message(error))}"
  return f"--config={files}: the config file failed to load: {what}\n{CONFIG_LOAD_HINT}"


def _innermost_message(error: BaseException) -> str:
  """The text of an exception that wraps another as its argument (ml_collections does)."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0]) if error.args else str(error)


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else text


def _overrides(args: list[str]) -> list[str]:
  """The dotted flags given (`--config.train.num_steps` of `--config.train.num_steps=3`)."""
  names = [arg.split("=")[0].lstrip("-") for arg in args if arg.startswith("-")]
  return [f"--{name}" for name in names if "." in name]


def _check_config_files_exist(args: list[str]) -> None:
  for path in _config_paths(args):
    if not os.path.isfile(path):
      raise UserError(f"--config={path}: the file does not exist.\n{_config_files_hint(path)}")


def _config_files_hint(path: str) -> str:
  folder = os.path.dirname(path) or "."
  if not os.path.isdir(folder):
    return "Pass a file of the repository's configs/ folder, e.g. --config=configs/shapes_zlss.py."
  names = sorted(n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_"))
  return f"Config files in {folder}: {', '.join(names) or 'none'}."


def _config_paths(args: list[str]) -> list[str]:
  """The files given to --config (as `--config=F`, `--config F` or `F:arg`)."""
  paths = []
  for i, arg in enumerate(args):
    if arg.startswith("--config="):
      paths.append(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(args):
      paths.append(args[i + 1])
  paths = [p.split(":", 1)[0] for p in paths]
  return [p for p in paths if p.endswith(".py")]


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow without the start-up notices it prints twice; other output passes.

  Commands call it before their first TensorFlow import; --verbose keeps the notices.
  """
  if "tensorflow" in sys.modules or any(arg in VERBOSE_FLAGS for arg in sys.argv[1:]):
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)  # The libraries write to file descriptor 2, not sys.stderr.
    try:
      import tensorflow  # noqa: F401
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      printed = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
      sys.stderr.write("".join(line for line in printed if not _is_load_notice(line)))
      sys.stderr.flush()


def _is_load_notice(line: str) -> bool:
  return any(notice in line for notice in TENSORFLOW_LOAD_NOTICES)


def _keep_jax_off_an_absent_tpu() -> None:
  """Runs JAX on the CPU when libtpu is installed but neither a TPU nor another plugin is there.

  JAX would otherwise start libtpu anyway, which prints several lines about TPU host bounds and
  worker hostnames (or about its lock file, while another process holds it) on every run.
  JAX_PLATFORMS, when set, decides; a GPU or TPU machine keeps JAX's own choice.
  """
  if "JAX_PLATFORMS" in os.environ or "JAX_FORCE_TPU_INIT" in os.environ:
    return
  if importlib.util.find_spec("libtpu") is None or _accelerator_present():
    return
  if "jax" in sys.modules:  # jax read the environment when it was imported.
    sys.modules["jax"].config.update("jax_platforms", "cpu")
  else:
    os.environ["JAX_PLATFORMS"] = "cpu"


def _accelerator_present() -> bool:
  """A TPU chip, an NVIDIA GPU, or a JAX plugin other than libtpu (CUDA, ROCm, ...)."""
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or glob.glob("/dev/nvidia[0-9]*"):
    return True
  if importlib.metadata.entry_points(group="jax_plugins"):
    return True
  if importlib.util.find_spec("jax_plugins") is not None:
    return True
  for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor_file) as file:
        if file.read().strip() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


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
    raise UserError(
      f"{os.path.join(configs_dir, name + '.py')} does not exist: pass --configs_dir=<the "
      "repository's configs folder>."
    )
  add_configs_package_parent(configs_dir)
  return importlib.import_module(f"configs.{name}")
