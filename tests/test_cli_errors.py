"""User mistakes print one or two lines and exit 2; --verbose: the traceback; --help exits 0.

Each test starts the command as a user does (`python -m ...`). Flag mistakes are answered before
TensorFlow and JAX load (under a second); a config value is checked once they have (seconds).
"""

import os
import subprocess
import sys

import pytest

from spnet_jax.errors import USER_ERROR_EXIT_CODE

from .conftest import ROOT

CONFIG = "configs/shapes_zlss.py"
# What TensorFlow and an unused libtpu print on every start (cli.py keeps them out).
START_UP_NOISE = (
  "oneDNN custom operations",
  "absl::InitializeLog()",
  "Failed to find host bounds",
  "TPU_WORKER_HOSTNAMES",
  "Unable to initialize backend 'tpu'",
  "libtpu_lockfile",
)


def run_command(module: str, *args: str) -> subprocess.CompletedProcess:
  env = {key: value for key, value in os.environ.items() if key != "JAX_PLATFORMS"}
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def assert_user_error(result: subprocess.CompletedProcess, *names: str, max_lines: int = 2) -> None:
  """Exit status 2; stderr: 'Error: ...' naming `names`, no traceback, at most `max_lines`."""
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in lines if line.startswith("Error: ")]
  assert len(errors) == 1, result.stderr
  error_text = "\n".join(lines[lines.index(errors[0]) :])
  assert len(lines) - lines.index(errors[0]) <= max_lines, result.stderr
  for name in names:
    assert name in error_text, result.stderr
  for noise in START_UP_NOISE:
    assert noise not in result.stderr, result.stderr


@pytest.mark.parametrize(
  "args, names",
  [
    (
      ["--config.train.num_stepz=3"],
      ["--config.train.num_stepz", "'num_stepz'", "did you mean 'num_steps'"],
    ),
    (["--config.train.num_steps=abc"], ["--config.train.num_steps=abc", "'abc'"]),
    (["--bogus_flag"], ["bogus_flag", "--help"]),
    (["unexpected"], ["Unexpected arguments", "unexpected"]),
  ],
  ids=["misspelt_field", "bad_override_type", "unknown_flag", "positional_argument"],
)
def test_flag_mistakes_are_one_error_and_exit_2(tmp_path, args, names):
  result = run_command("spnet_jax.main", f"--config={CONFIG}", f"--workdir={tmp_path}", *args)
  assert_user_error(result, *names)


def test_missing_config_file_is_named_with_the_files_there(tmp_path):
  result = run_command("spnet_jax.main", "--config=configs/nope.py", f"--workdir={tmp_path}")
  assert_user_error(result, "configs/nope.py", "does not exist", "shapes_zlss.py")


def test_missing_workdir_flag_is_named():
  result = run_command("spnet_jax.main", f"--config={CONFIG}")
  assert_user_error(result, "--workdir is required")


def test_verbose_prints_the_traceback(tmp_path):
  args = [f"--config={CONFIG}", f"--workdir={tmp_path}", "--config.train.num_stepz=3"]
  result = run_command("spnet_jax.main", *args, "--verbose")
  assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr[-3000:]
  assert "Traceback (most recent call last)" in result.stderr
  assert "UserError: --config.train.num_stepz" in result.stderr


def test_invalid_config_value_stops_before_anything_starts(tmp_path):
  # Checked once TensorFlow and JAX are loaded: their start-up notices must not show either.
  args = [f"--config={CONFIG}", f"--workdir={tmp_path}", "--config.model.backbone=foo"]
  result = run_command("spnet_jax.main", *args)
  assert_user_error(result, "config.model.backbone='foo'", "resnet101", max_lines=1)
  assert result.stderr.startswith("Error: "), result.stderr  # Not even a log line before it.


def test_unprepared_dataset_after_jax_started_is_an_error_without_noise(tmp_path):
  args = [
    f"--config={CONFIG}",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.data_dir={tmp_path / 'tfds'}",
    "--config.data.auto_prepare=False",
  ]
  result = run_command("spnet_jax.main", *args)
  assert_user_error(result, "is not prepared", "spnet_jax.data.prepare", max_lines=3)


@pytest.mark.parametrize(
  "module",
  [
    "spnet_jax.main",
    "spnet_jax.tools.predict",
    "spnet_jax.tools.figures",
    "spnet_jax.tools.suite",
    "spnet_jax.data.prepare",
  ],
)
def test_help_exits_0_and_lists_verbose(module):
  result = run_command(module, "--help")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--[no]verbose: On an error, print the whole traceback" in result.stdout
  if module == "spnet_jax.main":
    assert "--config.<field>=V" in result.stdout and "--config.train.num_steps=" in result.stdout


@pytest.mark.parametrize("args", [["--helpfull"], ["--helpshort"], ["workdirs/seed0", "--help"]])
def test_report_help_exits_0_without_reading_a_folder(args):
  result = run_command("spnet_jax.tools.report", *args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Summarises results.json files" in result.stdout
  assert "results.json does not exist" not in result.stderr


def test_report_of_a_folder_without_results_is_one_error(tmp_path):
  result = run_command("spnet_jax.tools.report", str(tmp_path / "seed0"))
  assert_user_error(result, "seed0/results.json does not exist", "run the experiment", max_lines=1)
