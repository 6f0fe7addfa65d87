"""A workdir holds one run: reruns that change its training stop untouched, a lock keeps a second
run out, checkpoints are verified on restore (a damaged one is set aside on a training rerun),
and a failed save stops training with one line."""

import glob
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spnet_jax import experiment, workdir_lock
from spnet_jax import workdir as workdir_lib
from spnet_jax.errors import UserError
from spnet_jax.train import checkpoint
from spnet_jax.train import step as step_lib

from .conftest import ROOT, main_command, subprocess_env, tiny_config


def _snapshot(folder: str) -> dict[str, str]:
  """Every file under `folder` with the hash of its bytes."""
  files = {}
  for path in sorted(glob.glob(os.path.join(folder, "**"), recursive=True)):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        files[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_data_dir) -> str:
  """A finished tiny shapes run (checkpoints at steps 3 and 6); tests alter copies of it."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  experiment.train_and_evaluate(tiny_config(shapes_data_dir), workdir)
  return workdir


@pytest.fixture
def run_copy(trained, tmp_path) -> str:
  import shutil

  copy = str(tmp_path / "run")
  shutil.copytree(trained, copy)
  return copy


def test_a_rerun_that_changes_training_fields_stops_before_touching_a_file(
  shapes_data_dir, run_copy
):
  before = _snapshot(run_copy)
  config = tiny_config(shapes_data_dir)
  config.data.split = "block"
  config.seed = 1
  config.model.width = 32
  for mode in ("train_and_evaluate", "evaluate"):
    config.mode = mode
    with pytest.raises(UserError) as error:
      experiment.train_and_evaluate(config, run_copy)
    message = str(error.value)
    assert f"{run_copy} holds another run" in message
    assert '  data.split: "default" -> "block"' in message
    assert "  seed: 0 -> 1" in message
    assert "  model.width: 16 -> 32" in message
    assert "  mode:" not in message
  assert _snapshot(run_copy) == before


def test_evaluation_overrides_are_allowed_and_recorded_in_results_never_in_the_config(
  shapes_data_dir, run_copy
):
  recorded = open(os.path.join(run_copy, workdir_lib.CONFIG_FILE)).read()
  config = tiny_config(shapes_data_dir)
  config.mode = "evaluate"
  config.eval.gamma_step = 0.5
  config.train.log_every_steps = 5
  results = experiment.train_and_evaluate(config, run_copy)
  expected = {"mode": "evaluate", "eval.gamma_step": 0.5, "train.log_every_steps": 5}
  assert results["config_overrides"] == expected
  on_disk = json.load(open(os.path.join(run_copy, workdir_lib.RESULTS_FILE)))
  assert on_disk["config_overrides"] == expected
  assert open(os.path.join(run_copy, workdir_lib.CONFIG_FILE)).read() == recorded
  assert not os.path.exists(os.path.join(run_copy, workdir_lock.LOCK_FILE))  # Released.


def test_evaluating_a_workdir_without_a_run_writes_nothing(shapes_data_dir, tmp_path):
  config = tiny_config(shapes_data_dir)
  config.mode = "evaluate"
  workdir = str(tmp_path / "empty")
  with pytest.raises(UserError, match="holds no run"):
    experiment.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)


def test_a_second_run_on_a_workdir_in_use_stops_naming_the_holder(shapes_data_dir, run_copy):
  before = _snapshot(run_copy)
  with workdir_lock.WorkdirLock(run_copy):
    with pytest.raises(UserError) as error:
      experiment.train_and_evaluate(tiny_config(shapes_data_dir), run_copy)
  message = str(error.value)
  assert f"is in use by process {os.getpid()} on host {socket.gethostname()}" in message
  assert _snapshot(run_copy) == before


def _write_holder(folder: str, **fields) -> None:
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
  holder.update(fields)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, workdir_lock.LOCK_FILE), "w") as f:
    json.dump(holder, f)


def _dead_pid() -> int:
  process = subprocess.Popen(["true"])
  process.wait()
  return process.pid


def test_the_lock_takes_over_a_dead_or_silent_holder_and_refuses_a_live_one(tmp_path):
  folder = str(tmp_path / "w")
  # A process of this host that no longer exists: taken over at once.
  _write_holder(folder, pid=_dead_pid())
  with workdir_lock.WorkdirLock(folder):
    pass
  # Another host, recent heartbeat: refused. Old heartbeat: taken over.
  _write_holder(folder, host="elsewhere", pid=1, heartbeat=time.time() - 10)
  with pytest.raises(UserError, match="in use by process 1 on host elsewhere"):
    workdir_lock.WorkdirLock(folder, stale_secs=60).acquire()
  _write_holder(folder, host="elsewhere", pid=1, heartbeat=time.time() - 61)
  with workdir_lock.WorkdirLock(folder, stale_secs=60):
    holder = json.load(open(os.path.join(folder, workdir_lock.LOCK_FILE)))
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
  assert not os.path.exists(os.path.join(folder, workdir_lock.LOCK_FILE))


def test_the_lock_heartbeats_and_exactly_one_of_two_simultaneous_runs_gets_it(tmp_path):
  folder = str(tmp_path / "w")
  lock = workdir_lock.WorkdirLock(folder, heartbeat_secs=0.05)
  with lock:
    first = json.load(open(os.path.join(folder, workdir_lock.LOCK_FILE)))["heartbeat"]
    time.sleep(0.5)
    assert json.load(open(os.path.join(folder, workdir_lock.LOCK_FILE)))["heartbeat"] > first
    assert not lock.lost
  for _ in range(5):
    start = threading.Barrier(2)
    outcomes = []

    def contend(out=outcomes, barrier=start):
      contender = workdir_lock.WorkdirLock(folder)
      barrier.wait()
      try:
        contender.acquire()
        out.append(contender)
      except UserError:
        out.append(None)

    threads = [threading.Thread(target=contend) for _ in range(2)]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    winners = [o for o in outcomes if o is not None]
    assert len(winners) == 1, outcomes
    winners[0].release()


def _tiny_state(value: float) -> step_lib.TrainState:
  params = {"w": jnp.full((3, 4), value), "b": jnp.arange(4.0)}
  return step_lib.TrainState(
    step=jnp.asarray(0, jnp.int32), params=params, frozen={}, opt_state={"m": jnp.zeros(4)}
  )


def _saved_states(workdir: str, values: dict[int, float]) -> checkpoint.Manager:
  manager = checkpoint.create_manager(workdir, max_to_keep=5)
  for step, value in values.items():
    checkpoint.save(manager, step, _tiny_state(value).replace(step=jnp.asarray(step)))
  manager.wait_until_finished()
  return manager


def _abstract():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return checkpoint.abstract_with_sharding(_tiny_state(0.0), sharding)


def test_restore_checks_checksums_and_finiteness_and_falls_back_only_when_asked(tmp_path):
  workdir = str(tmp_path / "run")
  manager = _saved_states(workdir, {1: 1.0, 2: 2.0, 3: float("nan")})
  # Step 3 holds NaN (its checksums match): refused.
  with pytest.raises(checkpoint.CheckpointError, match=r"step 3 in .* non-finite parameters"):
    checkpoint.restore(manager, _abstract())
  # Step 2 damaged after saving (its checksum no longer matches): named by step and array.
  sums_path = os.path.join(workdir, checkpoint.CHECKSUMS_DIR, "2.json")
  sums = json.load(open(sums_path))
  sums[".params['w']"]["crc32"] = "00000000"
  json.dump(sums, open(sums_path, "w"))
  with pytest.raises(checkpoint.CheckpointError, match=r"step 2 in .* is damaged.*\['w'\]"):
    checkpoint.restore(manager, _abstract(), step=2)
  with pytest.raises(checkpoint.CheckpointError, match=r"No checkpoint step 7 .*steps: 1, 2, 3"):
    checkpoint.restore(manager, _abstract(), step=7)
  # A training rerun: 3 and 2 are set aside, 1 is restored.
  state = checkpoint.restore(manager, _abstract(), fallback=True)
  assert int(state.step) == 1
  np.testing.assert_array_equal(np.asarray(state.params["w"]), np.ones((3, 4)))
  assert sorted(os.listdir(os.path.join(workdir, checkpoint.UNUSABLE_DIR))) == ["2", "3"]
  assert manager.all_steps() == [1]
  manager.close()


def test_a_rerun_with_every_checkpoint_unusable_stops_instead_of_starting_over(tmp_path):
  manager = _saved_states(str(tmp_path / "run"), {1: float("inf")})
  with pytest.raises(checkpoint.CheckpointError, match=r"No usable checkpoint left .*\[1\]"):
    checkpoint.restore(manager, _abstract(), fallback=True)
  assert checkpoint.restore(manager, _abstract(), fallback=True) is None  # The rerun starts over.
  manager.close()


def _largest_array_file(workdir: str, step: int) -> str:
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated"])
def test_a_damaged_latest_checkpoint_stops_evaluation_and_a_training_rerun_falls_back(
  shapes_data_dir, run_copy, damage
):
  path = _largest_array_file(run_copy, 6)
  data = bytearray(open(path, "rb").read())
  if damage == "flipped bytes":  # Same size: Orbax alone restores it without complaint.
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
  else:
    data = data[: len(data) // 2]
  open(path, "wb").write(bytes(data))
  results_before = _snapshot(run_copy)["results.json"]

  config = tiny_config(shapes_data_dir)
  config.mode = "evaluate"
  expected = "is damaged" if damage == "flipped bytes" else "cannot be read"
  with pytest.raises(checkpoint.CheckpointError, match=rf"step 6 in {run_copy}.*{expected}"):
    experiment.train_and_evaluate(config, run_copy)
  assert _snapshot(run_copy)["results.json"] == results_before

  results = experiment.train_and_evaluate(tiny_config(shapes_data_dir), run_copy)
  assert results["step"] == 6  # Trained again from step 3.
  assert os.listdir(os.path.join(run_copy, checkpoint.UNUSABLE_DIR)) == ["6"]
  assert sorted(os.listdir(os.path.join(run_copy, "checkpoints"))) == ["3", "6"]


@pytest.mark.slow
def test_a_failed_save_stops_training_with_one_line_naming_the_last_good_step(
  shapes_data_dir, tmp_path
):
  workdir = str(tmp_path / "run")
  command = main_command(
    workdir,
    shapes_data_dir,
    "--config.train.batch_size=4",
    "--config.train.num_steps=200",
    "--config.train.checkpoint_every_steps=4",
  )
  # First run: SIGTERM after a few steps saves a checkpoint and stops.
  process = subprocess.Popen(
    command, cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True
  )
  for line in process.stderr:
    if " step 6/200 " in line:
      process.send_signal(signal.SIGTERM)
      break
  process.stderr.read()
  assert process.wait(timeout=300) == 0
  saved = checkpoint.create_manager(workdir, 2).latest_step()
  assert saved is not None

  # Files over 80 KiB fail with EFBIG (SIGXFSZ ignored), as writes to a full disk fail.
  limited = ["bash", "-c", "trap '' XFSZ; ulimit -f 80; exec \"$@\"", "limited", *command]
  result = subprocess.run(
    limited, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert result.returncode != 0
  next_save = (saved // 4 + 1) * 4
  expected = (
    rf"Saving checkpoint step {next_save} to {workdir}/checkpoints failed: OSError: \[Errno 27\] "
    rf"File too large\. Training stopped at step (\d+); the last good checkpoint is step "
    rf"{saved}\."
  )
  match = re.search(expected, result.stderr)
  assert match, result.stderr[-3000:]
  # Stopped by the next save at the latest (which waits for the failed one).
  stopped = int(match.group(1))
  assert stopped <= next_save + 4
  assert max(int(s) for s in re.findall(r" step (\d+)/200 ", result.stderr)) <= stopped
