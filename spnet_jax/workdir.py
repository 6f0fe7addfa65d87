"""A run's folder: its config.json, results.json and metric writer.

The run plumbing that segmentation runs (experiment.py) and zero-shot classification runs
(zsl/experiment.py) share. A workdir may be local or in a bucket (gs://): see paths.py.
"""

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from spnet_jax import paths, workdir_lock
from spnet_jax.errors import UserError

CONFIG_FILE = "config.json"  # The run's config: what predict and figures rebuild the run from.
RESULTS_FILE = "results.json"
# How often, at most, TensorBoard events of a bucket workdir are copied there during a run (and
# on every flush and close): each copy uploads the whole event file again.
EVENTS_COPY_SECS = 60.0


def json_safe(value):
  """For strict JSON: NaN (an absent class) becomes null, numpy scalars plain numbers."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [json_safe(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and np.isnan(value):
    return None
  return value


def write_json(path: str, value) -> None:
  """Writes `value` (json_safe) to `path`, indented."""
  paths.write_json(path, json_safe(value))


# Config fields a rerun on the same workdir may change, with their sub-fields: where the data
# lives, how often to log and save, how dilated convs are computed (same results), and how the
# run is evaluated. Every other field defines the trained model: the workdir keeps its value.
RERUN_MAY_CHANGE = (
  "mode",
  "eval",
  "data.eval",
  "data.data_dir",
  "data.manual_dir",
  "data.auto_prepare",
  "data.cache",
  "train.log_every_steps",
  "train.log_every_secs",
  "train.checkpoint_every_steps",
  "train.max_checkpoints",
  "model.atrous_conv",
  "model.conv_kernel_grad",
)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config to `workdir`/config.json (process 0 only)."""
  if jax.process_index() == 0:
    paths.write_text(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))


def flat_fields(config: ml_collections.ConfigDict | dict) -> dict:
  """{'train.num_steps': 2000, ...}: every leaf field, with its value as JSON has it."""
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json_best_effort())
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict) and value:
      flat.update({f"{key}.{k}": v for k, v in flat_fields(value).items()})
    else:
      flat[key] = value
  return flat


def may_change(field: str) -> bool:
  return any(field == f or field.startswith(f + ".") for f in RERUN_MAY_CHANGE)


