"""Measures the training input pipeline: images/s of tf.data preprocessing for a config.

  python -m spnet_jax.bench.input_benchmark --config configs/coco_zlss.py \
    --config.data.data_dir=/data/tfds [--batches 50] [--start_step 19000] [--processes 4]

With --fake_images N it first writes N fake photo-sized (640x480 and alike) images in the
dataset's real formats (JPEG/PNG) into a manual directory (--fake_dir, default temporary) and
prepares them, so it runs on any machine. --start_step times the first batch of a resumed run;
--processes P measures process 0 of P: the records and bytes it reads per step.
"""

import os
import tempfile
import time

from absl import flags
from ml_collections import config_flags

from spnet_jax import cli
from spnet_jax.bench import host
from spnet_jax.data import batching, datasets, pipeline, records, splits

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a command: spnet_jax.bench.benchmark imports this module with its own.
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
  flags.DEFINE_integer("batches", 40, "Batches timed after warm-up.")
  flags.DEFINE_integer("warmup_batches", 5, "Batches read before timing.")
  flags.DEFINE_integer("fake_images", 0, "Generate this many fake 640x480 images first (0: off).")
  flags.DEFINE_string("fake_dir", "", "Keep the fake images and their TFDS files here (reused).")
  flags.DEFINE_integer("start_step", 0, "Step the stream starts at (a resumed run's).")
  flags.DEFINE_integer("processes", 1, "Measure process 0 of this many (its share of each batch).")
  flags.mark_flags_as_required(["config"])


def time_pipeline(
  config, builder, batches: int, warmup: int, start_step: int = 0, processes: int = 1
) -> dict:
  """Reads warmup + batches batches of the training stream; returns throughput figures."""
  split = splits.get_split(config.data.name, config.data.split)
  # One device per process: the batch is padded to a multiple of the process count.
  layout = batching.batch_layout(config.train.batch_size, processes, processes, 0)
  split_records = records.SplitRecords(builder, config.data.train_split, cache=config.data.cache)
  start = time.perf_counter()
  iterator = pipeline.create_train_iterator(
    config.data, builder, split.train_classes, layout, 0, start_step, split_records
  )
  next(iterator)
  first_batch_seconds = time.perf_counter() - start
  for _ in range(warmup - 1):
    next(iterator)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  # CPU time of every thread of the process: a per-core figure that holds on a busy machine.
  cpu_seconds = time.process_time() - start_cpu
  images = batches * len(layout.real_rows)
  cores = host.usable_cores()
  bytes_per_record = split_records.bytes_read / max(split_records.records_read, 1)
  return {
    "images_per_sec": images / seconds,
    "images_per_sec_per_core": images / seconds / cores,
    "images_per_cpu_second": images / cpu_seconds,
    "cores": cores,
    "batch_shape": list(batch["image"].shape),
    "seconds": seconds,
    "cpu_seconds": cpu_seconds,
    "first_batch_seconds": first_batch_seconds,
    "start_step": start_step,
    "processes": processes,
    # Each step reads exactly the records of the process's real rows (tests/test_batching.py);
    # tf.data's read-ahead only moves reads earlier.
    "records_per_step": len(layout.real_rows),
    "bytes_per_step": len(layout.real_rows) * bytes_per_record,
    "records_read": split_records.records_read,
  }


def measure(
  config, fake_images: int, batches: int, warmup: int, fake_dir: str = "", **kwargs
) -> dict:
  """time_pipeline on the config's dataset, or on `fake_images` generated photo-sized images."""
  with tempfile.TemporaryDirectory() as scratch:
    if fake_images:
      from spnet_jax.testing import fake_data

      root = fake_dir or scratch
      manual = os.path.join(root, "manual")
      if not os.path.exists(os.path.join(manual, "done")):
        fake_data.write_fake_manual_dir(
          manual, config.data.name, num_train=fake_images, num_test=2, realistic=True
        )
        open(os.path.join(manual, "done"), "w").close()
      config.data.data_dir = os.path.join(root, "tfds")
      config.data.manual_dir = manual
      config.data.auto_prepare = True
    builder = datasets.get_builder(config)
    return time_pipeline(config, builder, batches, warmup, **kwargs)


def main(argv):
  del argv
  config = FLAGS.config
  figures = measure(
    config,
    FLAGS.fake_images,
    FLAGS.batches,
    FLAGS.warmup_batches,
    FLAGS.fake_dir,
    start_step=FLAGS.start_step,
    processes=FLAGS.processes,
  )
  print(
    f"input pipeline ({config.data.name}, batch {config.train.batch_size}, "
    f"shape {figures['batch_shape']}): {figures['images_per_sec']:.1f} images/s on "
    f"{figures['cores']} cores = {figures['images_per_sec_per_core']:.1f} images/s per core; "
    f"{figures['images_per_cpu_second']:.1f} images per CPU-second"
  )
  print(
    f"from step {figures['start_step']}: first batch after {figures['first_batch_seconds']:.2f} "
    f"s; process 0 of {figures['processes']} reads {figures['records_per_step']} records, "
    f"{figures['bytes_per_step'] / 1e6:.2f} MB per step"
  )
  print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()})


def run() -> None:
  """The `spnet-input-benchmark` command (also `python -m` of this module)."""
  cli.run(main, __doc__, _define_flags)


if __name__ == "__main__":
  run()
