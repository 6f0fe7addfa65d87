"""Dataset registry: config.data.name -> a prepared TFDS builder (or a clear error)."""

import importlib
import os

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core import file_adapters

from spnet_jax.data import records
from spnet_jax.errors import UserError

# config.data.name -> (module defining the TFDS builder, TFDS builder name). Modules are imported
# on demand: importing one registers its builder with TFDS.
_BUILDERS = {
  "shapes": ("spnet_jax.data.shapes", "spnet_shapes"),
  "coco_stuff": ("spnet_jax.data.coco_stuff", "coco_stuff"),
  "voc_sbd": ("spnet_jax.data.voc_sbd", "voc_sbd"),
}
# What the manual directory of each real dataset holds (README.md, section 'Datasets').
MANUAL_CONTENTS = {
  "coco_stuff": "train2017/ val2017/ stuffthingmaps/{train2017,val2017}/",
  "voc_sbd": "JPEGImages/ SegmentationClassAug/ train_ids.txt test_ids.txt",
}


def data_dir_default() -> str:
  """$TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def data_dir(config: ml_collections.ConfigDict) -> str:
  """TFDS folder: config.data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(config.data.data_dir) if config.data.data_dir else data_dir_default()


def prepare_command(name: str, directory: str) -> str:
  """The shell command that prepares dataset `name` into `directory`."""
  command = f"python -m spnet_jax.data.prepare --dataset {name} --data_dir {directory}"
  if name in MANUAL_CONTENTS:
    command += f" --manual_dir <folder with {MANUAL_CONTENTS[name]}>"
  return command


def create_builder(name: str, builder_config: str, directory: str) -> tfds.core.DatasetBuilder:
  """The TFDS builder of dataset `name` (prepared or not) in `directory`."""
  if name not in _BUILDERS:
    raise UserError(f"Unknown dataset config.data.name={name!r}; valid: {sorted(_BUILDERS)}.")
  module, tfds_name = _BUILDERS[name]
  importlib.import_module(module)
  return tfds.builder(f"{tfds_name}/{builder_config}", data_dir=directory)


def prepare(name: str, builder_config: str, directory: str, manual_dir: str = ""):
  """Prepares dataset `name` in `directory` (reading `manual_dir` for the real datasets)."""
  builder = create_builder(name, builder_config, directory)
  download_config = None
  if name in MANUAL_CONTENTS:
    if not manual_dir:
      raise UserError(
        f"Preparing {name!r} needs --manual_dir: the folder holding {MANUAL_CONTENTS[name]} "
        "(README.md, section 'Datasets')."
      )
    download_config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
  # ArrayRecord: records read by index (records.py), for per-process reads and instant resume.
  builder.download_and_prepare(download_config=download_config, file_format=records.RECORD_FORMAT)
  return builder


def convert_to_random_access(dataset_version_dir: str) -> None:
  """Adds ArrayRecord files beside a dataset prepared as TFRecord files (which stay).

  Each TFRecord shard is copied record for record into the ArrayRecord shard TFDS would have
  written (through a temporary file, so an interrupted conversion leaves no partial shard), and
  dataset_info.json then names ArrayRecord as the format to read.
  """
  from tensorflow_datasets.core import dataset_info as info_lib  # Only this command needs it.

  builder = tfds.builder_from_directory(dataset_version_dir)
  info = builder.info
  for split in info.splits.values():
    for source in split.filepaths:
      name = source.name.replace(".tfrecord-", f".{records.RECORD_FORMAT}-")
      if name == source.name:
        raise UserError(f"{source} is not a TFRecord shard of {info.full_name}.")
      target = source.parent / name
      if target.exists():
        continue
      partial = source.parent / f"{name}.incomplete"
      serialized = tf.data.TFRecordDataset(str(source)).as_numpy_iterator()
      file_adapters.ArrayRecordFileAdapter.write_examples(partial, ((None, r) for r in serialized))
      partial.rename(target)
      logging.info("Wrote %s", target)
  # ArrayRecord becomes the main format: a registered builder's info ignores the alternatives.
  proto = info.as_proto
  if proto.file_format != records.RECORD_FORMAT:
    del proto.alternative_file_formats[:]
    proto.alternative_file_formats.append(proto.file_format)
    proto.file_format = records.RECORD_FORMAT
    info_lib.write_dataset_info_proto(proto, dataset_info_dir=builder.data_path)


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the prepared builder of config.data.name, preparing it when allowed.

  The shapes dataset is generated on first use when config.data.auto_prepare is set; the real
  datasets are prepared by config.data.auto_prepare only when config.data.manual_dir is given.

  Raises:
    UserError: the dataset name is unknown, or the dataset is not prepared (the message gives
      the command that prepares it).
  """
  name = config.data.name
  directory = data_dir(config)
  builder = create_builder(name, config.data.builder_config, directory)
  if builder.is_prepared():
    records.check_random_access(builder)
    return builder
  manual_dir = config.data.get("manual_dir", "")
  if config.data.auto_prepare and (name not in MANUAL_CONTENTS or manual_dir):
    logging.info(
      "Preparing %s (%s) in %s; this happens once.", name, builder.info.full_name, directory
    )
    return prepare(name, config.data.builder_config, directory, manual_dir)
  raise UserError(
    f"Dataset {name!r} ({config.data.builder_config}) is not prepared in {directory}. "
    f"Prepare it with:\n  {prepare_command(name, directory)}\nor point config.data.data_dir at "
    "the folder that holds it (README.md, section 'Datasets')."
  )
