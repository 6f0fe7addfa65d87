"""tf.data input pipeline: preprocessing ops, training stream and padded evaluation batches.

Every random op is stateless and seeded per example, so the stream is a pure function of the
seed: reruns see the same data, and each process reads only its own slice of a split.
"""

from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from spnet_jax.data import splits

# Caffe ImageNet mean in BGR order, what the caffe-derived DeepLab weights expect.
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)
IMAGE_MODES = ("caffe_bgr", "imagenet_rgb", "zero_one", "minus_one_one")


def normalize_image(image: tf.Tensor, mode: str) -> tf.Tensor:
  """uint8 RGB [H, W, 3] -> float32 network input in the convention of `mode`.

  Args:
    image: RGB image with values 0..255.
    mode: 'caffe_bgr' (BGR, 0..255 minus the caffe mean: caffe-derived weights),
      'imagenet_rgb' (RGB in [0, 1] normalised by the ImageNet mean/std: torchvision weights),
      'zero_one' ([0, 1]) or 'minus_one_one' ([-1, 1]).

  Returns:
    float32 image of the same size.
  """
  image = tf.cast(image, tf.float32)
  if mode == "caffe_bgr":
    return image[..., ::-1] - tf.constant(CAFFE_BGR_MEAN, tf.float32)
  if mode == "imagenet_rgb":
    return (image / 255.0 - tf.constant(IMAGENET_RGB_MEAN)) / tf.constant(IMAGENET_RGB_STD)
  if mode == "zero_one":
    return image / 255.0
  if mode == "minus_one_one":
    return image / 127.5 - 1.0
  raise ValueError(f"Unknown config.data.image_mode {mode!r}; valid: {IMAGE_MODES}.")


def resize_label_nearest(label: tf.Tensor, size) -> tf.Tensor:
  """Nearest-neighbour label resize by gathers, PIL's rule: source floor((i + 0.5) * in / out).

  Several times faster than tf.image.resize(method='nearest') on label maps, and it keeps the
  label's dtype.
  """
  shape = tf.cast(tf.shape(label)[:2], tf.float32)
  size = tf.convert_to_tensor(size, tf.int32)
  indices = []
  for axis in range(2):
    out = size[axis]
    source = tf.floor(
      (tf.range(out, dtype=tf.float32) + 0.5) * shape[axis] / tf.cast(out, tf.float32)
    )
    indices.append(tf.minimum(tf.cast(source, tf.int32), tf.cast(shape[axis], tf.int32) - 1))
  return tf.gather(tf.gather(label, indices[0], axis=0), indices[1], axis=1)


def resize_pair(image: tf.Tensor, label: tf.Tensor, size) -> tuple[tf.Tensor, tf.Tensor]:
  """Resizes image (bilinear, half-pixel centres) and label (nearest) to `size` = (h, w)."""
  image = tf.image.resize(image, size, method="bilinear", antialias=False)
  return image, resize_label_nearest(label, size)


def scaled_size(image: tf.Tensor, seed, warp_size: int, min_scale: float, max_scale: float):
  """Training size: (warp_size or the image size) x a factor drawn from [min_scale, max_scale].

  Warping to warp_size and then rescaling is done as one resize to this size: the same geometry
  as two resizes with one interpolation less (and half the work).
  """
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  if warp_size:
    size = tf.constant([warp_size, warp_size], tf.float32)
  if min_scale != 1.0 or max_scale != 1.0:
    size = size * tf.random.stateless_uniform([], seed, min_scale, max_scale)
  return tf.cast(size, tf.int32)


def pad_to_at_least(image, label, size: int):
  """Pads bottom/right so both sides are >= size: image with 0 (the mean), label with ignore."""
  shape = tf.shape(image)
  pad_h = tf.maximum(size - shape[0], 0)
  pad_w = tf.maximum(size - shape[1], 0)
  image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=0.0)
  label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=splits.IGNORE_LABEL)
  return image, label


def random_crop(image, label, seed, size: int):
  """The same random size x size window of image and label (both already >= size)."""
  shape = tf.shape(image)
  offset_y = tf.random.stateless_uniform([], seed, 0, shape[0] - size + 1, dtype=tf.int32)
  offset_x = tf.random.stateless_uniform(
    [], seed + tf.constant([0, 1], tf.int64), 0, shape[1] - size + 1, dtype=tf.int32
  )
  image = image[offset_y : offset_y + size, offset_x : offset_x + size]
  label = label[offset_y : offset_y + size, offset_x : offset_x + size]
  return image, label


