"""Random access to a prepared dataset: any record of a split by its index, from any process.

Datasets are prepared as ArrayRecord files (TFDS `file_format='array_record'`), which are read
by index. That is what lets each process read only the records of its own share of a batch, and
a run resumed at step t start reading at step t instead of skipping t x batch records.
"""

import threading
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from spnet_jax.errors import UserError

RECORD_FORMAT = "array_record"
READ_PARALLELISM = 4  # Concurrent record reads in a pipeline (latency-bound on cloud storage).


def convert_command(builder: tfds.core.DatasetBuilder) -> str:
  """The command that adds ArrayRecord files to a dataset prepared in another format."""
  return f"python -m spnet_jax.data.prepare --convert --dataset_dir {builder.data_dir}"


def check_random_access(builder: tfds.core.DatasetBuilder) -> None:
  """Raises a UserError with the conversion command if the dataset has no ArrayRecord files."""
  formats = {f.value for f in builder.info.available_file_formats()}
  if RECORD_FORMAT not in formats:
    raise UserError(
      f"{builder.info.full_name} in {builder.data_dir} was prepared as {sorted(formats)} files; "
      f"spnet_jax reads ArrayRecord files (random access by index). Convert it once, in place, "
      f"with:\n  {convert_command(builder)}"
    )


class SplitRecords:
  """The serialized examples of one split, read by index; counts what it reads.

  `cache=True` keeps every record read in memory (config.data.cache: small datasets), so each
  record is read from storage once per process.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str, cache: bool = False):
    check_random_access(builder)
    self.name = f"{builder.info.full_name} split {split!r}"
    self.features = builder.info.features
    self._source = builder.as_data_source(
      split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES, file_format=RECORD_FORMAT
    )
    self._cache: dict[int, bytes] | None = {} if cache else None
    self._lock = threading.Lock()
    self.records_read = 0
    self.bytes_read = 0

  def __len__(self) -> int:
    return len(self._source)

  def read(self, indices: Sequence[int]) -> list[bytes]:
    """The records at `indices` (thread-safe)."""
    indices = [int(i) for i in indices]
    if self._cache is not None:
      missing = sorted({i for i in indices if i not in self._cache})
      if missing:
        for i, record in zip(missing, self._read_storage(missing), strict=True):
          self._cache[i] = record
      return [self._cache[i] for i in indices]
    return self._read_storage(indices)

  def _read_storage(self, indices: list[int]) -> list[bytes]:
    records = list(self._source.__getitems__(indices)) if indices else []
    with self._lock:
      self.records_read += len(records)
      self.bytes_read += sum(len(r) for r in records)
    return records

  def parse(self, serialized: tf.Tensor, decode_label: bool = False) -> dict[str, tf.Tensor]:
    """A serialized example -> its features, the image still encoded (pipeline.decode_image).

    The label map is decoded when `decode_label` is set, else kept encoded too.
    """
    decoders = {"image": tfds.decode.SkipDecoding()}
    if not decode_label:
      decoders["label"] = tfds.decode.SkipDecoding()
    return self.features.deserialize_example(serialized, decoders=decoders)

  def read_batches(self, keys: tf.data.Dataset, record_index=None) -> tf.data.Dataset:
    """Batches of int64 keys -> (keys, their serialized records), in order.

    Args:
      keys: a dataset of int64 vectors.
      record_index: numpy function from keys to record indices (default: the keys are record
        indices).
    """

    def read(batch: np.ndarray) -> np.ndarray:
      indices = batch if record_index is None else record_index(batch)
      return np.asarray(self.read(indices), dtype=object)

    def read_fn(batch):
      records = tf.numpy_function(read, [batch], tf.string, stateful=False)
      records.set_shape(batch.shape)
      return batch, records

    return keys.map(read_fn, num_parallel_calls=READ_PARALLELISM, deterministic=True)


def process_part(num_records: int, process_count: int, process_index: int) -> range:
  """The contiguous records of a split process `process_index` evaluates (sizes differ by <= 1)."""
  bounds = [num_records * p // process_count for p in range(process_count + 1)]
  return range(bounds[process_index], bounds[process_index + 1])


def split_dataset(records: SplitRecords, part: range, decode_label: bool = False):
  """tf.data of the parsed examples of records `part` (a range of indices), in order."""
  indices = tf.data.Dataset.range(part.start, part.stop).batch(16)
  return (
    records.read_batches(indices)
    .unbatch()
    .map(
      lambda _, serialized: records.parse(serialized, decode_label),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
  )


class EpochOrder:
  """Example k of the endless training stream -> a record: permutation e of (seed, e)[k mod N].

  Each epoch e = k // N visits every record once in the order of its own permutation (what a
  PyTorch DataLoader with shuffle=True does, SPNet's loader), computed from (seed, e) alone, so
  any step's records are known without reading earlier ones.
  """

  def __init__(self, num_records: int, seed: int):
    if num_records <= 0:
      raise ValueError("The training split is empty.")
    self.num_records, self.seed = num_records, seed
    self._orders: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._orders:
        if len(self._orders) >= 2:  # A batch spans at most two epochs.
          self._orders.pop(min(self._orders))
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        self._orders[epoch] = rng.permutation(self.num_records)
      return self._orders[epoch]

  def records(self, examples: np.ndarray) -> np.ndarray:
    """Record indices of the stream's examples `examples` (int64 array)."""
    epochs, positions = np.divmod(np.asarray(examples, np.int64), self.num_records)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
      where = epochs == epoch
      out[where] = self.permutation(int(epoch))[positions[where]]
    return out
