"""Orbax checkpoints of the train state: periodic async saves, atomic commits, resume."""

import jax
import orbax.checkpoint as ocp

from spnet_jax import paths


def create_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  """A manager for `workdir`/checkpoints.

  Orbax writes each step into a temporary folder and renames it once complete, so a
  half-written checkpoint (a crash or kill -9 mid-save) is never taken as the latest; in a
  bucket (gs://), where nothing renames, a step counts once its commit_success.txt is written.
  """
  directory = paths.absolute(workdir) / "checkpoints"
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True
  )
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Starts an asynchronous save of `state` at `step` (all processes must call it)."""
  manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores `step` (default: the latest) into the structure and shardings of abstract_state.

  Args:
    manager: the checkpoint manager.
    abstract_state: pytree of jax.ShapeDtypeStruct with shardings (from jax.eval_shape); the
      checkpoint is laid out on the current devices, whatever devices saved it.
    step: the step to restore; None for the latest.

  Returns:
    The restored state, or None when there is no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except ValueError as error:
    if "tree structures do not match" not in str(error):
      raise
    raise ValueError(
      f"Checkpoint step {step} in {manager.directory} does not fit this config's model and "
      "optimiser (a changed config.model or config.optimizer field?). Use the config it was "
      "trained with, or a new --workdir."
    ) from error


def abstract_with_sharding(tree, sharding: jax.sharding.Sharding):
  """ShapeDtypeStructs of `tree` (arrays or structs), all with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def abstract_train_state(init, sharding: jax.sharding.Sharding):
  """Shapes, dtypes and `sharding` of the state `init(rng)` makes, computed without running it.

  What a checkpoint of the run is restored into (the experiment, `predict`); `init` is
  step.train_state_init's.
  """
  return abstract_with_sharding(jax.eval_shape(init, jax.random.key(0)), sharding)
