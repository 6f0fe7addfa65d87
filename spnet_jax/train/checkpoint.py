"""Orbax checkpoints of the train state: async saves, verified restores, resume.

Orbax writes each step into a temporary folder and renames it once complete (in a bucket, where
nothing renames, a step counts once its commit_success.txt is written), so a save cut short is
never taken as the latest. What Orbax does not check is the content: a file truncated or
damaged afterwards restores without complaint. So every save also writes the CRC32 of each
array of the state (computed from the arrays in memory, before the save starts) to
`checkpoint_checksums/<step>.json` beside the checkpoints, and a restore recomputes them and
checks that the parameters are finite. A failed asynchronous save, which Orbax only logs, is
reported by check_saves.
"""

import os
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from spnet_jax import paths
from spnet_jax.errors import UserError

CHECKSUMS_DIR = "checkpoint_checksums"
UNUSABLE_DIR = "checkpoints_unusable"  # Where a training rerun moves a checkpoint it cannot use.


class CheckpointError(UserError):
  """A checkpoint that cannot be restored (damaged, incomplete, non-finite), or a failed save."""


class Manager(ocp.CheckpointManager):
  """Orbax's manager, keeping the error of a failed asynchronous save for check_saves.

  Orbax's finalising thread calls check_for_errors, logs the exception and drops it: the
  override records it on its way.
  """

  save_error: Exception | None = None
  saves_started: tuple[int, ...] = ()  # Steps whose save this process started, in order.

  def check_for_errors(self):
    try:
      super().check_for_errors()
    except Exception as error:
      self.save_error = error
      raise


def create_manager(workdir: str, max_to_keep: int) -> Manager:
  """A manager for `workdir`/checkpoints."""
  directory = paths.absolute(workdir) / "checkpoints"
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True
  )
  return Manager(directory, options=options)


def _checksums_dir(manager: ocp.CheckpointManager) -> epath.Path:
  return epath.Path(manager.directory).parent / CHECKSUMS_DIR


def state_checksums(state) -> dict[str, dict]:
  """{leaf path: {'crc32', 'shape', 'dtype'}} of a replicated state's arrays."""
  sums = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(leaf, jax.Array):
      leaf = leaf.addressable_data(0)  # Replicated: this device's copy is the whole array.
    array = np.ascontiguousarray(np.asarray(leaf))
    sums[jax.tree_util.keystr(key_path)] = {
      "crc32": f"{zlib.crc32(array.view(np.uint8).reshape(-1)):08x}",
      "shape": list(array.shape),
      "dtype": str(array.dtype),
    }
  return sums


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Writes the checksums of `state`, then starts an asynchronous save (every process calls it).

  Raises:
    CheckpointError: the save could not start (or an earlier one failed).
  """
  try:
    if jax.process_index() == 0:
      sums = state_checksums(state)
      paths.write_json(_checksums_dir(manager) / f"{step}.json", sums)
      _drop_stale_checksums(manager)
    if isinstance(manager, Manager):
      manager.saves_started += (step,)
    manager.save(step, args=ocp.args.StandardSave(state), force=True)
  except CheckpointError:
    raise
  except Exception as error:
    raise save_failed(manager, step, error) from error
  check_saves(manager, step)


def check_saves(manager: ocp.CheckpointManager, step: int) -> None:
  """Raises CheckpointError if an asynchronous save has failed (a cheap attribute read)."""
  error = getattr(manager, "save_error", None)
  if error is not None:
    raise save_failed(manager, step, error)


def save_failed(manager: ocp.CheckpointManager, step: int, error: Exception) -> CheckpointError:
  """The one-line error of a failed save: where, why, and the newest step on disk.

  `step` is the training step now; the save that failed may be an earlier, asynchronous one:
  the first started after the newest checkpoint on disk.
  """
  try:
    manager.reload()
    last = manager.latest_step()
  except Exception:  # The storage that failed the save may fail this too.
    last = None
  started = [s for s in getattr(manager, "saves_started", ()) if last is None or s > last]
  failed = started[0] if started else step
  last_text = f"the last good checkpoint is step {last}" if last is not None else "none was saved"
  return CheckpointError(
    f"Saving checkpoint step {failed} to {manager.directory} failed: {_cause(error)}. Training "
    f"stopped at step {step}; {last_text}. Fix the storage (space, permissions) and rerun to "
    "resume."
  )


def _cause(error: BaseException) -> str:
  """The innermost error's first line, without Orbax's and TensorStore's wrapping."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _drop_stale_checksums(manager: ocp.CheckpointManager) -> None:
  """Deletes the checksum files of steps older than every checkpoint kept."""
  steps = manager.all_steps()
  if not steps:
    return
  for path in _checksums_dir(manager).glob("*.json"):
    if path.stem.isdigit() and int(path.stem) < min(steps):
      path.unlink()


