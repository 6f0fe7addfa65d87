"""Joining a multi-process run (spnet_jax/distributed.py) and stopping one together
(spnet_jax/peer_watch.py): the SLURM rule, and what each process does when another fails."""

import socket
import subprocess
import sys
import textwrap

import pytest
from jax._src.clusters import slurm_cluster

from spnet_jax import distributed, peer_watch

from .conftest import ROOT, subprocess_env

# What a batch shell of `sbatch --nodes=2 --ntasks-per-node=2` sees (Slurm's
# env_array_for_batch_job): the allocation's task count, no step.
BATCH_SHELL = {
  "SLURM_JOB_ID": "1234",
  "SLURM_JOBID": "1234",
  "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
  "SLURM_NODELIST": "gpu-node-[07-08]",
  "SLURM_NNODES": "2",
  "SLURM_NTASKS": "4",
  "SLURM_NPROCS": "4",
  "SLURM_TASKS_PER_NODE": "2(x2)",
  "SLURM_PROCID": "0",
  "SLURM_LOCALID": "0",
  "SLURM_NODEID": "0",
}
# What srun adds for each task of its step (env_array_for_step and the task's own ids).
SRUN_STEP = {
  **BATCH_SHELL,
  "SLURM_STEP_ID": "0",
  "SLURM_STEPID": "0",
  "SLURM_STEP_NODELIST": "gpu-node-[07-08]",
  "SLURM_STEP_NUM_NODES": "2",
  "SLURM_STEP_NUM_TASKS": "4",
  "SLURM_PROCID": "3",
  "SLURM_LOCALID": "1",
}


def test_slurm_auto_join_only_inside_an_srun_step_of_several_tasks():
  assert not distributed.in_slurm_step(BATCH_SHELL)
  assert not distributed.slurm_auto_join(BATCH_SHELL)
  assert distributed.in_slurm_step(SRUN_STEP)
  assert distributed.slurm_auto_join(SRUN_STEP)
  # `srun --ntasks=1` inside the allocation: a step, one process.
  assert not distributed.slurm_auto_join({**SRUN_STEP, "SLURM_NTASKS": "1"})
  assert not distributed.slurm_auto_join({})


@pytest.mark.parametrize(("environ", "in_step"), [(BATCH_SHELL, False), (SRUN_STEP, True)])
def test_the_step_rule_agrees_with_jax_slurm_detection(monkeypatch, environ, in_step):
  # jax.distributed.initialize() finds its peers under SLURM exactly where the rule auto-joins.
  for name in [*distributed.JAX_SLURM_VARIABLES, *distributed.STEP_ID_VARIABLES]:
    monkeypatch.delenv(name, raising=False)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  assert slurm_cluster.SlurmCluster.is_env_present() == in_step
  assert distributed.in_slurm_step(environ) == in_step


def _python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-c", textwrap.dedent(code)],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _env(port: int | None = None, **slurm: str) -> dict[str, str]:
  """An entry-point environment with only the given SLURM variables."""
  env = {k: v for k, v in subprocess_env().items() if not k.startswith("SLURM_")}
  if port is not None:
    env["JAX_COORDINATOR_PORT"] = str(port)
  return {**env, **slurm}


JOIN = """
  import jax, numpy as np
  from jax.experimental import multihost_utils
  from spnet_jax import distributed
  distributed.initialize(None, None, None, detect=False, heartbeat_timeout_secs=30)
  ids = [0]
  if jax.process_count() > 1:
    ids = multihost_utils.process_allgather(np.asarray(jax.process_index()))
  print("processes", jax.process_count(), "ids", list(map(int, np.ravel(ids))))
"""


def test_batch_shell_of_a_multi_task_allocation_runs_one_process():
  # Before the rule: jax.distributed.initialize() there stops with this error.
  bare = _python("import jax; jax.distributed.initialize()", _env(**BATCH_SHELL))
  _, stderr = bare.communicate(timeout=120)
  assert bare.returncode != 0 and "coordinator_address should be defined" in stderr

  process = _python(JOIN, _env(**BATCH_SHELL))
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  assert "processes 1 ids [0]" in stdout
  assert "SLURM_NTASKS=4 but this is not an srun step (no SLURM_STEP_ID): running as a single " in (
    stderr
  )
  assert "start the command with srun" in stderr


def test_distributed_flag_without_a_cluster_says_so():
  process = _python(
    """
    from spnet_jax import distributed
    distributed.initialize(None, None, None, detect=True, heartbeat_timeout_secs=30)
    """,
    _env(),
  )
  _, stderr = process.communicate(timeout=120)
  assert process.returncode != 0
  assert "--distributed: no cluster found (a TPU pod slice, a SLURM srun step or Open MPI)" in (
    stderr
  )


