"""A lock on a workdir, local or in a bucket, so that two runs never write into one workdir.

The lock is the file `lock.json` in the workdir, created and refreshed with conditional writes
(TensorStore's key-value store: a compare-and-swap on the file's generation, which a bucket
gives through ifGenerationMatch and the local driver through its own lock files), so of two runs
starting together exactly one gets it. The holder rewrites it every HEARTBEAT_SECS; a lock
whose holder is gone is taken over: at once when the holder was a process of this host that no
longer exists, and otherwise once its heartbeat is STALE_SECS old (a killed run on another
host, a preempted slice).
"""

import json
import os
import socket
import sys
import threading
import time
import uuid

import tensorstore as ts
from absl import logging

from spnet_jax import paths
from spnet_jax.errors import UserError

LOCK_FILE = "lock.json"
HEARTBEAT_SECS = 30.0
STALE_SECS = 120.0  # Four missed heartbeats.
_MISSING = "missing"


def _kvstore(workdir: str) -> ts.KvStore:
  """The workdir as a TensorStore key-value store (gs:// or a local folder)."""
  if paths.is_uri(workdir):
    url = workdir.rstrip("/") + "/"
  else:
    folder = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(folder, exist_ok=True)
    url = f"file://{folder}/"
  return ts.KvStore.open(url).result()


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: it exists.
    return True
  return True


def holder_is_gone(holder: dict, now: float, stale_secs: float) -> str:
  """Why the lock's holder counts as gone ('' if it may still be running)."""
  age = now - float(holder.get("heartbeat", 0.0))
  if holder.get("host") == socket.gethostname() and not _process_alive(int(holder.get("pid", 0))):
    return f"its process {holder.get('pid')} on this host no longer exists"
  if age > stale_secs:
    return f"its last heartbeat is {age:.0f} s old"
  return ""


def describe(holder: dict) -> str:
  """'process 123 on host h (started ..., last heartbeat 12 s ago: python -m ...)'."""
  age = time.time() - float(holder.get("heartbeat", 0.0))
  return (
    f"process {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')}, "
    f"last heartbeat {age:.0f} s ago: {holder.get('command', '?')})"
  )


class WorkdirLock:
  """Holds `workdir`/lock.json from acquire() to release(), refreshing it in a thread."""

  def __init__(
    self, workdir: str, heartbeat_secs: float = HEARTBEAT_SECS, stale_secs: float = STALE_SECS
  ):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.heartbeat_secs, self.stale_secs = heartbeat_secs, stale_secs
    self.lost = False  # Set when another run took the lock over (we looked dead to it).
    self._store = None
    self._generation = None
    self._stop = threading.Event()
    self._thread = None
    self._record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "run": uuid.uuid4().hex,
      "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
      "command": " ".join([os.path.basename(sys.executable), *sys.argv])[:300],
    }

  def _encode(self) -> bytes:
    return json.dumps({**self._record, "heartbeat": time.time()}, indent=2).encode()

  def acquire(self) -> None:
    """Takes the lock, or raises UserError naming the run that holds it."""
    self._store = _kvstore(self.workdir)
    current = self._store.read(LOCK_FILE).result()
    if current.state != _MISSING:
      try:
        holder = json.loads(current.value)
      except ValueError:
        holder = {}  # Unreadable (cut short): as good as gone.
      gone = holder_is_gone(holder, time.time(), self.stale_secs) if holder else "unreadable"
      if not gone:
        raise UserError(
          f"{self.workdir} is in use by {describe(holder)}. Wait for that run to end or use "
          f"another --workdir; if it was killed, rerun after its heartbeat is "
          f"{self.stale_secs:.0f} s old (or delete {self.path})."
        )
      logging.warning("Taking over the stale lock %s: %s.", self.path, gone)
    written = self._store.write(
      LOCK_FILE, self._encode(), if_equal=current.stamp.generation
    ).result()
    if not written.generation:  # Another run wrote the lock between our read and write.
      raise UserError(
        f"{self.workdir} was claimed by another run starting at the same time "
        f"(see {self.path}); use another --workdir."
      )
    self._generation = written.generation
    self._thread = threading.Thread(target=self._heartbeat, name="workdir-lock", daemon=True)
    self._thread.start()

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_secs):
      try:
        written = self._store.write(LOCK_FILE, self._encode(), if_equal=self._generation).result()
      except Exception as error:  # A network hiccup: the next heartbeat retries.
        logging.warning("Refreshing %s failed: %s", self.path, error)
        continue
      if not written.generation:
        self.lost = True
        logging.error(
          "%s was taken over by another run (this one looked stale to it); stop this run.",
          self.path,
        )
        return
      self._generation = written.generation

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._store is not None and self._generation and not self.lost:
      try:
        self._store.write(LOCK_FILE, None, if_equal=self._generation).result()
      except Exception as error:  # The next run takes the stale lock over.
        logging.warning("Could not delete %s: %s", self.path, error)
    self._generation = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
