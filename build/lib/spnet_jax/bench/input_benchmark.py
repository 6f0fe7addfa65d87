"""Measures the training input pipeline: images/s of tf.data preprocessing for a config.

  python -m spnet_jax.bench.input_benchmark --config configs/coco_zlss.py \
    --config.data.data_dir=/data/tfds [--batches 50]

With --fake_images N it first writes N fake photo-sized (640x480 and alike) images in the
dataset's real formats (JPEG/PNG) into a temporary manual directory and prepares them, so it
runs on any machine.
"""

import os
import tempfile
import time

from absl import flags
from ml_collections import config_flags

from spnet_jax import cli
from spnet_jax.bench import host
from spnet_jax.data import datasets, pipeline, splits

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a command: spnet_jax.bench.benchmark imports this module with its own.
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
  flags.DEFINE_integer("batches", 40, "Batches timed after warm-up.")
  flags.DEFINE_integer("warmup_batches", 5, "Batches read before timing.")
  flags.DEFINE_integer("fake_images", 0, "Generate this many fake 640x480 images first (0: off).")
  flags.mark_flags_as_required(["config"])


def time_pipeline(config, builder, batches: int, warmup: int) -> dict:
  """Reads warmup + batches batches of the training stream; returns throughput figures."""
  split = splits.get_split(config.data.name, config.data.split)
  iterator = pipeline.create_train_iterator(
    config.data, builder, split.train_classes, config.train.batch_size, seed=0
  )
  for _ in range(warmup):
    next(iterator)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  # CPU time of every thread of the process: a per-core figure that holds on a busy machine.
  cpu_seconds = time.process_time() - start_cpu
  images = batches * config.train.batch_size
  cores = host.usable_cores()
  return {
    "images_per_sec": images / seconds,
    "images_per_sec_per_core": images / seconds / cores,
    "images_per_cpu_second": images / cpu_seconds,
    "cores": cores,
    "batch_shape": list(batch["image"].shape),
    "seconds": seconds,
    "cpu_seconds": cpu_seconds,
  }


def measure(config, fake_images: int, batches: int, warmup: int) -> dict:
  """time_pipeline on the config's dataset, or on `fake_images` generated photo-sized images."""
  with tempfile.TemporaryDirectory() as scratch:
    if fake_images:
      from spnet_jax.testing import fake_data

      manual = os.path.join(scratch, "manual")
      fake_data.write_fake_manual_dir(
        manual, config.data.name, num_train=fake_images, num_test=2, realistic=True
      )
      config.data.data_dir = os.path.join(scratch, "tfds")
      config.data.manual_dir = manual
      config.data.auto_prepare = True
    builder = datasets.get_builder(config)
    return time_pipeline(config, builder, batches, warmup)


def main(argv):
  del argv
  config = FLAGS.config
  figures = measure(config, FLAGS.fake_images, FLAGS.batches, FLAGS.warmup_batches)
  print(
    f"input pipeline ({config.data.name}, batch {config.train.batch_size}, "
    f"shape {figures['batch_shape']}): {figures['images_per_sec']:.1f} images/s on "
    f"{figures['cores']} cores = {figures['images_per_sec_per_core']:.1f} images/s per core; "
    f"{figures['images_per_cpu_second']:.1f} images per CPU-second"
  )
  print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()})


def run() -> None:
  """The `spnet-input-benchmark` command (also `python -m` of this module)."""
  cli.run(main, __doc__, _define_flags)


if __name__ == "__main__":
  run()