def random_flip(image, label, seed):
  """Flips both left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
  label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
  return image, label


def remap_labels(label: tf.Tensor, table: np.ndarray) -> tf.Tensor:
  """Maps uint8 label values through a 256-entry table (see splits.remap_table)."""
  return tf.gather(tf.constant(table, tf.int32), tf.cast(label, tf.int32))


def train_preprocess(example, seed, data_config: ml_collections.ConfigDict, table: np.ndarray):
  """Decoded TFDS example -> (image, label) for training, following config.data.train."""
  cfg = data_config.train
  seeds = tf.random.experimental.stateless_split(seed, 3)
  image = normalize_image(example["image"], data_config.image_mode)
  label = example["label"][..., 0]  # uint8 until the remap: cheaper to move around.
  if cfg.warp_size or cfg.min_scale != 1.0 or cfg.max_scale != 1.0:
    size = scaled_size(image, seeds[0], cfg.warp_size, cfg.min_scale, cfg.max_scale)
    image, label = resize_pair(image, label, size)
  if cfg.crop_size:
    image, label = pad_to_at_least(image, label, cfg.crop_size)
    image, label = random_crop(image, label, seeds[1], cfg.crop_size)
  if cfg.flip:
    image, label = random_flip(image, label, seeds[2])
  return {"image": image, "label": remap_labels(label, table)}


def eval_preprocess(example, data_config: ml_collections.ConfigDict, table: np.ndarray):
  """Decoded TFDS example -> (image, label, mask) for evaluation (no randomness)."""
  cfg = data_config.eval
  image = normalize_image(example["image"], data_config.image_mode)
  label = tf.cast(example["label"][..., 0], tf.int32)
  if cfg.full_resolution:
    # Only the network input is warped; the original label is padded (ignore) to a fixed
    # canvas so that batches stack, and its true size travels along for the logits.
    size = [cfg.warp_size] * 2
    image = tf.image.resize(image, size, method="bilinear", antialias=False)
    label_size = tf.shape(label)
    tf.debugging.assert_less_equal(
      tf.reduce_max(label_size),
      cfg.label_canvas,
      message=f"an image is larger than config.data.eval.label_canvas={cfg.label_canvas}",
    )
    label = remap_labels(label, table)
    label = tf.pad(
      label,
      [[0, cfg.label_canvas - label_size[0]], [0, cfg.label_canvas - label_size[1]]],
      constant_values=splits.IGNORE_LABEL,
    )
    return {"image": image, "label": label, "label_size": label_size, "mask": tf.constant(True)}
  if cfg.warp_size:
    image, label = resize_pair(image, label, [cfg.warp_size] * 2)
  return {"image": image, "label": remap_labels(label, table), "mask": tf.constant(True)}


def create_train_iterator(
  data_config: ml_collections.ConfigDict,
  builder: tfds.core.DatasetBuilder,
  train_classes: tuple[int, ...],
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this process's share of each global training batch, from start_step.

  The stream is a function of the seed and the global step only: example k of the endless
  shuffled sequence is augmented with a seed derived from k, global batch t holds examples
  t*B..(t+1)*B-1, and process p takes the p-th of its equal slices. So a run resumed at step t
  sees exactly the batches an uninterrupted run would, whatever the number of processes. Every
  process reads the records of the split, but decodes and augments only its own share.

  Args:
    data_config: config.data.
    builder: a prepared TFDS builder.
    train_classes: label values trained on, in order (their index is the training label);
      every other value becomes the ignore label.
    global_batch_size: images per step over all processes.
    seed: seeds shuffling and augmentation.
    start_step: the first step to produce (resuming skips the records of earlier steps).

  Returns:
    Iterator of {'image': float32 [b, h, w, 3], 'label': int32 [b, h, w]}, b = the global
    batch divided by the process count.
  """
  processes = jax.process_count()
  local_batch_size = global_batch_size // processes
  features = builder.info.features
  decoders = {"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()}
  ds = builder.as_dataset(split=data_config.train_split, shuffle_files=False, decoders=decoders)
  if data_config.cache:
    ds = ds.cache()
  ds = ds.shuffle(data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate().skip(start_step * global_batch_size)
  # Consecutive groups of local_batch_size examples; group t*P + p belongs to process p.
  ds = ds.batch(local_batch_size).shard(processes, jax.process_index()).unbatch()
  table = splits.remap_table(train_classes)

  def decode_and_augment(index, example):
    example = {
      "image": features["image"].decode_example(example["image"]),
      "label": features["label"].decode_example(example["label"]),
    }
    example_seed = tf.stack([tf.constant(seed, tf.int64), index])
    return train_preprocess(example, example_seed, data_config, table)

  ds = ds.map(decode_and_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(2)
  return ds.as_numpy_iterator()


def eval_num_batches(builder: tfds.core.DatasetBuilder, split: str, local_batch_size: int) -> int:
  """Batches per process: the same on every process, enough for the largest slice."""
  parts = tfds.even_splits(split, n=jax.process_count())
  largest = max(builder.info.splits[part].num_examples for part in parts)
  return -(-largest // local_batch_size)


def create_eval_batches(
  data_config: ml_collections.ConfigDict,
  builder: tfds.core.DatasetBuilder,
  split: str,
  table: np.ndarray,
  local_batch_size: int,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's evaluation batches, padded with masked-out images to a common count.

  Every process yields the same number of batches (so collectives line up) and every test image
  is counted exactly once: padding rows carry mask=False.
  """
  part = tfds.even_splits(split, n=jax.process_count())[jax.process_index()]
  num_batches = eval_num_batches(builder, split, local_batch_size)
  ds = builder.as_dataset(split=part, shuffle_files=False)
  ds = ds.map(
    lambda ex: eval_preprocess(ex, data_config, table),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(local_batch_size).prefetch(2)
  produced = 0
  template = None
  for batch in ds.as_numpy_iterator():
    template = batch
    yield _pad_batch(batch, local_batch_size)
    produced += 1
  if template is None:
    raise ValueError(f"Evaluation split {split!r} slice {part!r} is empty.")
  for _ in range(num_batches - produced):
    yield _pad_batch({k: v[:0] for k, v in template.items()}, local_batch_size)


def _pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads the leading dimension to `size`; padded rows have mask False and ignore labels."""
  count = batch["mask"].shape[0]
  if count == size:
    return batch
  padded = {}
  for key, value in batch.items():
    fill = splits.IGNORE_LABEL if key == "label" else 0
    extra = np.full((size - count, *value.shape[1:]), fill, value.dtype)
    padded[key] = np.concatenate([value, extra])
  return padded
