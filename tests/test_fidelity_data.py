"""The input recipe against SPNet's own code: augmentation, label resizes, JPEG decoding.

The official code (../shared/spnet_reference/original/) runs as the oracle on the same inputs and
the same random draws (its `random` calls are replaced by the values under test). Skipped when
that folder is absent.
"""

import io
import random

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import coco_zlss
from spnet_jax.data import pipeline
from spnet_jax.train import losses

from . import reference_oracle

reference_oracle.skip_unless_available()

CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)  # SPNet's configs: IMAGE.MEAN B, G, R.


def photo_like(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A smooth uint8 RGB image and a blocky label map (values 0..181 and some 255)."""
  rng = np.random.default_rng(seed)
  coarse = rng.random((height // 8 + 2, width // 8 + 2, 3)) * 255
  image = tf.image.resize(coarse[None], (height, width)).numpy()[0]
  image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
  blocks = rng.integers(0, 182, (height // 5 + 1, width // 5 + 1))
  blocks[rng.random(blocks.shape) < 0.1] = 255
  label = np.repeat(np.repeat(blocks, 5, 0), 5, 1)[:height, :width].astype(np.uint8)
  return image, label


def original_loader(scale):
  """SPNet's training (scale=(0.5, 1.5)) or evaluation (scale=None) dataset object."""
  cocostuff = reference_oracle.import_original_module("libs.datasets.cocostuff")
  return cocostuff.LoaderZLS(
    train=["images/x.png"],
    test=["images/x.png"],
    root=".",
    split="train" if scale else "novel",
    base_size=513,
    crop_size=321,
    mean=CAFFE_MEAN_BGR,
    warp=True,
    scale=scale,
    flip=bool(scale),
  )


def original_transform(loader, image_rgb, label, monkeypatch, scale=1.0, offset=(0, 0)):
  """SPNet's _transform with its random scale, crop placement and flip fixed (no flip)."""
  placement = iter(offset)
  monkeypatch.setattr(random, "uniform", lambda low, high: scale)
  monkeypatch.setattr(random, "randint", lambda low, high: min(next(placement), high))
  monkeypatch.setattr(random, "random", lambda: 0.9)  # >= 0.5: no flip.
  image, label = loader._transform(image_rgb[..., ::-1].astype(np.float32), label.astype(np.int64))
  return image.transpose(1, 2, 0), label


def ours(image_rgb, label, data_config, scale, offset):
  scale = None if scale is None else tf.constant(scale, tf.float64)
  out_image, out_label = pipeline.augment(
    tf.constant(image_rgb),
    tf.constant(label),
    data_config.train,
    scale,
    tf.constant(offset, tf.int32),
    data_config.image_mode,
  )
  return out_image.numpy(), out_label.numpy()


# (scale factor, crop offset): scales 0.5 (513 * 0.5 = 256.5, a rounding tie, and an exact 2x
# downscale), below and above 1, 0.9999 (rounds back to 513: OpenCV copies), 1.5; offsets at the
# corners and inside the padded image.
CASES = [
  (0.5, (0, 0)),
  (0.5, (192, 100)),
  (0.61, (57, 192)),
  (0.75, (0, 0)),
  (0.9999, (192, 3)),
  (1.0, (100, 40)),
  (1.2345, (312, 312)),
  (1.5, (449, 0)),
  (1.5, (130, 301)),
]


@pytest.mark.parametrize(("scale", "offset"), CASES)
@pytest.mark.parametrize("size", [(427, 640), (500, 375)])
def test_train_crop_equals_spnets(scale, offset, size, monkeypatch):
  image, label = photo_like(*size, seed=sum(size))
  want_image, want_label = original_transform(
    original_loader((0.5, 1.5)), image, label, monkeypatch, scale, offset
  )
  got_image, got_label = ours(image, label, coco_zlss.get_config().data, scale, offset)
  assert got_label.shape == want_label.shape == (321, 321)
  np.testing.assert_array_equal(got_label, want_label)
  np.testing.assert_allclose(got_image, want_image, atol=0.01)


def test_padding_is_centred_on_513_and_a_single_resize_is_not_spnets(monkeypatch):
  image, label = photo_like(427, 640, seed=3)
  # At scale 0.6 the 308 px image is padded to 513 with 102 rows on top: a crop at the origin
  # starts in the padding.
  _, want = original_transform(original_loader((0.5, 1.5)), image, label, monkeypatch, 0.6)
  assert np.all(want[:102] == 255) and np.any(want[102] != 255)
  _, got = ours(image, label, coco_zlss.get_config().data, 0.6, (0, 0))
  np.testing.assert_array_equal(got, want)
  # One resize straight to the scaled size (what this project did before) gives other labels:
  # the test can tell the two apart.
  _, once = pipeline.resize_pair(tf.zeros([427, 640, 3]), tf.constant(label), [308, 308])
  assert np.mean(once.numpy()[:219, :219] != want[102:, 102:]) > 0.01


@pytest.mark.parametrize("size", [(427, 640), (513, 513), (281, 500)])
def test_eval_input_and_labels_equal_spnets(size, monkeypatch):
  image, label = photo_like(*size, seed=7)
  want_image, want_label = original_transform(original_loader(None), image, label, monkeypatch)
  data_config = coco_zlss.get_config().data
  identity = np.arange(256, dtype=np.int32)
  example = {"image": tf.constant(image), "label": tf.constant(label[..., None])}
  out = pipeline.eval_preprocess(example, data_config, identity)
  np.testing.assert_array_equal(out["label"].numpy(), want_label)
  np.testing.assert_allclose(out["image"].numpy(), want_image, atol=0.01)


SIZES = [(427, 640, 513, 513), (513, 513, 41, 41), (321, 321, 41, 41), (321, 321, 21, 21)]
SIZES += [(321, 321, 31, 31), (41, 41, 321, 321), (7, 9, 5, 13), (500, 375, 513, 513)]


@pytest.mark.parametrize(("in_h", "in_w", "out_h", "out_w"), SIZES)
def test_label_resizes_equal_opencvs_nearest(in_h, in_w, out_h, out_w):
  rng = np.random.default_rng(in_h * out_w)
  label = rng.integers(0, 256, (in_h, in_w)).astype(np.uint8)
  want = cv2.resize(label, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
  got = pipeline.resize_label_nearest(tf.constant(label), (out_h, out_w)).numpy()
  np.testing.assert_array_equal(got, want)
  got = np.asarray(losses.resize_labels_nearest(label[None], out_h, out_w))[0]
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("size", [321, 161, 81, 41, 21, 11])
def test_loss_labels_equal_spnets_resize_target(size):
  import torch

  train = reference_oracle.import_original_train()
  rng = np.random.default_rng(size)
  labels = rng.integers(-1, 20, (2, 321, 321))
  want = train.resize_target(torch.from_numpy(labels), size).numpy()
  got = np.asarray(losses.resize_labels_nearest(labels.astype(np.int32), size, size))
  np.testing.assert_array_equal(got, want)


def test_jpeg_pixels_equal_opencvs(tmp_path):
  image, _ = photo_like(375, 500, seed=11)
  path = tmp_path / "photo.jpg"
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=90)  # 4:2:0 chroma, as COCO's.
  path.write_bytes(buffer.getvalue())
  want = cv2.imread(str(path), cv2.IMREAD_COLOR)  # What SPNet's loader reads (BGR).
  got = pipeline.decode_image(tf.constant(buffer.getvalue())).numpy()[..., ::-1]
  np.testing.assert_array_equal(got, want)
  # TensorFlow's default (fast) IDCT would not match: the test can tell.
  fast = tf.io.decode_jpeg(buffer.getvalue(), channels=3).numpy()[..., ::-1]
  assert np.mean(fast != want) > 0.05


def test_png_images_decode_unchanged():
  image, _ = photo_like(40, 30, seed=2)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  np.testing.assert_array_equal(pipeline.decode_image(tf.constant(buffer.getvalue())), image)


def test_flip_comes_after_the_crop_and_flips_both(monkeypatch):
  image, label = photo_like(427, 640, seed=5)
  loader = original_loader((0.5, 1.5))
  _, want_label = original_transform(loader, image, label, monkeypatch, 0.8, (40, 90))
  monkeypatch.setattr(random, "random", lambda: 0.1)  # < 0.5: SPNet flips.
  placement = iter((40, 90))
  monkeypatch.setattr(random, "randint", lambda low, high: min(next(placement), high))
  flipped = loader._transform(image[..., ::-1].astype(np.float32), label.astype(np.int64))
  np.testing.assert_array_equal(flipped[1], want_label[:, ::-1])
  # This project's flip (pipeline.random_flip) mirrors the crop it is given, image and label.
  got_image, got_label = ours(image, label, coco_zlss.get_config().data, 0.8, (40, 90))
  seed = next(s for s in range(50) if tf.random.stateless_uniform([], [s, 0]) < 0.5)
  got_image, got_label = pipeline.random_flip(got_image, got_label, tf.constant([seed, 0]))
  np.testing.assert_array_equal(got_label, flipped[1])
  np.testing.assert_allclose(got_image, flipped[0].transpose(1, 2, 0), atol=0.01)
