"""Crashes lose nothing: kill -9 then rerun ends where an uninterrupted run ends; checkpoints
restore on other device counts; half-written checkpoints are never taken as the latest."""

import os
import re
import shutil
import signal
import subprocess

import numpy as np
import orbax.checkpoint as ocp
import pytest

from .conftest import ROOT, main_command, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # entry-point runs killed and resumed


def _command(workdir: str, data_dir: str, *extra: str) -> list[str]:
  return main_command(
    workdir,
    data_dir,
    "--config.train.batch_size=4",
    "--config.train.num_steps=12",
    "--config.train.checkpoint_every_steps=4",
    "--config.eval.gamma_step=0.5",
    *extra,
  )


def _run(command: list[str], devices: int = 1) -> subprocess.CompletedProcess:
  result = subprocess.run(
    command, cwd=ROOT, env=subprocess_env(devices), capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _params(workdir: str, step: int) -> dict:
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  return ocp.StandardCheckpointer().restore(path)["params"]


def _assert_same_tree(a, b):
  flat_a = ocp.tree.to_flat_dict(a)
  flat_b = ocp.tree.to_flat_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=key)


def test_kill_9_then_rerun_ends_like_an_uninterrupted_run_and_partial_saves_are_ignored(
  shapes_data_dir, tmp_path
):
  straight = str(tmp_path / "straight")
  _run(_command(straight, shapes_data_dir))

  crashed = str(tmp_path / "crashed")
  process = subprocess.Popen(
    _command(crashed, shapes_data_dir),
    cwd=ROOT,
    env=subprocess_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  for line in process.stderr:
    # By step 9 the save of step 4 has completed (a save waits for the one before it).
    if "step 9/12" in line:
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL
  rerun = _run(_command(crashed, shapes_data_dir))
  assert re.search(r"Restored checkpoint step (4|8) ", rerun.stderr)
  _assert_same_tree(_params(crashed, 12), _params(straight, 12))

  # What a save of step 12 cut off mid-way leaves: Orbax's temporary folder, never renamed to
  # '12'. It is not taken as the latest checkpoint: the rerun resumes from 8.
  checkpoints = os.path.join(crashed, "checkpoints")
  shutil.rmtree(os.path.join(checkpoints, "12"))
  partial = os.path.join(checkpoints, "12.orbax-checkpoint-tmp-1795000000000000")
  shutil.copytree(os.path.join(checkpoints, "8"), partial)
  os.remove(os.path.join(partial, "_CHECKPOINT_METADATA"))
  again = _run(_command(crashed, shapes_data_dir))
  assert "Restored checkpoint step 8 " in again.stderr
  _assert_same_tree(_params(crashed, 12), _params(straight, 12))


def test_checkpoint_from_4_devices_restores_on_2_and_1(shapes_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  _run(_command(workdir, shapes_data_dir), devices=4)
  reference = np.load(os.path.join(workdir, "confusions.npz"))["gzlss"]
  for devices in (2, 1):
    result = _run(_command(workdir, shapes_data_dir, "--config.mode=evaluate"), devices)
    assert f"Mesh {{'data': {devices}}}" in result.stderr
    assert "Restored checkpoint step 12" in result.stderr
    np.testing.assert_array_equal(
      np.load(os.path.join(workdir, "confusions.npz"))["gzlss"], reference
    )
