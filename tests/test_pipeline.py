"""Tests for spnet_jax/data/pipeline.py: every op eagerly, and train_preprocess inside tf.data."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import shapes_zlss
from spnet_jax.data import batching, pipeline, splits

IGNORE = 255
# Image value that encodes a label: red channel = 10 * label (labels 0..16 -> 0..160).
CODE = 10.0


def data_config(**train) -> ml_collections.ConfigDict:
  """config.data of configs/shapes_zlss.py, with DeepLab-style augmentation at small sizes."""
  config = shapes_zlss.get_config().data
  config.train.update(
    {"warp_size": 48, "min_scale": 0.5, "max_scale": 1.5, "crop_size": 32, "flip": True}
  )
  config.train.update(train)
  return config


def block_example(seed: int, size: tuple[int, int] = (48, 48), block: int = 12) -> dict:
  """A TFDS-like example: random labels in blocks (some 255), image encoding the label."""
  rng = np.random.default_rng(seed)
  grid = rng.integers(0, 17, size=(-(-size[0] // block), -(-size[1] // block)))
  grid[rng.random(grid.shape) < 0.1] = IGNORE
  label = np.kron(grid, np.ones((block, block), np.int64))[: size[0], : size[1]]
  image = np.zeros((*size, 3), np.uint8)
  image[..., 0] = np.where(label == IGNORE, 250, label * CODE)
  image[..., 1] = rng.integers(0, 256, size=size)
  image[..., 2] = 77
  return {"image": image, "label": label.astype(np.uint8)[..., None]}


def decode_label(image: np.ndarray) -> np.ndarray:
  """Inverse of the encoding after the minus_one_one normalisation."""
  return (image[..., 0] + 1.0) * 127.5 / CODE


# ---------------------------------------------------------------------------------------------
# Single ops.


@pytest.mark.parametrize("mode", pipeline.IMAGE_MODES)
def test_normalize_image(mode):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
  got = pipeline.normalize_image(tf.constant(image), mode).numpy()
  x = image.astype(np.float64)
  if mode == "caffe_bgr":
    expected = np.stack([x[..., 2] - 104.008, x[..., 1] - 116.669, x[..., 0] - 122.675], axis=-1)
  elif mode == "imagenet_rgb":
    expected = np.stack(
      [
        (x[..., c] / 255 - m) / s
        for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True))
      ],
      axis=-1,
    )
  elif mode == "zero_one":
    expected = x / 255
  else:
    expected = x / 127.5 - 1
  assert got.dtype == np.float32 and got.shape == (4, 5, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_normalize_image_caffe_hand_pixel():
  image = tf.constant([[[10, 20, 30]]], tf.uint8)  # R=10, G=20, B=30.
  got = pipeline.normalize_image(image, "caffe_bgr").numpy()[0, 0]
  np.testing.assert_allclose(got, [30 - 104.008, 20 - 116.669, 10 - 122.675], rtol=1e-6)


def test_normalize_image_unknown_mode():
  with pytest.raises(ValueError, match=r"config\.data\.image_mode"):
    pipeline.normalize_image(tf.zeros((2, 2, 3), tf.uint8), "bgr")


def test_centred_padding_puts_the_smaller_half_on_top_and_left():
  # SPNet: top = pad // 2, bottom = pad - pad // 2 (the same for left / right).
  np.testing.assert_array_equal(pipeline.centred_padding([3, 5], 4).numpy(), [[0, 1], [0, 0]])
  np.testing.assert_array_equal(pipeline.centred_padding([3, 5], 6).numpy(), [[1, 2], [0, 1]])
  np.testing.assert_array_equal(pipeline.centred_padding([7, 9], 6).numpy(), [[0, 0], [0, 0]])


def test_pad_and_crop():
  image = tf.fill((3, 5, 3), 7.0)
  label = tf.fill((3, 5), 4)
  padding = pipeline.centred_padding([3, 5], 6)  # [[1, 2], [0, 1]] -> 6 x 6.
  padded_image, padded_label = pipeline.pad_and_crop(image, label, padding, [0, 0], 6)
  expected = np.full((6, 6), IGNORE)
  expected[1:4, 0:5] = 4
  np.testing.assert_array_equal(padded_label.numpy(), expected)
  np.testing.assert_array_equal(padded_image.numpy()[..., 0], np.where(expected == 4, 7.0, 0.0))
  crop_image, crop_label = pipeline.pad_and_crop(image, label, padding, [2, 1], 3)
  np.testing.assert_array_equal(crop_label.numpy(), expected[2:5, 1:4])
  assert crop_image.shape == (3, 3, 3)


def test_random_crop_offsets_cover_every_placement_and_keep_alignment():
  label = np.arange(12 * 10, dtype=np.int32).reshape(12, 10)
  image = np.stack([label, -label, label * 2], axis=-1).astype(np.float32)
  no_padding = tf.zeros([2, 2], tf.int32)
  offsets = set()
  for s in range(40):
    seed = tf.constant([s, 3 * s + 1], tf.int64)
    offset = pipeline.draw_crop_offset(seed, [12, 10], 6)
    crop_image, crop_label = pipeline.pad_and_crop(
      tf.constant(image), tf.constant(label), no_padding, offset, 6
    )
    crop_image, crop_label = crop_image.numpy(), crop_label.numpy()
    assert crop_image.shape == (6, 6, 3) and crop_label.shape == (6, 6)
    np.testing.assert_array_equal(crop_image[..., 0], crop_label)
    y, x = divmod(int(crop_label[0, 0]), 10)
    assert 0 <= y <= 6 and 0 <= x <= 4
    np.testing.assert_array_equal(crop_label, label[y : y + 6, x : x + 6])
    offsets.add((y, x))
  assert len(offsets) > 10


def test_random_flip_flips_both_together():
  label = np.arange(4 * 5, dtype=np.int32).reshape(4, 5)
  image = np.repeat(label[..., None], 3, axis=-1).astype(np.float32)
  outcomes = set()
  for s in range(16):
    flip_image, flip_label = pipeline.random_flip(
      tf.constant(image), tf.constant(label), tf.constant([s, 0], tf.int64)
    )
    flip_image, flip_label = flip_image.numpy(), flip_label.numpy()
    np.testing.assert_array_equal(flip_image[..., 1], flip_label)
    flipped = bool(np.array_equal(flip_label, label[:, ::-1]))
    assert flipped or np.array_equal(flip_label, label)
    outcomes.add(flipped)
  assert outcomes == {True, False}


def test_remap_labels():
  table = splits.remap_table((0, 3, 7))
  label = tf.constant([[0, 3, 7], [1, 255, 3]], tf.uint8)
  got = pipeline.remap_labels(label, table).numpy()
  np.testing.assert_array_equal(got, [[0, 1, 2], [IGNORE, IGNORE, 1]])
  assert got.dtype == np.int32


# ---------------------------------------------------------------------------------------------
# train_preprocess.


def check_train_output(out: dict, example: dict, table: np.ndarray, crop: int = 32) -> int:
  """Asserts shapes, label values and image/label alignment; returns the pixels checked."""
  image, label = np.asarray(out["image"]), np.asarray(out["label"])
  assert image.shape == (crop, crop, 3) and image.dtype == np.float32
  assert label.shape == (crop, crop) and label.dtype == np.int32
  allowed = set(table[table != IGNORE].tolist()) | {IGNORE}
  assert set(np.unique(label).tolist()) <= allowed
  # The untouched blue channel (77) shows where the image is, and padding is 0.
  blue = image[..., 2]
  inside = np.isclose(blue, 77 / 127.5 - 1, atol=1e-5)
  assert np.all(inside | (blue == 0.0))
  np.testing.assert_array_equal(label[~inside], IGNORE)
  # Bilinear and nearest resizes agree wherever a 5x5 neighbourhood has one label, so there
  # the image must encode the original label that the remapped label came from.
  checked = 0
  original_ids = np.unique(example["label"])
  for y in range(2, crop - 2):
    for x in range(2, crop - 2):
      window = label[y - 2 : y + 3, x - 2 : x + 3]
      if label[y, x] == IGNORE or np.any(window != label[y, x]):
        continue
      if not np.all(inside[y - 2 : y + 3, x - 2 : x + 3]):
        continue
      original = decode_label(image[y, x])
      assert abs(original - round(original)) < 1e-3, (y, x, original)
      original = round(original)
      assert original in original_ids
      assert table[original] == label[y, x], (y, x, original, label[y, x])
      checked += 1
  return checked


def test_train_preprocess_eager():
  config = data_config()
  table = splits.remap_table(splits.get_split("shapes", "default").train_classes)
  checked, sizes = 0, set()
  for s in range(6):
    example = block_example(s)
    out = pipeline.train_preprocess(
      {k: tf.constant(v) for k, v in example.items()},
      tf.constant([s, 11], tf.int64),
      config,
      table,
    )
    checked += check_train_output(out, example, table)
    sizes.add(int(np.sum(np.asarray(out["label"]) != IGNORE)))
  assert checked > 300
  assert len(sizes) > 1  # Different seeds, different augmentations.


def test_train_preprocess_deterministic_per_seed():
  config = data_config()
  table = splits.remap_table(tuple(range(17)))
  example = {k: tf.constant(v) for k, v in block_example(0).items()}
  first = pipeline.train_preprocess(example, tf.constant([5, 6], tf.int64), config, table)
  again = pipeline.train_preprocess(example, tf.constant([5, 6], tf.int64), config, table)
  np.testing.assert_array_equal(first["image"].numpy(), again["image"].numpy())
  np.testing.assert_array_equal(first["label"].numpy(), again["label"].numpy())


def test_train_preprocess_in_tf_data():
  config = data_config()
  table = splits.remap_table(splits.get_split("shapes", "block").train_classes)
  examples = [block_example(10 + i) for i in range(6)]
  ds = tf.data.Dataset.from_tensor_slices(
    {
      "image": np.stack([e["image"] for e in examples]),
      "label": np.stack([e["label"] for e in examples]),
    }
  )
  seeds = tf.data.Dataset.random(seed=3).batch(2)
  ds = tf.data.Dataset.zip(ds, seeds).map(
    lambda ex, s: pipeline.train_preprocess(ex, s, config, table)
  )
  assert ds.element_spec["image"].shape.is_compatible_with([32, 32, 3])
  assert ds.element_spec["label"].shape.is_compatible_with([32, 32])
  assert ds.element_spec["label"].dtype == tf.int32
  outputs = list(ds.as_numpy_iterator())
  assert len(outputs) == 6
  checked = sum(check_train_output(o, e, table) for o, e in zip(outputs, examples, strict=True))
  assert checked > 300


def test_train_preprocess_other_input_size_and_no_augmentation():
  table = splits.remap_table(tuple(range(17)))
  example = block_example(1, size=(40, 56))
  tensors = {k: tf.constant(v) for k, v in example.items()}
  seed = tf.constant([0, 1], tf.int64)
  out = pipeline.train_preprocess(tensors, seed, data_config(), table)
  assert out["image"].shape == (32, 32, 3) and out["label"].shape == (32, 32)
  # All augmentation off: the output is the normalised input and its remapped labels.
  plain = data_config(warp_size=0, min_scale=1.0, max_scale=1.0, crop_size=0, flip=False)
  out = pipeline.train_preprocess(tensors, seed, plain, table)
  np.testing.assert_allclose(
    out["image"].numpy(), example["image"].astype(np.float64) / 127.5 - 1, atol=1e-6
  )
  np.testing.assert_array_equal(out["label"].numpy(), example["label"][..., 0])


# ---------------------------------------------------------------------------------------------
# Evaluation batches.


def test_pad_batch():
  batch = {
    "image": np.ones((2, 3, 3, 3), np.float32),
    "label": np.full((2, 3, 3), 4, np.int32),
    "mask": np.array([True, True]),
  }
  padded = pipeline._pad_batch(batch, 4)
  assert padded["image"].shape == (4, 3, 3, 3) and padded["image"].dtype == np.float32
  np.testing.assert_array_equal(padded["mask"], [True, True, False, False])
  np.testing.assert_array_equal(padded["label"][:2], 4)
  np.testing.assert_array_equal(padded["label"][2:], IGNORE)
  np.testing.assert_array_equal(padded["image"][2:], 0.0)
  np.testing.assert_array_equal(padded["image"][:2], 1.0)
  assert padded["label"].dtype == np.int32
  # An empty batch becomes all padding; a full batch is returned as is.
  empty = pipeline._pad_batch({k: v[:0] for k, v in batch.items()}, 3)
  np.testing.assert_array_equal(empty["mask"], [False] * 3)
  np.testing.assert_array_equal(empty["label"], IGNORE)
  assert pipeline._pad_batch(batch, 2) is batch


def test_eval_preprocess_warp_and_mask():
  config = data_config()
  config.eval.warp_size = 24
  table = splits.eval_label_table(splits.get_split("shapes", "default"))
  example = {k: tf.constant(v) for k, v in block_example(2).items()}
  out = pipeline.eval_preprocess(example, config, table)
  assert out["image"].shape == (24, 24, 3) and out["label"].shape == (24, 24)
  assert bool(out["mask"].numpy())
  # 48 -> 24 nearest picks the even source pixels (OpenCV's rule, floor(i * 2)).
  np.testing.assert_array_equal(
    out["label"].numpy(), table[block_example(2)["label"][0::2, 0::2, 0]]
  )


@pytest.mark.parametrize("size", [(7, 5), (33, 40), (48, 48), (100, 13)])
def test_resize_label_nearest_uses_opencvs_rule(size):
  rng = np.random.default_rng(1)
  label = rng.integers(0, 256, size=(21, 17)).astype(np.uint8)
  out = pipeline.resize_label_nearest(tf.constant(label), size).numpy()
  rows = [min(int(np.floor(i * 21 / size[0])), 20) for i in range(size[0])]
  cols = [min(int(np.floor(j * 17 / size[1])), 16) for j in range(size[1])]
  np.testing.assert_array_equal(out, label[np.ix_(rows, cols)])
  assert out.dtype == np.uint8


def _layout(batch, devices=1, processes=1, process=0, accumulation=1):
  return batching.batch_layout(batch, devices, processes, process, accumulation)


def test_training_stream_is_a_function_of_the_step(fast_config):
  from spnet_jax.data import datasets

  builder = datasets.get_builder(fast_config)
  classes = splits.get_split("shapes", "default").train_classes
  stream = pipeline.create_train_iterator(fast_config.data, builder, classes, _layout(4), seed=3)
  first = [next(stream) for _ in range(20)]  # 80 examples: more than one epoch of 48.
  resumed = pipeline.create_train_iterator(
    fast_config.data, builder, classes, _layout(4), seed=3, start_step=13
  )
  for step in range(13, 20):
    batch = next(resumed)
    np.testing.assert_array_equal(batch["image"], first[step]["image"])
    np.testing.assert_array_equal(batch["label"], first[step]["label"])
    assert batch["mask"].all()
  other = next(
    pipeline.create_train_iterator(fast_config.data, builder, classes, _layout(4), seed=4)
  )
  assert not np.array_equal(other["image"], first[0]["image"])


def _cv2_crop(image_bgr, label, warp, scale, crop, offset):
  """The training geometry written with OpenCV calls: warp, rescale, centred pad, crop."""
  import cv2

  image = cv2.resize(image_bgr, (warp, warp), interpolation=cv2.INTER_LINEAR)
  label = cv2.resize(label, (warp, warp), interpolation=cv2.INTER_NEAREST)
  image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
  label = cv2.resize(label, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
  pads = [max(max(warp, crop) - n, 0) for n in label.shape]
  border = {"top": pads[0] // 2, "bottom": pads[0] - pads[0] // 2}
  border.update(left=pads[1] // 2, right=pads[1] - pads[1] // 2)
  image = cv2.copyMakeBorder(image, borderType=cv2.BORDER_CONSTANT, value=(0, 0, 0), **border)
  label = cv2.copyMakeBorder(label, borderType=cv2.BORDER_CONSTANT, value=IGNORE, **border)
  y, x = offset
  return image[y : y + crop, x : x + crop], label[y : y + crop, x : x + crop]


@pytest.mark.parametrize(
  ("size", "scale", "offset"),
  [
    ((60, 80), 0.5, (0, 0)),
    ((60, 80), 0.77, (5, 11)),
    ((45, 45), 1.0, (9, 3)),
    ((90, 31), 1.4, (20, 30)),
  ],
)
def test_augment_equals_the_opencv_geometry(size, scale, offset):
  rng = np.random.default_rng(sum(size))
  image = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
  label = rng.integers(0, 20, size).astype(np.uint8)
  cfg = data_config(warp_size=48, min_scale=0.5, max_scale=1.5, crop_size=32).train
  got_image, got_label = pipeline.augment(
    tf.constant(image),
    tf.constant(label),
    cfg,
    tf.constant(scale, tf.float64),
    tf.constant(offset, tf.int32),
    "caffe_bgr",
  )
  bgr = image[..., ::-1].astype(np.float32) - np.array(pipeline.CAFFE_BGR_MEAN, np.float32)
  want_image, want_label = _cv2_crop(bgr, label, 48, scale, 32, offset)
  np.testing.assert_array_equal(got_label.numpy(), want_label)
  np.testing.assert_allclose(got_image.numpy(), want_image, atol=0.01)
