"""Few-label data: per-class image lists, the n-shot image pool, its label tables and stream.

Few-label training (FLSS / GFLSS) fine-tunes a zero-label model on a small pool of images: the
first n images listed for every seen class and every novel class. An image drawn for a seen
class is labelled with the seen classes only; an image drawn for novel class k also keeps the
pixels of k, while the other novel classes stay ignored (they are still "unlabelled" there).

The training classes are `visible = seen_classes + novel_classes`, in that order: training label
i is the class at position i of that tuple (so novel classes follow the seen ones, and the model's
logits must be computed for exactly this tuple of class ids).
"""

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from spnet_jax import paths
from spnet_jax.data import batching, pipeline, safe_pickle, splits
from spnet_jax.data import records as records_lib
from spnet_jax.errors import UserError

# SPNet's n-shot lists take images [i * 20 : i * 20 + n] of each class list for offset i, so the
# pools of different offsets are disjoint for every n up to 20.
OFFSET_STRIDE = 20
SEEN_TAG = -1
_LISTS_FORMAT = "spnet_jax.class_image_lists/1"


# ---------------------------------------------------------------------------------------------
# Per-class image lists.


def build_class_image_lists(
  builder: tfds.core.DatasetBuilder, split_name: str, num_classes: int
) -> dict[int, list[str]]:
  """For every label value, the ids of the images of a TFDS split that contain it.

  One pass over the split that decodes the label maps only. The lists are sorted by image id, so
  they do not depend on the order in which TFDS stores or reads the records.

  Args:
    builder: a prepared TFDS builder with 'label' and 'image_id' features.
    split_name: the TFDS split (e.g. 'train').
    num_classes: label values 0..num_classes-1 get a list (other values, such as the dataset's
      own 255, are not classes).

  Returns:
    {label value: sorted image ids}, with an (empty) entry for every value 0..num_classes-1.
  """
  split_records = records_lib.SplitRecords(builder, split_name)
  ds = records_lib.split_dataset(split_records, range(len(split_records)), decode_label=True)

  def presence(example):
    # uint8 labels: 256 bins cover every value, 255 included.
    counts = tf.math.bincount(
      tf.reshape(tf.cast(example["label"], tf.int32), [-1]), minlength=256, maxlength=256
    )
    return example["image_id"], counts[:num_classes] > 0

  ds = ds.map(presence, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(8)
  lists: dict[int, list[str]] = {c: [] for c in range(num_classes)}
  for image_id, present in ds.as_numpy_iterator():
    name = image_id.decode()
    for c in np.flatnonzero(present):
      lists[int(c)].append(name)
  return {c: sorted(ids) for c, ids in lists.items()}


def default_lists_path(builder: tfds.core.DatasetBuilder, split_name: str) -> str:
  """Where the class image lists of a split live: beside the prepared dataset's files."""
  # Splits may be slices ('train[:50%]'): keep the file name to safe characters.
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", split_name)
  return os.path.join(str(builder.data_dir), f"class_image_lists.{safe}.json")


def save_class_image_lists(path: str, lists: Mapping[int, Sequence[str]]) -> None:
  """Writes the lists as JSON (atomically: a crashed writer never leaves half a file)."""
  payload = {
    "format": _LISTS_FORMAT,
    "lists": {str(int(c)): list(ids) for c, ids in sorted(lists.items())},
  }
  temporary = f"{path}.tmp-{os.getpid()}"
  paths.write_text(temporary, json.dumps(payload))
  paths.as_path(temporary).replace(paths.as_path(path))


def load_class_image_lists(path: str) -> dict[int, list[str]]:
  """Reads lists written by save_class_image_lists.

  Raises:
    UserError: the file is not such a list file.
  """
  payload = paths.read_json(path)
  if not isinstance(payload, dict) or payload.get("format") != _LISTS_FORMAT:
    raise UserError(f"{path} is not a class image list file ({_LISTS_FORMAT}).")
  return {int(c): [str(i) for i in ids] for c, ids in payload["lists"].items()}


def load_or_build_class_image_lists(
  builder: tfds.core.DatasetBuilder, split_name: str, num_classes: int, path: str = ""
) -> dict[int, list[str]]:
  """Loads the lists of a split from `path` (default: beside the dataset), building them once.

  The pass is deterministic, so every process may build; only process 0 writes the file.
  """
  path = path or default_lists_path(builder, split_name)
  if paths.exists(path):
    return load_class_image_lists(path)
  logging.info("Building the per-class image lists of split %r (once): %s", split_name, path)
  lists = build_class_image_lists(builder, split_name, num_classes)
  if jax.process_index() == 0:
    save_class_image_lists(path, lists)
  return lists


def lists_from_spnet_pickle(pkl_path: str, train_ids_path: str) -> dict[int, list[str]]:
  """SPNet's inverse_dict_train.pkl as image id lists, in SPNet's own order.

  The pickle maps a label value to positions in train_ids.txt of the images that contain it;
  the order of those positions decides SPNet's n-shot pools, so it is kept exactly. The pickle is
  read with the restricted unpickler (safe_pickle.load_pickle), which accepts numpy arrays only.

  Args:
    pkl_path: SPNet's inverse_dict_train.pkl (label value -> array of positions).
    train_ids_path: SPNet's train_ids.txt, one image id per line.

  Returns:
    {label value: image ids}.

  Raises:
    UserError: the pickle is not a dict, or a position falls outside train_ids.txt.
  """
  positions = safe_pickle.load_pickle(pkl_path)
  if not isinstance(positions, dict):
    raise UserError(f"{pkl_path}: expected a dict label -> positions, got {type(positions)}.")
  lines = paths.read_text(train_ids_path).splitlines()
  ids = [line.strip() for line in lines if line.strip()]
  lists = {}
  for label, where in positions.items():
    where = np.asarray(where, np.int64).reshape(-1)
    if where.size and (where.min() < 0 or where.max() >= len(ids)):
      raise UserError(
        f"{pkl_path}: label {label} lists positions outside 0..{len(ids) - 1} of {train_ids_path}."
      )
    lists[int(label)] = [ids[i] for i in where]
  return dict(sorted(lists.items()))


# ---------------------------------------------------------------------------------------------
# The n-shot pool and its label tables.


class PoolEntry(NamedTuple):
  """One image of the pool.

  Attributes:
    image_id: the 'image_id' feature of the example.
    tag: SEEN_TAG (-1) for an image drawn for a seen class, else the novel class it was drawn for.
    table_index: the row of pool_label_tables(pool) that labels this image.
  """

  image_id: str
  tag: int
  table_index: int


@dataclasses.dataclass(frozen=True)
class FewShotPool:
  """The images of few-label training and how each is labelled.

  Attributes:
    entries: (image_id, tag, table_index) per image and tag, in drawing order: seen classes
      first, then novel classes, each in the order of its list.
    n: images drawn per class.
    offset: which block of OFFSET_STRIDE images of each list was drawn from.
    seen_classes: classes labelled in every image.
    novel_classes: classes labelled only in the images drawn for them.
  """

  entries: tuple[PoolEntry, ...]
  n: int
  offset: int
  seen_classes: tuple[int, ...]
  novel_classes: tuple[int, ...]

  @property
  def visible_classes(self) -> tuple[int, ...]:
    """The training classes: training label i is visible_classes[i] (seen first, then novel)."""
    return self.seen_classes + self.novel_classes

  @property
  def tags(self) -> tuple[int, ...]:
    """Tag of each label table: SEEN_TAG, then every novel class."""
    return (SEEN_TAG, *self.novel_classes)

  def table_index(self, tag: int) -> int:
    return self.tags.index(tag)

  @property
  def image_ids(self) -> tuple[str, ...]:
    """Distinct image ids of the pool, in first-drawn order."""
    return tuple(dict.fromkeys(e.image_id for e in self.entries))


def build_pool(
  lists: Mapping[int, Sequence[str]],
  split: splits.ClassSplit,
  n: int,
  offset: int = 0,
  novel_classes: tuple[int, ...] | None = None,
  seen_classes: tuple[int, ...] | None = None,
  keep_duplicates: bool = False,
  seen_draw_order: tuple[int, ...] | None = None,
) -> FewShotPool:
  """Draws the n-shot pool: lists[c][offset * 20 : offset * 20 + n] for every seen and novel c.

  With keep_duplicates (SPNet's pools), every draw is an entry: an image drawn for several seen
  classes is sampled once per class. Otherwise an image drawn for several seen classes appears
  once. Either way an image drawn for a seen class and for novel class k (or for two novel
  classes) appears once per tag, since each is labelled differently. A class with fewer than n
  images in its block gives what it has, and one with none gives nothing (both logged as
  warnings).

  Args:
    lists: {label value: image ids}, e.g. from load_or_build_class_image_lists.
    split: the class split.
    n: images per class, 1..20.
    offset: block index i of SPNet's lists (different offsets draw disjoint images).
    novel_classes: default split.unseen.
    seen_classes: default split.train_classes (seen plus val, as in the zero-label model).
    keep_duplicates: keep repeated (image, tag) draws, in drawing order.
    seen_draw_order: the order the seen classes are drawn in (default seen_classes); SPNet
      draws its seen classes, then its val classes, each in the order of its split file.

  Returns:
    The pool.

  Raises:
    UserError: n or offset out of range.
    ValueError: seen and novel classes overlap.
  """
  novel = tuple(split.unseen if novel_classes is None else novel_classes)
  seen = tuple(split.train_classes if seen_classes is None else seen_classes)
  if not 1 <= n <= OFFSET_STRIDE:
    raise UserError(f"Few-label n={n} must be in 1..{OFFSET_STRIDE} (SPNet's list stride).")
  if offset < 0:
    raise UserError(f"Few-label offset={offset} must be >= 0.")
  if set(seen) & set(novel) or len(set(seen + novel)) != len(seen + novel):
    raise ValueError(f"Seen {seen} and novel {novel} classes must be distinct.")
  tags = (SEEN_TAG, *novel)
  start = offset * OFFSET_STRIDE
  entries: list[PoolEntry] = []
  short, empty = [], []
  draw_order = seen if seen_draw_order is None else tuple(seen_draw_order)
  if sorted(draw_order) != sorted(seen):
    raise ValueError(f"seen_draw_order {draw_order} is not an order of the seen classes {seen}.")
  for tag, classes in [(SEEN_TAG, draw_order)] + [(k, (k,)) for k in novel]:
    for c in classes:
      drawn = list(lists.get(c, ()))[start : start + n]
      if not drawn:
        empty.append(c)
      elif len(drawn) < n:
        short.append(f"{c} ({len(drawn)})")
      entries.extend(PoolEntry(image_id, tag, tags.index(tag)) for image_id in drawn)
  if not keep_duplicates:
    entries = list(dict.fromkeys(entries))  # First draw of each (image, tag) wins.
  if short:
    logging.warning("Few-label pool n=%d offset=%d: short classes %s.", n, offset, short)
  if empty:
    logging.warning("Few-label pool n=%d offset=%d: no images for classes %s.", n, offset, empty)
  return FewShotPool(tuple(entries), n, offset, seen, novel)


def pool_label_tables(pool: FewShotPool, table_size: int = 256) -> np.ndarray:
  """Label tables [num_tags, table_size] (int32), row pool.table_index(tag) for each tag.

  Row 0 (seen-class images) maps seen class c -> its visible index and everything else, novel
  classes included, to ignore; the row of novel class k also maps k -> its visible index.
  """
  visible = pool.visible_classes
  base = splits.remap_table(visible, table_size)
  base[np.asarray(pool.novel_classes, np.int64)] = splits.IGNORE_LABEL
  tables = np.repeat(base[None], len(pool.tags), axis=0)
  for row, k in enumerate(pool.novel_classes, start=1):
    tables[row, k] = visible.index(k)
  return tables


# ---------------------------------------------------------------------------------------------
# The training stream.


def _load_pool_records(
  builder: tfds.core.DatasetBuilder, split_name: str, image_ids: Sequence[str]
) -> dict[str, tuple[bytes, bytes]]:
  """The encoded (image, label) of each pool image, read in one pass over the split."""
  # A hash lookup per record: the split may hold 100k+ records and the pool thousands of ids.
  wanted = tf.lookup.StaticHashTable(
    tf.lookup.KeyValueTensorInitializer(
      tf.constant(list(image_ids), tf.string), tf.ones([len(image_ids)], tf.int32)
    ),
    default_value=0,
  )
  split_records = records_lib.SplitRecords(builder, split_name)
  ds = records_lib.split_dataset(split_records, range(len(split_records)))
  ds = ds.filter(lambda ex: wanted.lookup(ex["image_id"]) > 0)
  records = {}
  for example in ds.as_numpy_iterator():
    records[example["image_id"].decode()] = (example["image"], example["label"])
  missing = [i for i in image_ids if i not in records]
  if missing:
    raise UserError(
      f"{len(missing)} few-label pool images are not in split {split_name!r} of "
      f"{builder.info.full_name} (first: {missing[:5]}): were the class lists built from it?"
    )
  return records


def create_fewshot_iterator(
  data_config: ml_collections.ConfigDict,
  builder: tfds.core.DatasetBuilder,
  pool: FewShotPool,
  layout: batching.BatchLayout,
  seed: int,
  start_step: int = 0,
  split_name: str = "",
  include_tag: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this process's rows of each global few-label batch, from start_step.

  The contract of pipeline.create_train_iterator: global example k is entry perm_e[k mod M] of
  the pool (M entries, perm_e a permutation drawn from (seed, epoch e = k // M), so every entry is
  seen once per epoch), augmented with a seed derived from k; global batch t holds examples
  t*B..(t+1)*B-1 in its first B rows (pipeline.local_examples). A resumed run therefore sees
  the batches an uninterrupted one would. The pool's images stay in memory, encoded (decoded they
  would take gigabytes for COCO-Stuff at n=20), and are decoded per example.

  Args:
    data_config: config.data (train augmentation and image_mode).
    builder: the prepared TFDS builder the pool was drawn from.
    pool: the pool (build_pool).
    layout: this process's rows of the padded global batch (batching.batch_layout).
    seed: seeds the epoch order and augmentation.
    start_step: the first step to produce.
    split_name: TFDS split holding the pool's images (default data_config.train_split).
    include_tag: also yield 'tag' int32 [b], the tag of each image (for checks).

  Returns:
    Iterator of {'image': float32 [b, h, w, 3], 'label': int32 [b, h, w], 'mask': bool [b]}
    with labels in visible-class indices or ignore, b = layout.local_size (mask False on
    padding rows).
  """
  if not pool.entries:
    raise UserError("The few-label pool is empty: no class list had images for it.")
  image_ids = pool.image_ids
  records = _load_pool_records(builder, split_name or data_config.train_split, image_ids)
  slot = {image_id: i for i, image_id in enumerate(image_ids)}
  images = tf.constant([records[i][0] for i in image_ids], tf.string)
  labels = tf.constant([records[i][1] for i in image_ids], tf.string)
  entry_slot = tf.constant([slot[e.image_id] for e in pool.entries], tf.int32)
  entry_table = tf.constant([e.table_index for e in pool.entries], tf.int32)
  entry_tag = tf.constant([e.tag for e in pool.entries], tf.int32)
  tables = tf.constant(pool_label_tables(pool), tf.int32)
  # train_preprocess bakes its table into the graph as a constant; the identity keeps the raw
  # label values (and its 255 padding), and the entry's own table is applied afterwards.
  identity = np.arange(256, dtype=np.int32)
  features = builder.info.features
  num_entries = len(pool.entries)

  def entry_of(index):
    epoch = index // num_entries
    # Negative second seed words keep epoch orders apart from the per-example seeds [seed, k].
    order_seed = tf.stack([tf.constant(seed, tf.int64), -1 - epoch])
    order = tf.argsort(tf.random.stateless_uniform([num_entries], order_seed), stable=True)
    return order[index % num_entries]

  def decode_and_augment(index):
    entry = entry_of(index)
    where = entry_slot[entry]
    example = {
      "image": pipeline.decode_image(images[where]),
      "label": features["label"].decode_example(labels[where]),
    }
    example_seed = tf.stack([tf.constant(seed, tf.int64), index])
    out = pipeline.train_preprocess(example, example_seed, data_config, identity)
    out["label"] = tf.gather(tables[entry_table[entry]], out["label"])
    if include_tag:
      out["tag"] = entry_tag[entry]
    return out

  ds = pipeline.local_examples(layout, start_step)
  ds = ds.map(decode_and_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(max(len(layout.real_rows), 1), drop_remainder=True)
  ds = ds.map(lambda batch: pipeline.pad_to_layout(batch, layout)).prefetch(2)
  return ds.as_numpy_iterator()
