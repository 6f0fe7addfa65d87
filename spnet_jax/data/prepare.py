"""Prepares a dataset as TFDS files.

python -m spnet_jax.data.prepare --dataset shapes
python -m spnet_jax.data.prepare --dataset coco_stuff --manual_dir /data/cocostuff
python -m spnet_jax.data.prepare --dataset voc_sbd --manual_dir /data/voc_sbd

Datasets are written as ArrayRecord files (read by index). A dataset prepared by an older
version as TFRecord files is converted in place (the ArrayRecord files are added beside them):
python -m spnet_jax.data.prepare --convert --dataset_dir <data_dir>/<name>/<config>/<version>
"""

import os

from absl import flags, logging

from spnet_jax import cli, paths
from spnet_jax.errors import UserError

_DATASET = flags.DEFINE_string("dataset", "shapes", "Dataset to prepare (config.data.name).")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", "", "TFDS data folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir", "", "Folder with the unpacked archives (coco_stuff, voc_sbd; README 'Datasets')."
)
_BUILDER_CONFIG = flags.DEFINE_string("builder_config", "default", "TFDS builder config.")
_CONVERT = flags.DEFINE_bool(
  "convert", False, "Add ArrayRecord files to the prepared dataset in --dataset_dir."
)
_DATASET_DIR = flags.DEFINE_string(
  "dataset_dir", "", "With --convert: the dataset version folder (holds dataset_info.json)."
)


def main(argv):
  del argv
  # Imported here: --help and flag mistakes answer before TensorFlow loads.
  cli.import_tensorflow_quietly()
  from spnet_jax.data import datasets

  if _CONVERT.value:
    if not _DATASET_DIR.value:
      raise UserError("--convert needs --dataset_dir (the folder with dataset_info.json).")
    if not paths.exists(os.path.join(_DATASET_DIR.value, "dataset_info.json")):
      raise UserError(
        f"--dataset_dir={_DATASET_DIR.value} holds no dataset_info.json: pass the dataset "
        "version folder, <data_dir>/<name>/<config>/<version>."
      )
    datasets.convert_to_random_access(_DATASET_DIR.value)
    print(f"Added ArrayRecord files to {_DATASET_DIR.value}")
    return
  directory = _DATA_DIR.value or datasets.data_dir_default()
  builder = datasets.prepare(_DATASET.value, _BUILDER_CONFIG.value, directory, _MANUAL_DIR.value)
  for split, info in builder.info.splits.items():
    logging.info("%s: %d examples", split, info.num_examples)
  print(f"Prepared {builder.info.full_name} in {builder.data_dir}")


def run() -> None:
  """The `spnet-prepare` command (also `python -m` of this module)."""
  cli.run(main, __doc__)


if __name__ == "__main__":
  run()
