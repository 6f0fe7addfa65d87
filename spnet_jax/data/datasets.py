"""Dataset registry: config.data.name -> a prepared TFDS builder (or a clear error)."""

import os

import ml_collections
import tensorflow_datasets as tfds
from absl import logging

from spnet_jax.data import shapes

# Datasets the project knows of, with the command that prepares each one.
PREPARE_COMMANDS = {
  "shapes": "python -m spnet_jax.data.prepare --dataset shapes --data_dir {data_dir}",
}
# The paper's benchmarks; their TFDS builders are not part of this release yet.
PLANNED = {
  "coco_stuff": "COCO-Stuff 164k",
  "voc_sbd": "PASCAL VOC 2012 + SBD",
}
_BUILDER_NAMES = {"shapes": "spnet_shapes"}


def data_dir(config: ml_collections.ConfigDict) -> str:
  """TFDS folder: config.data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  path = config.data.data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
  return os.path.expanduser(path)


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the prepared builder of config.data.name, preparing 'shapes' when allowed.

  Raises:
    ValueError: the dataset name is unknown, or the dataset is not prepared (the message gives
      the command that prepares it).
  """
  name = config.data.name
  if name in PLANNED:
    raise ValueError(
      f"config.data.name={name!r} ({PLANNED[name]}) has no TFDS builder in this version of "
      "spnet_jax yet: the model and recipe of this config are ready, its dataset is not. "
      "Use configs/shapes_zlss.py, or see README.md ('Datasets') for the status."
    )
  if name not in _BUILDER_NAMES:
    raise ValueError(
      f"Unknown dataset config.data.name={name!r}; valid: "
      f"{sorted(_BUILDER_NAMES) + sorted(PLANNED)}."
    )
  directory = data_dir(config)
  builder = tfds.builder(f"{_BUILDER_NAMES[name]}/{config.data.builder_config}", data_dir=directory)
  if not builder.is_prepared():
    if config.data.auto_prepare and name == "shapes":
      logging.info(
        "Generating the shapes dataset (%s) in %s; this happens once.",
        config.data.builder_config,
        directory,
      )
      builder.download_and_prepare()
    else:
      command = PREPARE_COMMANDS[name].format(data_dir=directory)
      raise ValueError(
        f"Dataset {name!r} ({config.data.builder_config}) is not prepared in {directory}. "
        f"Prepare it with:\n  {command}\nor point config.data.data_dir at the folder that "
        "holds it."
      )
  return builder


# Make sure the builder class is registered with TFDS when this module is imported.
_REGISTERED = (shapes.SpnetShapes,)