@pytest.mark.multiprocess
def test_tasks_of_an_srun_step_join_without_flags():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  # One node, two tasks; jax takes the coordinator's port from JAX_COORDINATOR_PORT.
  step = {**SRUN_STEP, "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "localhost"}
  processes = [
    _python(JOIN, _env(**{**step, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}, port=port))
    for i in range(2)
  ]
  for process in processes:
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "processes 2 ids [0, 1]" in stdout


# ---------------------------------------------------------------------------------------------
# peer_watch's decisions, against an in-memory key-value store.


class FakeClient:
  """The two calls of jax's coordination-service client that peer_watch makes."""

  def __init__(self, posts: dict[int, str], moving: tuple[int, ...] = ()):
    self.store = {f"{peer_watch.PREFIX}{p}": v for p, v in posts.items()}
    self.moving = moving  # Processes whose counter moves on each read: alive.
    self.down = False

  def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
    del allow_overwrite
    if self.down:
      raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
    self.store[key] = value

  def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
    if self.down:
      raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
    for p in self.moving:
      key = f"{prefix}{p}"
      self.store[key] = str(int(self.store.get(key, "0")) + 1)
    return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


class Exited(Exception):
  pass


@pytest.fixture
def exits(monkeypatch):
  """os._exit raises Exited(code) instead; the logged lines are collected."""
  lines = []

  def fake_exit(code):
    raise Exited(code)

  monkeypatch.setattr(peer_watch.os, "_exit", fake_exit)
  monkeypatch.setattr(peer_watch.logging, "error", lambda msg, *args: lines.append(msg % args))
  monkeypatch.setattr(peer_watch, "ERROR_CHECK_SECS", 0.01)
  monkeypatch.setattr(peer_watch, "POLL_SECS", 0.01)
  return lines


def _error() -> Exception:
  try:
    raise RuntimeError("UNKNOWN: Gloo AllReduce failed: Connection closed by peer [10.0.0.2]:4711")
  except RuntimeError as error:
    return error


def test_error_after_a_process_died_names_it_and_exits_75(exits):
  client = FakeClient({0: "17", 1: "9", 2: "17"}, moving=(0, 2))
  watch = peer_watch.Watch(client, index=0, count=3, stall_secs=100)
  with pytest.raises(Exited) as exited:
    watch.stop_after_error(_error())
  assert exited.value.args == (peer_watch.LOST_PROCESS_EXIT_CODE,)
  assert exits[0].startswith("Lost process 1 of 3 (no heartbeat for 0 s after this error)")
  assert "Stopping process 0 too; rerun the same command on every host" in exits[0]
  assert exits[0].endswith(
    "The error here: RuntimeError: UNKNOWN: Gloo AllReduce failed: "
    "Connection closed by peer [10.0.0.2]:4711"
  )


def test_own_error_with_every_process_alive_is_posted_and_exits_1(exits):
  client = FakeClient({0: "3", 1: "3"}, moving=(1,))
  watch = peer_watch.Watch(client, index=0, count=2, stall_secs=100)
  with pytest.raises(Exited) as exited:
    watch.stop_after_error(_error())
  assert exited.value.args == (peer_watch.PEER_ERROR_EXIT_CODE,)
  assert client.store[f"{peer_watch.PREFIX}0"] == peer_watch.ERROR
  assert exits[0].startswith("Process 0 of 2 stopped on an error; the others stop too.\nTraceback")


def test_watcher_stops_on_a_peer_error_or_a_hung_peer(exits):
  with pytest.raises(Exited) as exited:
    peer_watch.Watch(FakeClient({0: "1", 1: "error"}), 0, 2, stall_secs=100)._run()
  assert exited.value.args == (peer_watch.PEER_ERROR_EXIT_CODE,)
  assert exits[-1] == "Process 1 of 2 stopped on an error (its log has it). Stopping process 0 too."

  with pytest.raises(Exited) as exited:
    peer_watch.Watch(FakeClient({0: "1", 1: "5", 2: "done"}), 0, 3, stall_secs=0.05)._run()
  assert exited.value.args == (peer_watch.LOST_PROCESS_EXIT_CODE,)
  assert exits[-1].startswith("Lost process 1 of 3 (no heartbeat for 0 s: it hangs, or its host")


def test_unreachable_coordinator_is_named(exits):
  client = FakeClient({0: "1", 1: "1"})
  client.down = True
  with pytest.raises(Exited) as exited:
    peer_watch.Watch(client, 1, 2, stall_secs=100)._run()
  assert exited.value.args == (peer_watch.LOST_PROCESS_EXIT_CODE,)
  assert exits[-1].startswith(
    "Lost process 0 (the coordinator) of 2 (the coordination service it runs does not answer"
  )


def test_normal_exit_posts_done_and_no_error_check_in_one_process():
  client = FakeClient({})
  peer_watch.Watch(client, 1, 2, stall_secs=100).stop()
  assert client.store == {f"{peer_watch.PREFIX}1": peer_watch.DONE}
  peer_watch.stop_after_error(_error())  # No watch: a single-process run raises as usual.
