"""Makes the processes of a multi-process run stop together, naming the one that failed.

Every process posts a heartbeat counter in jax's coordination service (its key-value store) each
POLL_SECS, and reads the others'. A process stops, with one line saying which process and why,
when
  - a collective fails in it ("connection closed by peer", which does not say which peer) and a
    counter has not moved for ERROR_CHECK_SECS: that process was killed or crashed (exit 75);
  - a counter has not moved for the heartbeat timeout: that process hangs, or its host is gone
    (exit 75); jax's own heartbeats, which run outside Python, would miss a hung interpreter;
  - another process posted "error": it failed on its own error (exit 1);
  - the coordination service, in process 0, does not answer (exit 75).
A process that fails on its own error posts "error", logs it and exits 1. None of them waits at
jax's shutdown barrier, which would hold them until jax's heartbeat timeout.
"""

import atexit
import os
import sys
import threading
import time
import traceback
from typing import NoReturn

import jax
from absl import logging

POLL_SECS = 1.0
# After an error: long enough for a busy but healthy process to post a few heartbeats.
ERROR_CHECK_SECS = 5.0
# EX_TEMPFAIL: nothing is wrong with this process; rerunning resumes from the last checkpoint.
LOST_PROCESS_EXIT_CODE = 75
PEER_ERROR_EXIT_CODE = 1
PREFIX = "spnet_jax/heartbeat/"
ERROR, DONE = "error", "done"

_watch = None


def start(stall_secs: float) -> None:
  """Starts the heartbeats of a multi-process run (after jax.distributed.initialize).

  Args:
    stall_secs: a process whose heartbeat does not move for this long counts as lost.
  """
  global _watch
  if jax.process_count() == 1 or _watch is not None:
    return
  # The client jax.experimental.multihost_utils uses too; jax has no public handle on it.
  from jax._src import distributed as jax_distributed

  client = jax_distributed.global_state.client
  _watch = Watch(client, jax.process_index(), jax.process_count(), stall_secs)
  logging.info(
    "Process %d of %d: if another process dies or hangs, this one stops naming it ('Lost "
    "process K', exit %d) within %.0f s, or %.0f s when a collective with it fails; rerunning "
    "resumes. If process 0 dies, jax ends the others at once ('the leader task ... died').",
    _watch.index,
    _watch.count,
    LOST_PROCESS_EXIT_CODE,
    stall_secs,
    ERROR_CHECK_SECS,
  )
  # Registered after jax's own exit handler, so it runs first: the heartbeats end (as "done")
  # before jax's shutdown barrier, after which process 0's service is gone.
  atexit.register(_watch.stop)
  _watch.thread.start()


def stop_after_error(error: BaseException) -> None:
  """Ends this process of a multi-process run after `error`; returns in a single-process run."""
  if _watch is not None:
    _watch.stop_after_error(error)


class Watch:
  """The heartbeat thread of one process, and what it does when a process fails.

  Args:
    client: jax's coordination service client (key_value_set, key_value_dir_get).
    index: this process.
    count: the number of processes.
    stall_secs: a process whose heartbeat does not move for this long counts as lost.
  """

  def __init__(self, client, index: int, count: int, stall_secs: float):
    self.client, self.index, self.count = client, index, count
    self.stall_secs = stall_secs
    self.thread = threading.Thread(target=self._run, name="peer_watch", daemon=True)
    self._stopping = threading.Event()
    self._exiting = threading.Lock()

  def stop(self) -> None:
    """Ends the heartbeats as "done" (the process exits normally)."""
    self._stopping.set()
    if self.thread.is_alive():
      self.thread.join(2 * POLL_SECS)
    self._post(DONE)

  def _post(self, value: str) -> None:
    try:
      self.client.key_value_set(f"{PREFIX}{self.index}", value, allow_overwrite=True)
    except Exception:  # The service is gone: nobody is left to read it.
      pass

  def read(self) -> dict[int, str]:
    """Every process's last post: a counter, ERROR or DONE."""
    pairs = self.client.key_value_dir_get(PREFIX)
    return {int(key.rsplit("/", 1)[1]): value for key, value in pairs}

  def _run(self) -> None:
    beat, seen, since = 0, {}, {}
    while not self._stopping.wait(POLL_SECS):
      beat += 1
      try:
        self.client.key_value_set(f"{PREFIX}{self.index}", str(beat), allow_overwrite=True)
        states = self.read()
      except Exception as error:
        if not self._stopping.is_set():
          self._coordinator_lost(error)
        return
      now = time.monotonic()
      for process in range(self.count):
        state = states.get(process)
        if process == self.index or state == DONE:
          continue
        if state == ERROR:
          self._exit(
            PEER_ERROR_EXIT_CODE,
            "Process %d of %d stopped on an error (its log has it). Stopping process %d too.",
            process,
            self.count,
            self.index,
          )
        if process not in since or state != seen[process]:
          seen[process], since[process] = state, now
        elif now - since[process] > self.stall_secs:
          why = f"no heartbeat for {self.stall_secs:.0f} s: it hangs, or its host is gone"
          self._lost([process], why)

  def stop_after_error(self, error: BaseException) -> NoReturn:
    """Exits naming the processes that stopped posting heartbeats, else exits on `error`."""
    seen_as = f"{type(error).__name__}: {_first_line(error)}"
    try:
      before = self.read()
      time.sleep(ERROR_CHECK_SECS)
      after = self.read()
    except Exception as rpc_error:
      self._coordinator_lost(rpc_error, seen_as)
    stalled = [
      p
      for p in range(self.count)
      if p != self.index and after.get(p) == before.get(p) and after.get(p) not in (ERROR, DONE)
    ]
    if stalled:
      why = f"no heartbeat for {ERROR_CHECK_SECS:.0f} s after this error"
      self._lost(stalled, why, seen_as)
    self._post(ERROR)
    self._exit(
      PEER_ERROR_EXIT_CODE,
      "Process %d of %d stopped on an error; the others stop too.\n%s",
      self.index,
      self.count,
      "".join(traceback.format_exception(error)).rstrip(),
    )

  def _coordinator_lost(self, rpc_error: BaseException, seen_as: str | None = None) -> NoReturn:
    why = f"the coordination service it runs does not answer: {_first_line(rpc_error)}"
    self._lost([0], why, seen_as)

  def _lost(self, processes: list[int], why: str, seen_as: str | None = None) -> NoReturn:
    names = ", ".join(f"{p} (the coordinator)" if p == 0 else str(p) for p in processes)
    self._exit(
      LOST_PROCESS_EXIT_CODE,
      "Lost process %s of %d (%s); its own log may say why. Stopping process %d too; rerun the "
      "same command on every host to resume from the last checkpoint.%s",
      names,
      self.count,
      why,
      self.index,
      f" The error here: {seen_as}" if seen_as else "",
    )

  def _exit(self, code: int, message: str, *args) -> NoReturn:
    """Logs and ends the process now; a second caller (the other thread) blocks until then."""
    with self._exiting:
      logging.error(message, *args)
      logging.flush()
      sys.stderr.flush()
      os._exit(code)


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [""])[0][:300]
