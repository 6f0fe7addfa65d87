"""Trains and evaluates an experiment (the main entry point; installed as `spnet-train`).

  python -m spnet_jax.main --config configs/<experiment>.py --workdir <dir> [--config.<field>=V]

Any field of the config file can be overridden on the command line with --config.<field>=V, e.g.
  --config.train.num_steps=100 --config.data.split=block --config.model.dtype=bfloat16
  --config.model.msc_scales='(0.5, 0.75)'   (a tuple: quoted, or one flag per item)
The config file (configs/*.py) lists its fields, a comment each; a field it lacks is an error
that names the closest one. `--config.mode=evaluate` evaluates the workdir's checkpoint without
training. Rerunning the same command resumes from the workdir's latest checkpoint. A mistake in
a flag, field or file prints one line and exits with status 2 (--verbose: the traceback).
"""

import logging as std_logging
from collections.abc import Callable

import jax
from absl import app, flags, logging
from clu import platform
from ml_collections import config_flags

from spnet_jax import cli, distributed, peer_watch

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, summaries and results.json.")
config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
flags.DEFINE_bool("verbose_libraries", False, "Keep the INFO logs of orbax (one line per I/O).")
flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process runs (GPU clusters, local CPU tests): HOST:PORT of process 0. TPU pods and "
  "srun steps are detected without it.",
)
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() with cluster detection (TPU pod slices, SLURM steps, Open "
  "MPI, ...). Implied in an srun step of more than one task (not in a batch shell).",
)
flags.DEFINE_integer(
  "heartbeat_timeout",
  30,
  "Multi-process runs: seconds without a heartbeat after which a process counts as lost (hung, "
  "host gone, or dead while the others wait in a collective) and every process stops.",
)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's INFO chatter (several lines per save/restore); warnings still pass."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def checked_task(config) -> Callable:
  """The config's train_and_evaluate, once the config passed its checks.

  Imported here, not at the top: --help and flag mistakes answer before TensorFlow loads, and
  an invalid field stops the run before any process or device starts.
  """
  cli.import_tensorflow_quietly()
  if config.get("task") == "zsl_classification":
    from spnet_jax.zsl import experiment as zsl_experiment

    zsl_experiment.validate_config(config)
    return zsl_experiment.train_and_evaluate
  from spnet_jax import config_validation, experiment

  config_validation.validate_config(config)
  return experiment.train_and_evaluate


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.verbose_libraries:
    logging.get_absl_logger().addFilter(_QuietOrbax())
  if FLAGS.coordinator_address and (FLAGS.num_processes is None or FLAGS.process_id is None):
    raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
  train_and_evaluate = checked_task(FLAGS.config)
  distributed.initialize(
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
    detect=FLAGS.distributed,
    heartbeat_timeout_secs=FLAGS.heartbeat_timeout,
  )
  peer_watch.start(FLAGS.heartbeat_timeout)
  logging.info(
    "JAX process %d / %d, local devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  platform.work_unit().set_task_status(f"process_index: {jax.process_index()}")
  platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, FLAGS.workdir, "workdir")
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except Exception as error:
    # Several processes stop together, naming the one that failed (one process: no-op).
    peer_watch.stop_after_error(error)
    raise


def run() -> None:
  """The `spnet-train` command (also `python -m` of this module)."""
  cli.run(main, __doc__)


if __name__ == "__main__":
  run()