def verify(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Raises CheckpointError if the restored `state` of `step` is not what was saved."""
  where = f"checkpoint step {step} in {manager.directory}"
  checksum_file = _checksums_dir(manager) / f"{step}.json"
  if checksum_file.exists():
    saved = paths.read_json(checksum_file)
    restored = state_checksums(state)
    differ = [k for k in saved if saved[k] != restored.get(k)]
    if differ:
      raise CheckpointError(
        f"The {where} is damaged: {len(differ)} of {len(saved)} arrays differ from their "
        f"checksums at save time ({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''})."
      )
  else:
    logging.warning("The %s has no checksums (saved by an older version): not verified.", where)
  if not all(bool(np.isfinite(np.asarray(x.addressable_data(0))).all()) for x in _arrays(state)):
    raise CheckpointError(f"The {where} holds non-finite parameters.")


def _arrays(state) -> list[jax.Array]:
  """The parameters' arrays (a TrainState's params; any other tree whole)."""
  return [x for x in jax.tree.leaves(getattr(state, "params", state)) if isinstance(x, jax.Array)]


def restore_step(manager: ocp.CheckpointManager, abstract_state, step: int):
  """Restores and verifies `step`; CheckpointError names the step, the folder and the cause."""
  if step not in manager.all_steps():
    steps = ", ".join(map(str, manager.all_steps())) or "none"
    raise CheckpointError(f"No checkpoint step {step} in {manager.directory} (steps: {steps}).")
  try:
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except ValueError as error:
    if "tree structures do not match" in str(error):
      raise UserError(
        f"Checkpoint step {step} in {manager.directory} does not fit this config's model and "
        "optimiser (a changed config.model or config.optimizer field?). Use the config it was "
        "trained with, or a new --workdir."
      ) from error
    raise _unreadable(manager, step, error) from error
  except Exception as error:
    raise _unreadable(manager, step, error) from error
  verify(manager, step, state)
  return state


def _unreadable(manager, step: int, error: Exception) -> CheckpointError:
  return CheckpointError(
    f"The checkpoint step {step} in {manager.directory} cannot be read (incomplete or "
    f"damaged): {_cause(error)}"
  )


def restore(
  manager: ocp.CheckpointManager, abstract_state, step: int | None = None, fallback: bool = False
):
  """Restores `step` (default: the latest) into the structure and shardings of abstract_state.

  Args:
    manager: the checkpoint manager.
    abstract_state: pytree of jax.ShapeDtypeStruct with shardings (from jax.eval_shape); the
      checkpoint is laid out on the current devices, whatever devices saved it.
    step: the step to restore; None for the latest.
    fallback: with step None, a latest checkpoint that fails verification is moved to
      `checkpoints_unusable/` and the next newest is tried (a training rerun); False raises.

  Returns:
    The restored state, or None when there is no checkpoint.

  Raises:
    CheckpointError: the checkpoint is damaged or incomplete (with fallback: every one is).
  """
  if step is not None:
    return restore_step(manager, abstract_state, step)
  set_aside = []
  while manager.latest_step() is not None:
    latest = manager.latest_step()
    try:
      state = restore_step(manager, abstract_state, latest)
      error = None
    except CheckpointError as failure:
      state, error = None, failure
    # Every process decides alike (a read error may hit one of them only).
    if _any_process(error is not None):
      error = error or CheckpointError(f"Checkpoint step {latest} failed on another process.")
      if not fallback:
        raise error
      logging.warning("%s Moving it to %s and trying the previous one.", error, UNUSABLE_DIR)
      _set_aside(manager, latest)
      set_aside.append(latest)
      continue
    return state
  if set_aside:  # Starting over from step 0 is the user's call, not ours.
    raise CheckpointError(
      f"No usable checkpoint left in {manager.directory}: steps {set_aside} were moved to "
      f"{UNUSABLE_DIR}/. Rerun to train from step 0."
    )
  return None


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Moves checkpoint `step` to workdir/checkpoints_unusable/<step> (kept for inspection)."""
  if jax.process_index() == 0:
    source = epath.Path(manager.directory) / str(step)
    target = epath.Path(manager.directory).parent / UNUSABLE_DIR / str(step)
    if target.exists():
      target.rmtree()
    _move_tree(source, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
  manager.reload()


def _move_tree(source: epath.Path, target: epath.Path) -> None:
  """Moves a folder; a bucket, which cannot rename, gets a copy and a delete."""
  if not paths.is_uri(os.fspath(source)):
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)
    return
  for entry in source.iterdir():  # epath's gs:// backend has no recursive glob.
    if entry.is_dir():
      _move_tree(entry, target / entry.name)
    else:
      paths.write_bytes(target / entry.name, entry.read_bytes())
  source.rmtree()


def abstract_with_sharding(tree, sharding: jax.sharding.Sharding):
  """ShapeDtypeStructs of `tree` (arrays or structs), all with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def abstract_train_state(init, sharding: jax.sharding.Sharding):
  """Shapes, dtypes and `sharding` of the state `init(rng)` makes, computed without running it.

  What a checkpoint of the run is restored into (the experiment, `predict`); `init` is
  step.train_state_init's.
  """
  return abstract_with_sharding(jax.eval_shape(init, jax.random.key(0)), sharding)
