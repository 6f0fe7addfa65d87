"""Prepares a dataset as TFDS files: `python -m spnet_jax.data.prepare --dataset shapes`."""

import ml_collections
from absl import app, flags, logging

from spnet_jax.data import datasets

_DATASET = flags.DEFINE_string("dataset", "shapes", "Dataset to prepare (config.data.name).")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", "", "TFDS data folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_BUILDER_CONFIG = flags.DEFINE_string("builder_config", "default", "TFDS builder config.")


def main(argv):
  del argv
  config = ml_collections.ConfigDict(
    {
      "data": {
        "name": _DATASET.value,
        "data_dir": _DATA_DIR.value,
        "builder_config": _BUILDER_CONFIG.value,
        "auto_prepare": True,
      }
    }
  )
  builder = datasets.get_builder(config)
  for split, info in builder.info.splits.items():
    logging.info("%s: %d examples", split, info.num_examples)
  print(f"Prepared {builder.info.full_name} in {builder.data_dir}")


if __name__ == "__main__":
  app.run(main)