def compare_with_run(
  workdir: str, config: ml_collections.ConfigDict
) -> tuple[bool, dict[str, object]]:
  """Checks `config` against the run recorded in `workdir` (reads only).

  Returns:
    Whether the workdir has a recorded run, and the fields of RERUN_MAY_CHANGE that differ
    from it (field -> this config's value), which results record as overrides.

  Raises:
    UserError naming every field that defines training and differs, with both values.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not paths.exists(path):
    return False, {}
  recorded = flat_fields(paths.read_json(path))
  current = flat_fields(config)
  missing = object()
  changed, overrides = [], {}
  for field in sorted(current.keys() | recorded.keys()):
    old, new = recorded.get(field, missing), current.get(field, missing)
    # A field newer than the recorded config (its default applies to both), or one the code
    # no longer has, defines nothing to compare.
    if old is missing or new is missing or old == new:
      continue
    if may_change(field):
      overrides[field] = new
    else:
      changed.append(f"  {field}: {json.dumps(old)} -> {json.dumps(new)}")
  if changed:
    raise UserError(
      f"{workdir} holds another run: this config changes fields that define its training "
      f"(recorded in {path}):\n" + "\n".join(changed) + "\nUse a new --workdir for a new run, "
      "or the run's own values to resume or evaluate it (eval.* and the other fields of "
      "workdir.RERUN_MAY_CHANGE may differ)."
    )
  return True, overrides


@contextlib.contextmanager
def claim(workdir: str, config: ml_collections.ConfigDict) -> Iterator[dict[str, object]]:
  """Holds `workdir` for this run: checked against its recorded run, locked, config recorded.

  Stops (UserError) before writing anything when the workdir holds another run, or when
  another process holds its lock. The first start records config.json; later runs never
  rewrite it. Process 0 takes the lock for every process of the run.

  Yields:
    The evaluation-only overrides of this config (compare_with_run).
  """
  compare_with_run(workdir, config)  # Fails fast, before any file is touched.
  lock = workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0 else None
  try:
    if lock is not None:
      _claim_on_process_zero(workdir, config, lock)
    _agree_with_process_zero(lock is not None)
    # Process 0 has recorded the run: every process reads the same config.json.
    _, overrides = compare_with_run(workdir, config)
    yield overrides
  finally:
    if lock is not None:
      lock.release()


def _claim_on_process_zero(workdir: str, config, lock: workdir_lock.WorkdirLock) -> None:
  try:
    lock.acquire()
    # Again under the lock: a run that ended meanwhile may have recorded its config.
    recorded, _ = compare_with_run(workdir, config)
    if not recorded:
      paths.makedirs(workdir)
      write_config(workdir, config)
  except BaseException:
    _broadcast_ok(False)
    raise
  _broadcast_ok(True)


def _broadcast_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def _agree_with_process_zero(is_zero: bool) -> None:
  if not is_zero and not _broadcast_ok(False):
    raise UserError(
      "Process 0 could not claim the workdir (its log says why: another run's lock, or a "
      "different recorded run); this process stops too."
    )


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its config.json; JSON lists become tuples)."""
  fields = paths.read_json(
    os.path.join(workdir, CONFIG_FILE),
    f"{workdir} is not a training workdir (runs write their config there when they start), or "
    "it was made by an older version: pass --config with the experiment config it was trained "
    "with.",
  )

  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    return value

  return ml_collections.ConfigDict(tuples(fields))


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard summaries in `workdir` on process 0; logging only on the others.

  A bucket workdir gets its event files through a local folder, copied there by EventCopier.
  """
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  if not paths.is_uri(workdir):
    return metric_writers.create_default_writer(os.fspath(paths.as_path(workdir)))
  staging = tempfile.mkdtemp(prefix="spnet_events_")
  return metric_writers.AsyncMultiWriter(
    [
      metric_writers.LoggingWriter(),
      metric_writers.SummaryWriter(staging),
      # After the SummaryWriter: flush and close reach it once the events are on disk.
      EventCopier(staging, workdir),
    ]
  )


class EventCopier(metric_writers.MetricWriter):
  """Copies the event files of a local folder into a bucket workdir, through paths.py.

  TensorFlow could write the events to gs:// itself, but its GCS filesystem has its endpoints
  built in (https://www.googleapis.com/storage/v1/; no setting or variable changes them), so no
  test could point it at a local emulator. Copied through epath, the events take the way every
  other file of the workdir takes, which the tests run on an emulator. The cost is TensorFlow's
  own: a bucket object cannot be appended to, so its writer too uploads the whole file on each
  flush. Events reach the bucket every EVENTS_COPY_SECS of writing and on flush and close; a
  kill -9 loses those since the last copy (TensorFlow's writer, those since its last flush).
  """

  def __init__(self, staging: str, destination: str, every_secs: float = EVENTS_COPY_SECS):
    self._staging, self._destination = staging, destination
    self._every_secs, self._last = every_secs, time.monotonic()
    self._copied: dict[str, tuple[int, int]] = {}  # File name -> (size, mtime) last copied.

  def copy(self) -> list[str]:
    """Copies the event files that changed since their last copy; returns their names."""
    self._last = time.monotonic()
    copied = []
    for name in sorted(os.listdir(self._staging)):
      source = os.path.join(self._staging, name)
      stat = os.stat(source)
      version = (stat.st_size, stat.st_mtime_ns)
      if self._copied.get(name) == version:
        continue
      with open(source, "rb") as f:
        paths.write_bytes(os.path.join(self._destination, name), f.read())
      self._copied[name] = version
      copied.append(name)
    return copied

  def _written(self) -> None:
    if time.monotonic() - self._last < self._every_secs:
      return
    try:
      self.copy()
    except Exception as error:  # Whichever backend's error: the next copy retries.
      logging.warning("Copying TensorBoard events to %s failed: %s", self._destination, error)

  def write_summaries(self, step, values, metadata=None):
    self._written()

  def write_scalars(self, step, scalars):
    self._written()

  def write_images(self, step, images):
    self._written()

  def write_videos(self, step, videos):
    self._written()

  def write_audios(self, step, audios, *, sample_rate):
    self._written()

  def write_texts(self, step, texts):
    self._written()

  def write_histograms(self, step, arrays, num_buckets=None):
    self._written()

  def write_hparams(self, hparams):
    self._written()

  def flush(self):
    self.copy()

  def close(self):
    self.copy()
    shutil.rmtree(self._staging, ignore_errors=True)
