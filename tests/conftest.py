"""Shared fixtures: a small generated shapes dataset and a fast config for end-to-end tests."""

import os
import sys

import pytest

# Tests import configs/ as a package, like the entry point does from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

SHARED = os.path.join(ROOT, "..", "shared")

# Many tests (and the entry points they start as subprocesses, which inherit this) compile the
# same small programs: a persistent XLA cache shared by all of them halves the end-to-end tests.
# Set here, before anything imports jax, which reads these variables once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory) -> str:
  """A TFDS folder holding the 'tiny' shapes builder config (generated once per session)."""
  from configs import shapes_zlss
  from spnet_jax.data import datasets

  directory = str(tmp_path_factory.mktemp("tfds"))
  config = shapes_zlss.get_config()
  config.data.data_dir = directory
  config.data.builder_config = "tiny"
  datasets.get_builder(config)
  return directory


def tiny_config(data_dir: str, num_steps: int = 6, batch_size: int = 4):
  """configs/shapes_zlss.py shrunk to the tiny dataset and a small model."""
  from configs import shapes_zlss

  config = shapes_zlss.get_config()
  config.data.data_dir = data_dir
  config.data.builder_config = "tiny"
  config.data.auto_prepare = False
  config.model.width = 16
  config.model.dilations = (1, 2)
  config.train.num_steps = num_steps
  config.train.batch_size = batch_size
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = max(num_steps // 2, 1)
  config.optimizer.warmup_steps = 2
  config.eval.batch_size = 8
  config.eval.gamma_step = 0.25
  return config


@pytest.fixture
def fast_config(shapes_data_dir):
  """configs/shapes_zlss.py shrunk to run in seconds on the tiny dataset."""
  return tiny_config(shapes_data_dir)


def main_command(workdir: str, data_dir: str, *overrides: str) -> list[str]:
  """The entry point on the tiny shapes dataset with a small model; overrides come last (win)."""
  return [
    sys.executable,
    "-m",
    "spnet_jax.main",
    "--config",
    "configs/shapes_zlss.py",
    "--workdir",
    workdir,
    f"--config.data.data_dir={data_dir}",
    "--config.data.builder_config=tiny",
    "--config.model.width=8",
    "--config.model.dilations=(1,2)",
    "--config.train.log_every_steps=1",
    "--config.optimizer.warmup_steps=2",
    "--config.eval.batch_size=8",
    *overrides,
  ]


def subprocess_env(devices: int = 1) -> dict[str, str]:
  """Environment of an entry-point subprocess with `devices` fake CPU devices."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = ROOT
  return env
