"""Entry point: `python -m spnet_jax.main --config configs/<experiment>.py --workdir <dir>`."""

import logging as std_logging

import jax
from absl import app, flags, logging
from clu import platform
from ml_collections import config_flags

from spnet_jax import experiment

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, summaries and results.json.")
config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
flags.DEFINE_bool("verbose_libraries", False, "Keep the INFO logs of orbax (one line per I/O).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's INFO chatter (several lines per save/restore); warnings still pass."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.verbose_libraries:
    logging.get_absl_logger().addFilter(_QuietOrbax())
  logging.info(
    "JAX process %d / %d, local devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  platform.work_unit().set_task_status(f"process_index: {jax.process_index()}")
  platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, FLAGS.workdir, "workdir")
  experiment.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
