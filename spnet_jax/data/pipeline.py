"""tf.data input pipeline: preprocessing ops, training stream and padded evaluation batches.

Every random op is stateless and seeded per example, so the stream is a pure function of the
seed: reruns see the same data, and each process reads only its own rows of each batch
(records.py reads any record by index).
"""

from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from spnet_jax.data import batching, splits
from spnet_jax.data import records as records_lib
from spnet_jax.errors import UserError

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
  raise UserError(f"Unknown config.data.image_mode {mode!r}; valid: {IMAGE_MODES}.")


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Image file bytes -> uint8 RGB [H, W, 3], JPEGs with libjpeg's accurate integer IDCT.

  TensorFlow's default JPEG decoder uses the fast IDCT, which differs from what OpenCV (and so
  SPNet's code) decodes by up to 4 grey levels in most pixels; the accurate one gives the same
  pixels. PNGs (the shapes benchmark) decode as before.
  """
  image = tf.cond(
    tf.io.is_jpeg(encoded),
    lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
    lambda: tf.io.decode_png(encoded, channels=3),
  )
  image.set_shape([None, None, 3])
  return image


def nearest_source(index, in_size, step) -> tf.Tensor:
  """OpenCV's INTER_NEAREST: output index i reads input min(floor(i * step), in - 1), in float64.

  `step` is input pixels per output pixel as OpenCV computes it: 1 / (out / in) for a resize to
  a given size, 1 / fx for a resize by a factor fx.
  """
  positions = tf.cast(index, tf.float64) * step
  return tf.minimum(tf.cast(tf.floor(positions), tf.int32), tf.cast(in_size, tf.int32) - 1)


def nearest_indices(in_size, out_size, step) -> tf.Tensor:
  """nearest_source of every output index 0..out_size-1."""
  return nearest_source(tf.range(out_size), in_size, step)


def size_step(in_size, out_size) -> tf.Tensor:
  """Input pixels per output pixel of a resize to a given size, as OpenCV computes it."""
  return 1.0 / (tf.cast(out_size, tf.float64) / tf.cast(in_size, tf.float64))


def resize_label_nearest(label: tf.Tensor, size) -> tf.Tensor:
  """Nearest-neighbour label resize to `size` = (h, w), OpenCV's rule (SPNet's cv2.resize).

  Gathers: several times faster than tf.image.resize(method='nearest') on label maps, and they
  keep the label's dtype.
  """
  shape = tf.shape(label)[:2]
  size = tf.convert_to_tensor(size, tf.int32)
  rows = nearest_indices(shape[0], size[0], size_step(shape[0], size[0]))
  cols = nearest_indices(shape[1], size[1], size_step(shape[1], size[1]))
  return tf.gather(tf.gather(label, rows, axis=0), cols, axis=1)


def resize_pair(image: tf.Tensor, label: tf.Tensor, size) -> tuple[tf.Tensor, tf.Tensor]:
  """Resizes image (bilinear, half-pixel centres: OpenCV's INTER_LINEAR) and label (nearest)."""
  image = tf.image.resize(image, size, method="bilinear", antialias=False)
  return image, resize_label_nearest(label, size)


def draw_scale(seed, min_scale: float, max_scale: float) -> tf.Tensor:
  """The random rescale factor (float64, as Python's random.uniform draws SPNet's)."""
  return tf.random.stateless_uniform([], seed, min_scale, max_scale, dtype=tf.float64)


def scaled_size(size, scale) -> tf.Tensor:
  """OpenCV's output size for a resize by factor `scale`: round(size * scale), half to even."""
  return tf.cast(tf.round(tf.cast(size, tf.float64) * scale), tf.int32)


def centred_padding(size, target: int) -> tf.Tensor:
  """[[top, bottom], [left, right]] that pad `size` (h, w) to at least target, centred.

  SPNet pads the scaled image to max(base size, crop size) with the extra half (rounded down)
  on top and left.
  """
  size = tf.convert_to_tensor(size, tf.int32)
  total = tf.maximum(target - size, 0)
  return tf.stack([total // 2, total - total // 2], axis=1)


def draw_crop_offset(seed, padded_size, crop_size: int) -> tf.Tensor:
  """Random (y, x) of a crop_size window in padded_size, each uniform over all placements."""
  offset_y = tf.random.stateless_uniform(
    [], seed, 0, padded_size[0] - crop_size + 1, dtype=tf.int32
  )
  offset_x = tf.random.stateless_uniform(
    [], seed + tf.constant([0, 1], tf.int64), 0, padded_size[1] - crop_size + 1, dtype=tf.int32
  )
  return tf.stack([offset_y, offset_x])


def pad_and_crop(image, label, padding, offset, crop_size: int):
  """Pads (image 0: the mean; label ignore) by `padding`, then takes the window at `offset`."""
  image = tf.pad(image, tf.concat([padding, [[0, 0]]], 0), constant_values=0.0)
  label = tf.pad(label, padding, constant_values=splits.IGNORE_LABEL)
  window = slice(offset[0], offset[0] + crop_size), slice(offset[1], offset[1] + crop_size)
  return image[window], label[window]


def random_flip(image, label, seed):
  """Flips both left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
  label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
  return image, label


def remap_labels(label: tf.Tensor, table: np.ndarray) -> tf.Tensor:
  """Maps uint8 label values through a 256-entry table (see splits.remap_table)."""
  return tf.gather(tf.constant(table, tf.int32), tf.cast(label, tf.int32))


def _resample(image, size, scale, translation) -> tf.Tensor:
  """Bilinear samples (half-pixel centres, edges clamped) at (i + 0.5 - t) / scale - 0.5.

  ScaleAndTranslate with the triangle kernel and no antialiasing is cv2's INTER_LINEAR: taps
  outside the image are dropped and the rest renormalised, which clamps at the edges.
  """
  scale = tf.cast(scale, tf.float32)
  return tf.raw_ops.ScaleAndTranslate(
    images=image[None],
    size=size,
    scale=scale,
    translation=tf.cast(translation, tf.float32),
    kernel_type="triangle",
    antialias=False,
  )[0]


def warped_and_scaled_crop(image, label, cfg, scale, offset, image_mode: str):
  """SPNet's two resizes, padding and crop, computed over what the crop reads only.

  Equal (labels exactly, images to float rounding) to cv2.resize to warp_size, cv2.resize by
  `scale`, centred padding to max(warp_size, crop_size) and the crop at the offset, but it warps
  only the rows and columns of the warped image that the crop's samples read, samples the second
  resize at the crop's pixels only, gathers the labels through both index maps at once, and
  normalises the crop rather than the source image (normalisation is affine per channel, so it
  commutes with bilinear sampling; padding is set after it, to 0 as SPNet's).

  Args:
    image: uint8 RGB [H, W, 3].
    label: [H, W] raw label values.
    cfg: config.data.train (warp_size may be 0: the image's own size).
    scale: float64 rescale factor.
    offset: int64 stateless seed that draws the crop's placement, or the int32 (y, x) itself.
    image_mode: config.data.image_mode.

  Returns:
    (float32 image [crop, crop, 3], label [crop, crop]).
  """
  crop = cfg.crop_size
  in_size = tf.shape(label)[:2]
  warped = tf.constant([cfg.warp_size] * 2, tf.int32) if cfg.warp_size else in_size
  scaled = scaled_size(warped, scale)
  # cv2.resize copies when the output size equals the input's, whatever the factor.
  scale = tf.where(tf.reduce_all(scaled == warped), tf.constant(1.0, tf.float64), scale)
  padding = centred_padding(scaled, max(cfg.warp_size, crop))
  if offset.dtype == tf.int64:
    offset = draw_crop_offset(offset, scaled + tf.reduce_sum(padding, axis=1), crop)
  start = offset - padding[:, 0]  # The crop's origin in scaled-image coordinates.
  # Warped rows / columns the crop's bilinear samples read, with a margin of one.
  first = (tf.cast(start, tf.float64) + 0.5) / scale - 0.5
  last = (tf.cast(start + crop, tf.float64) - 0.5) / scale - 0.5
  low = tf.clip_by_value(tf.cast(tf.floor(first), tf.int32) - 1, 0, warped - 1)
  high = tf.clip_by_value(tf.cast(tf.math.ceil(last), tf.int32) + 2, low + 1, warped)
  warp_scale = tf.cast(warped, tf.float64) / tf.cast(in_size, tf.float64)
  part = _resample(image, high - low, warp_scale, -low)
  scale2 = tf.stack([scale, scale])
  window = tf.constant([crop, crop], tf.int32)
  image = _resample(
    part, window, scale2, tf.cast(low, tf.float64) * scale2 - tf.cast(start, tf.float64)
  )
  image = normalize_image(image, image_mode)
  # Labels: crop pixel -> scaled -> warped -> source index (OpenCV's nearest rule, twice).
  step = 1.0 / scale
  indices, inside = [], []
  for axis in range(2):
    index = start[axis] + tf.range(crop)
    inside.append((index >= 0) & (index < scaled[axis]))
    in_warped = nearest_source(tf.maximum(index, 0), warped[axis], step)
    warp_step = size_step(in_size[axis], warped[axis])
    indices.append(nearest_source(in_warped, in_size[axis], warp_step))
  label = tf.gather(tf.gather(label, indices[0], axis=0), indices[1], axis=1)
  mask = inside[0][:, None] & inside[1][None, :]
  image = tf.where(mask[..., None], image, 0.0)
  label = tf.where(mask, label, tf.cast(splits.IGNORE_LABEL, label.dtype))
  return image, label


def augment(image, label, cfg: ml_collections.ConfigDict, scale, offset, image_mode: str):
  """SPNet's training geometry and normalisation, without the flip.

  As SPNet's data loader does it: cv2.resize to warp_size, cv2.resize by the factor, pad to
  max(warp_size, crop_size) centred, crop.

  Args:
    image: uint8 RGB [H, W, 3].
    label: [H, W] raw label values.
    cfg: config.data.train.
    scale: float64 rescale factor, or None for no rescale.
    offset: int64 stateless seed that draws the crop's placement, or the int32 (y, x) itself.
    image_mode: config.data.image_mode.

  Returns:
    (float32 network input, label) of the crop (the whole image when cfg.crop_size is 0).
  """
  if scale is not None:  # config_validation: a rescale comes with a crop.
    return warped_and_scaled_crop(image, label, cfg, scale, offset, image_mode)
  image = normalize_image(image, image_mode)
  if cfg.warp_size:
    image, label = resize_pair(image, label, [cfg.warp_size] * 2)
  if not cfg.crop_size:
    return image, label
  size = tf.shape(label)[:2]
  padding = centred_padding(size, max(cfg.warp_size, cfg.crop_size))
  if offset.dtype == tf.int64:
    offset = draw_crop_offset(offset, size + tf.reduce_sum(padding, axis=1), cfg.crop_size)
  return pad_and_crop(image, label, padding, offset, cfg.crop_size)


def train_preprocess(example, seed, data_config: ml_collections.ConfigDict, table: np.ndarray):
  """Decoded TFDS example -> (image, label) for training, following config.data.train."""
  cfg = data_config.train
  seeds = tf.random.experimental.stateless_split(seed, 3)
  label = example["label"][..., 0]  # uint8 until the remap: cheaper to move around.
  scale = None
  if cfg.min_scale != 1.0 or cfg.max_scale != 1.0:
    scale = draw_scale(seeds[0], cfg.min_scale, cfg.max_scale)
  image, label = augment(example["image"], label, cfg, scale, seeds[1], data_config.image_mode)
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


def local_examples(layout: batching.BatchLayout, start_step: int) -> tf.data.Dataset:
  """Stream positions k (int64) of this process's rows of each global batch from start_step.

  Global batch t holds stream examples t*B..(t+1)*B-1 in rows 0..B-1 (batching.py); a process
  whose rows are all padding reads row 0's example, only to pad with (pad_to_layout masks it).
  """
  rows = layout.real_rows or range(0, 1)
  first, count, batch = rows.start, len(rows), layout.batch_size
  ds = tf.data.Dataset.counter(start=start_step * count, dtype=tf.int64)
  return ds.map(lambda i: (i // count) * batch + first + i % count)


def pad_to_layout(batch: dict[str, tf.Tensor], layout: batching.BatchLayout) -> dict:
  """This process's real rows -> its layout.local_size rows; padding rows are masked.

  Padding rows repeat the last real row with a zero image and ignore labels, and 'mask' is
  False for them (self-training must not pseudo-label them; evaluation must not count them).
  """
  real = len(layout.real_rows)
  mask = tf.range(layout.local_size) < real
  if real == layout.local_size:  # No padding rows: spare the copies.
    return {**batch, "mask": mask}
  rows = tf.minimum(tf.range(layout.local_size), tf.shape(batch["label"])[0] - 1)
  out = {key: tf.gather(value, rows) for key, value in batch.items()}
  label_mask = tf.reshape(mask, [-1] + [1] * (out["label"].shape.rank - 1))
  out["label"] = tf.where(label_mask, out["label"], splits.IGNORE_LABEL)
  image_mask = tf.reshape(mask, [-1] + [1] * (out["image"].shape.rank - 1))
  out["image"] = tf.where(image_mask, out["image"], tf.zeros_like(out["image"]))
  out["mask"] = mask
  return out


def create_train_iterator(
  data_config: ml_collections.ConfigDict,
  builder: tfds.core.DatasetBuilder,
  train_classes: tuple[int, ...],
  layout: batching.BatchLayout,
  seed: int,
  start_step: int = 0,
  split: records_lib.SplitRecords | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this process's rows of each global training batch, from start_step.

  The stream is a function of the seed and the global step only: example k of the endless
  stream is record records.EpochOrder(seed)[k] (a new permutation of the split every epoch),
  augmented with a seed derived from k; global batch t holds examples t*B..(t+1)*B-1. Each
  process reads only the records of its own rows, and a run resumed at step t reads from step
  t on: it sees exactly the batches an uninterrupted run would, whatever the number of
  processes, without reading any record of earlier steps.

  Args:
    data_config: config.data.
    builder: a prepared TFDS builder (ArrayRecord files).
    train_classes: label values trained on, in order (their index is the training label);
      every other value becomes the ignore label.
    layout: this process's rows of the padded global batch (batching.batch_layout).
    seed: seeds the epoch orders and augmentation.
    start_step: the first step to produce.
    split: the training split's records (default: opened here); benchmarks pass their own to
      read its counters.

  Returns:
    Iterator of {'image': float32 [b, h, w, 3], 'label': int32 [b, h, w], 'mask': bool [b]},
    b = layout.local_size (mask False on padding rows).
  """
  if split is None:
    split = records_lib.SplitRecords(builder, data_config.train_split, cache=data_config.cache)
  order = records_lib.EpochOrder(len(split), seed)
  table = splits.remap_table(train_classes)
  count = max(len(layout.real_rows), 1)

  def decode_and_augment(index, serialized):
    example = split.parse(serialized)
    example = {
      "image": decode_image(example["image"]),
      "label": split.features["label"].decode_example(example["label"]),
    }
    example_seed = tf.stack([tf.constant(seed, tf.int64), index])
    return train_preprocess(example, example_seed, data_config, table)

  examples = local_examples(layout, start_step).batch(count)
  ds = split.read_batches(examples, record_index=order.records).unbatch()
  ds = ds.map(decode_and_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(count, drop_remainder=True)
  ds = ds.map(lambda batch: pad_to_layout(batch, layout)).prefetch(2)
  return ds.as_numpy_iterator()


def eval_num_batches(num_records: int, local_batch_size: int) -> int:
  """Batches per process: the same on every process, enough for the largest part."""
  largest = -(-num_records // jax.process_count())
  return -(-largest // local_batch_size)


def create_eval_batches(
  data_config: ml_collections.ConfigDict,
  builder: tfds.core.DatasetBuilder,
  split: str,
  table: np.ndarray,
  local_batch_size: int,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's evaluation batches, padded with masked-out images to a common count.

  Process p reads its contiguous part of the split only. Every process yields the same number
  of batches (so collectives line up) and every test image is counted exactly once: padding
  rows carry mask=False.
  """
  records = records_lib.SplitRecords(builder, split)
  part = records_lib.process_part(len(records), jax.process_count(), jax.process_index())
  num_batches = eval_num_batches(len(records), local_batch_size)
  ds = records_lib.split_dataset(records, part, decode_label=True)
  ds = ds.map(
    lambda ex: eval_preprocess({**ex, "image": decode_image(ex["image"])}, data_config, table),
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
    raise UserError(f"Evaluation split {split!r} has no images for process {jax.process_index()}.")
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
