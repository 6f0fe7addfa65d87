"""2-process runs under the faults of a cluster: SIGTERM, a killed, hung or failing process.

SIGTERM (to one process, as a stray signal, or to all, as scancel and TPU preemption do) makes
every process save the same step and exit 0. When a process dies, hangs or fails on an error of
its own, the other one stops within seconds with a line naming it, instead of waiting in a
collective. Each time, rerunning the same command resumes, and the run ends with the parameters
of an uninterrupted one.
"""

import os
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from spnet_jax import peer_watch

from .conftest import ROOT, main_command, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # local jax.distributed processes

NUM_STEPS = 32


class TwoProcesses:
  """The entry point as processes 0 and 1 joined on 127.0.0.1; stderr goes to log files."""

  def __init__(
    self, workdir: str, data_dir: str, log_dir, name: str, *flags: str, code: str | None = None
  ):
    """Starts both processes; `code`, if given, runs instead of `-m spnet_jax.main`."""
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    command = main_command(
      workdir,
      data_dir,
      "--config.train.batch_size=8",
      f"--config.train.num_steps={NUM_STEPS}",
      "--config.train.checkpoint_every_steps=4",
      "--config.eval.gamma_step=0.5",
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      *flags,
    )
    if code is not None:
      command[1:3] = ["-c", code]
    self.paths = [log_dir / f"{name}.{i}.log" for i in range(2)]
    self.processes = []
    for i, path in enumerate(self.paths):
      with open(path, "w") as log:
        self.processes.append(
          subprocess.Popen(
            [*command, f"--process_id={i}"],
            cwd=ROOT,
            env=subprocess_env(2),
            stdout=subprocess.DEVNULL,
            stderr=log,
          )
        )

  def __enter__(self) -> "TwoProcesses":
    return self

  def __exit__(self, *exc_info) -> None:
    for process in self.processes:
      if process.poll() is None:
        process.kill()
        process.wait()

  def log(self, i: int) -> str:
    return self.paths[i].read_text()

  def wait_for(self, i: int, pattern: str, timeout: float = 300) -> re.Match:
    """The first match of `pattern` in process i's log, once it appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      match = re.search(pattern, self.log(i))
      if match:
        return match
      if self.processes[i].poll() is not None:
        break
      time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in process {i}'s log:\n{self.log(i)[-3000:]}")

  def wait(self, timeout: float = 300) -> list[int]:
    return [process.wait(timeout=timeout) for process in self.processes]


def _params(workdir: str, step: int) -> dict:
  """The parameters of a checkpoint, restored onto this (test) process's first device."""
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
    checkpointer.metadata(path).item_metadata,
  )
  return checkpointer.restore(path, target)["params"]


def _assert_same_params(workdir: str, reference: str) -> None:
  ours = ocp.tree.to_flat_dict(_params(workdir, NUM_STEPS))
  theirs = ocp.tree.to_flat_dict(_params(reference, NUM_STEPS))
  assert ours.keys() == theirs.keys()
  for key in ours:
    np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]), err_msg=key)


@pytest.fixture(scope="module")
def reference(shapes_data_dir, tmp_path_factory) -> str:
  """The workdir of an uninterrupted 2-process run."""
  tmp = tmp_path_factory.mktemp("reference")
  workdir = str(tmp / "run")
  with TwoProcesses(workdir, shapes_data_dir, tmp, "reference") as run:
    assert run.wait() == [0, 0], run.log(0)[-3000:] + run.log(1)[-3000:]
  return workdir


def _saved_step(run: TwoProcesses, source: str) -> int:
  """The step both processes saved on SIGTERM (the same one), from their logs."""
  pattern = rf"{source}: saved step (\d+) and stopping"
  steps = {int(run.wait_for(i, pattern).group(1)) for i in range(2)}
  assert len(steps) == 1, steps
  return steps.pop()


def test_sigterm_to_one_or_all_processes_saves_one_step_and_a_rerun_resumes(
  shapes_data_dir, tmp_path, reference
):
  workdir = str(tmp_path / "run")
  # A signal to one process only: the other learns of it at the next all-gather of the flag.
  with TwoProcesses(workdir, shapes_data_dir, tmp_path, "one") as run:
    run.wait_for(0, f"step 6/{NUM_STEPS} ")
    run.processes[1].send_signal(signal.SIGTERM)
    assert run.wait() == [0, 0], run.log(0)[-3000:] + run.log(1)[-3000:]
  first = _saved_step(run, "SIGTERM to process 1 of 2")
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(first)))

  # What scancel and a TPU preemption do: SIGTERM to every process.
  with TwoProcesses(workdir, shapes_data_dir, tmp_path, "all") as run:
    run.wait_for(0, f"Restored checkpoint step {first} ")
    run.wait_for(0, f"step {first + 4}/{NUM_STEPS} ")
    for process in run.processes:
      process.send_signal(signal.SIGTERM)
    assert run.wait() == [0, 0], run.log(0)[-3000:] + run.log(1)[-3000:]
  # Both signals, or only the first, may have landed before the processes compared flags.
  second = _saved_step(run, r"SIGTERM to (?:all 2 processes|process [01] of 2)")
  assert second > first

  with TwoProcesses(workdir, shapes_data_dir, tmp_path, "rest") as run:
    assert run.wait() == [0, 0], run.log(0)[-3000:] + run.log(1)[-3000:]
  assert f"Restored checkpoint step {second} " in run.log(0)
  _assert_same_params(workdir, reference)


