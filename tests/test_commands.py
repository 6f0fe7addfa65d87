"""Every command of the README: `--help` works, and the installed scripts point at real code."""

import importlib
import importlib.util
import os
import subprocess
import sys
import tomllib

import pytest

from .conftest import ROOT

with open(f"{ROOT}/pyproject.toml", "rb") as file:
  SCRIPTS = tomllib.load(file)["project"]["scripts"]


def test_every_command_module_is_an_installed_script():
  modules = {target.split(":")[0] for target in SCRIPTS.values()}
  assert len(modules) == len(SCRIPTS) == 12
  for name, target in SCRIPTS.items():
    assert name.startswith("spnet-")
    module, function = target.split(":")
    assert function == "run" and module.startswith("spnet_jax.")
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{name}: no module {module}"
    assert "def run() -> None:" in open(spec.origin).read(), f"{name}: {module} has no run()"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_exits_0_and_shows_the_usage(script):
  module = SCRIPTS[script].split(":")[0]
  result = subprocess.run(
    [sys.executable, "-m", module, "--help"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  docstring = importlib.util.find_spec(module).loader.get_source(module).split('"""')[1]
  assert docstring.splitlines()[0] in result.stdout
  if module == "spnet_jax.main":
    assert "--config.<field>" in result.stdout  # Config overrides are explained.


def test_a_config_file_given_by_path_loads_from_any_folder(tmp_path):
  # configs/voc_zlss.py imports its siblings (configs.base): fine outside the repository too,
  # with only the package importable (as after `pip install .`).
  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "spnet_jax").symlink_to(os.path.join(ROOT, "spnet_jax"))
  env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "TFDS_DATA_DIR": str(tmp_path)}
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "spnet_jax.main",
      f"--config={ROOT}/configs/voc_zlss.py",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert "No module named 'configs'" not in result.stderr
  assert "is not prepared" in result.stderr  # It got as far as the dataset.
