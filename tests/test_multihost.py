"""2 processes x 2 CPU devices train and evaluate exactly like 1 process x 4 devices.

The processes join through jax.distributed on 127.0.0.1 (gloo CPU collectives), as the hosts of
a TPU pod or a GPU cluster would.
"""

import os
import re
import socket
import subprocess

import numpy as np
import pytest

from .conftest import ROOT, main_command, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # local jax.distributed processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(workdir: str, data_dir: str) -> list[str]:
  return main_command(
    workdir,
    data_dir,
    "--config.train.batch_size=8",
    "--config.train.num_steps=6",
    "--config.train.checkpoint_every_steps=3",
    "--config.eval.gamma_step=0.25",
  )


def _losses(log: str) -> np.ndarray:
  return np.array([float(x) for x in re.findall(r"step \d+/6  loss ([0-9.]+)", log)])


def test_two_processes_match_one_process(shapes_data_dir, tmp_path):
  single = str(tmp_path / "single")
  result = subprocess.run(
    _command(single, shapes_data_dir),
    cwd=ROOT,
    env=subprocess_env(4),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  single_losses = _losses(result.stderr)

  multi = str(tmp_path / "multi")
  port = _free_port()
  processes = [
    subprocess.Popen(
      [
        *_command(multi, shapes_data_dir),
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={index}",
      ],
      cwd=ROOT,
      env=subprocess_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for index in range(2)
  ]
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (_, stderr) in zip(processes, outputs, strict=True):
    assert process.returncode == 0, stderr[-3000:]
  multi_log = outputs[0][1]
  assert "Mesh {'data': 4} over 4 devices (2 processes)" in multi_log
  assert "global batch 8 (8 rows with any padding: 4 per process, 2 per device)" in multi_log

  assert len(single_losses) == 6
  np.testing.assert_allclose(_losses(multi_log), single_losses, rtol=1e-5)
  # Only process 0 writes results; both runs score every test image exactly once.
  assert os.path.exists(os.path.join(multi, "results.json"))
  single_conf = np.load(os.path.join(single, "confusions.npz"))
  multi_conf = np.load(os.path.join(multi, "confusions.npz"))
  for key in ("zlss", "gzlss"):
    np.testing.assert_array_equal(multi_conf[key], single_conf[key])
  # Shapes labels have no ignore pixels: every pixel of the 24 test images is counted once.
  assert single_conf["gzlss"][0].sum() == 24 * 64 * 64