def _restored_step(run: TwoProcesses) -> int:
  return int(run.wait_for(0, r"Restored checkpoint step (\d+) ").group(1))


def _wait_for_checkpoint_after(workdir: str, step: int, timeout: float = 120) -> None:
  """Waits until a checkpoint newer than `step` is committed (saves are asynchronous)."""
  folder = os.path.join(workdir, "checkpoints")
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    names = os.listdir(folder) if os.path.isdir(folder) else []
    if any(name.isdigit() and int(name) > step for name in names):
      return
    time.sleep(0.05)
  raise AssertionError(f"No checkpoint after step {step} in {folder}: {names}")


def test_a_lost_process_is_named_within_seconds_and_a_rerun_resumes(
  shapes_data_dir, tmp_path, reference
):
  workdir = str(tmp_path / "run")
  # kill -9 of process 1. Process 0's collective with it fails (named after ERROR_CHECK_SECS
  # more without its heartbeat), or waits (named after the heartbeat timeout), by timing.
  with TwoProcesses(workdir, shapes_data_dir, tmp_path, "killed", "--heartbeat_timeout=15") as run:
    run.wait_for(0, f"step 6/{NUM_STEPS} ")
    _wait_for_checkpoint_after(workdir, 0)
    start = time.monotonic()
    run.processes[1].send_signal(signal.SIGKILL)
    code = run.processes[0].wait(timeout=120)
    elapsed = time.monotonic() - start
  assert code == peer_watch.LOST_PROCESS_EXIT_CODE, run.log(0)[-3000:]
  assert elapsed < 15 + 10, elapsed
  assert re.search(
    r"Lost process 1 of 2 \(no heartbeat for (5 s after this error|15 s: it hangs)", run.log(0)
  ), run.log(0)[-3000:]

  # A hung process (SIGSTOP): process 0 waits in a collective until the heartbeat timeout.
  with TwoProcesses(workdir, shapes_data_dir, tmp_path, "hung", "--heartbeat_timeout=10") as run:
    restored = _restored_step(run)
    run.wait_for(0, f"step {restored + 4}/{NUM_STEPS} ")
    _wait_for_checkpoint_after(workdir, restored)
    start = time.monotonic()
    run.processes[1].send_signal(signal.SIGSTOP)
    code = run.processes[0].wait(timeout=120)
    elapsed = time.monotonic() - start
  assert code == peer_watch.LOST_PROCESS_EXIT_CODE, run.log(0)[-3000:]
  # The timeout runs from the last heartbeat process 0 saw, up to POLL_SECS before the signal.
  assert 10 - 2 * peer_watch.POLL_SECS <= elapsed < 10 + 10, elapsed
  assert "Lost process 1 of 2 (no heartbeat for 10 s: it hangs, or its host is gone)" in run.log(0)

  # Process 0 killed: jax's coordination service goes with it, and jax ends process 1 at once.
  with TwoProcesses(workdir, shapes_data_dir, tmp_path, "coordinator") as run:
    restored = _restored_step(run)
    run.wait_for(0, f"step {restored + 4}/{NUM_STEPS} ")
    _wait_for_checkpoint_after(workdir, restored)
    start = time.monotonic()
    run.processes[0].send_signal(signal.SIGKILL)
    code = run.processes[1].wait(timeout=120)
    elapsed = time.monotonic() - start
  assert code != 0 and elapsed < 10, (code, elapsed)
  assert re.search(
    r"Lost process 0 \(the coordinator\) of 2|the leader task was preempted/died", run.log(1)
  ), run.log(1)[-3000:]

  with TwoProcesses(workdir, shapes_data_dir, tmp_path, "rest") as run:
    assert run.wait() == [0, 0], run.log(0)[-3000:] + run.log(1)[-3000:]
  assert _restored_step(run) >= restored
  _assert_same_params(workdir, reference)


# The entry point, with an error of its own in process 1 (a full disk, say) as training starts.
FAIL_IN_PROCESS_1 = """
import runpy, sys
from spnet_jax import experiment
if "--process_id=1" in sys.argv:
  def fail(config, workdir):
    raise OSError("No space left on device (injected into process 1)")
  experiment.train_and_evaluate = fail
sys.argv[0] = "spnet_jax.main"
runpy.run_module("spnet_jax.main", run_name="__main__")
"""


def test_an_error_in_one_process_stops_the_other_too(shapes_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  with TwoProcesses(workdir, shapes_data_dir, tmp_path, "error", code=FAIL_IN_PROCESS_1) as run:
    codes = run.wait(timeout=120)
  assert codes == [peer_watch.PEER_ERROR_EXIT_CODE] * 2, run.log(0)[-3000:] + run.log(1)[-3000:]
  assert "Process 1 of 2 stopped on an error; the others stop too." in run.log(1)
  assert "OSError: No space left on device (injected into process 1)" in run.log(1)
  assert "Process 1 of 2 stopped on an error (its log has it). Stopping process 0 too." in (
    run.log(0)
  )
