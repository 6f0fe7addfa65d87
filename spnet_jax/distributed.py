"""Joins the processes of a multi-host run (jax.distributed), or decides that it is one process.

A run is multi-process with --coordinator_address (GPU clusters, local CPU tests), with
--distributed (jax.distributed.initialize() detects a TPU pod slice, a SLURM step, Open MPI), or
inside an `srun` step of more than one task. A SLURM batch shell is not a step: its SLURM_NTASKS
is the allocation's, and it runs one process.
"""

import os
from collections.abc import Mapping

import jax
from absl import logging

from spnet_jax.errors import UserError

# What jax's SLURM detection reads (jax/_src/clusters/slurm_cluster.py). srun sets the STEP_ ones
# for its tasks (Slurm's env_array_for_step); a batch shell has SLURM_JOB_ID and SLURM_NTASKS only.
JAX_SLURM_VARIABLES = (
  "SLURM_JOB_ID",
  "SLURM_STEP_NODELIST",
  "SLURM_NTASKS",
  "SLURM_PROCID",
  "SLURM_LOCALID",
)
STEP_ID_VARIABLES = ("SLURM_STEP_ID", "SLURM_STEPID")
# jax's own heartbeat timeout is this much longer than spnet_jax.peer_watch's, so that a lost
# process is named by peer_watch's line first; jax's abort stays as the backstop.
JAX_HEARTBEAT_MARGIN_SECS = 30


def in_slurm_step(environ: Mapping[str, str]) -> bool:
  """True in a task of an `srun` step, where jax.distributed.initialize() finds its peers."""
  return any(name in environ for name in STEP_ID_VARIABLES) and all(
    name in environ for name in JAX_SLURM_VARIABLES
  )


def slurm_auto_join(environ: Mapping[str, str]) -> bool:
  """Whether SLURM alone makes this a multi-process run: a step of more than one task."""
  return in_slurm_step(environ) and int(environ["SLURM_NTASKS"]) > 1


def initialize(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  *,
  detect: bool,
  heartbeat_timeout_secs: int,
  environ: Mapping[str, str] = os.environ,
) -> None:
  """Joins the other processes of a multi-process run; a single-process run needs nothing.

  Args:
    coordinator_address: HOST:PORT of process 0, or None.
    num_processes: the number of processes (with coordinator_address).
    process_id: this process's index (with coordinator_address).
    detect: --distributed: let jax detect the cluster (TPU pod, SLURM step, Open MPI).
    heartbeat_timeout_secs: spnet_jax.peer_watch's timeout; jax's own is this plus
      JAX_HEARTBEAT_MARGIN_SECS.
    environ: the environment (SLURM variables).
  """
  ntasks = int(environ.get("SLURM_NTASKS", "1"))
  if not (coordinator_address or detect or slurm_auto_join(environ)):
    if ntasks > 1:
      logging.warning(
        "SLURM_NTASKS=%d but this is not an srun step (no SLURM_STEP_ID): running as a single "
        "process. For %d processes start the command with srun (launch/slurm_gpu.sbatch does), "
        "or pass --distributed inside the step.",
        ntasks,
        ntasks,
      )
    return
  # CPU processes exchange collectives through gloo (GPU and TPU use their own transports).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # jax's preemption service would catch SIGTERM from here on and swallow it outside the training
  # loop; without it SIGTERM ends startup and evaluation as usual, and training saves first.
  jax.config.update("jax_enable_preemption_service", False)
  try:
    jax.distributed.initialize(
      coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      heartbeat_timeout_seconds=heartbeat_timeout_secs + JAX_HEARTBEAT_MARGIN_SECS,
    )
  except ValueError as error:
    if coordinator_address or "coordinator_address" not in str(error):
      raise
    raise UserError(
      "--distributed: no cluster found (a TPU pod slice, a SLURM srun step or Open MPI). Run the "
      "command on every host of one, or pass --coordinator_address, --num_processes and "
      "--process_id."
    ) from error
