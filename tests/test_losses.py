"""Tests for spnet_jax/train/losses.py against NumPy references and hand-computed values."""

import math

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spnet_jax.train import losses

IGNORE = 255
# Jitted once per shape: op-by-op dispatch would compile every primitive separately.
cross_entropy = jax.jit(losses.cross_entropy_with_ignore)
hvsl = jax.jit(losses.hinge_visual_semantic_loss)
resize_nearest = jax.jit(losses.resize_labels_nearest, static_argnums=(1, 2))
segmentation_loss = jax.jit(losses.segmentation_loss, static_argnums=(2, 3))


# ---------------------------------------------------------------------------------------------
# Independent references.


def np_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean -log softmax over non-ignored pixels, by an explicit loop in float64."""
  logits = logits.astype(np.float64).reshape(-1, logits.shape[-1])
  labels = labels.reshape(-1)
  total, count = 0.0, 0
  for row, label in zip(logits, labels, strict=True):
    if label == IGNORE:
      continue
    top = row.max()
    log_z = top + math.log(sum(math.exp(v - top) for v in row))
    total += log_z - row[label]
    count += 1
  return total / count if count else 0.0


def np_bilinear_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """[B, H, W, C] bilinear resize, half-pixel centres (align_corners=False), no antialias."""

  def taps(out: int, n: int):
    src = np.maximum((np.arange(out) + 0.5) * n / out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    return i0, np.minimum(i0 + 1, n - 1), src - i0

  y0, y1, ly = taps(out_h, x.shape[1])
  x0, x1, lx = taps(out_w, x.shape[2])
  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      out[:, i, j] = (
        (1 - ly[i]) * (1 - lx[j]) * x[:, y0[i], x0[j]]
        + (1 - ly[i]) * lx[j] * x[:, y0[i], x1[j]]
        + ly[i] * (1 - lx[j]) * x[:, y1[i], x0[j]]
        + ly[i] * lx[j] * x[:, y1[i], x1[j]]
      )
  return out


def cv2_nearest(labels: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """[B, H, W] uint8 labels resized one image at a time by OpenCV's INTER_NEAREST (SPNet's)."""
  return np.stack(
    [cv2.resize(lab, (out_w, out_h), interpolation=cv2.INTER_NEAREST) for lab in labels]
  )


# ---------------------------------------------------------------------------------------------
# Cross-entropy.


def test_cross_entropy_hand_case():
  # Pixel a: equal logits -> ln 2. Pixel b: p(label) = 1 / (3 + 1) -> ln 4. Pixel c: ignored.
  logits = jnp.array([[[[0.0, 0.0], [math.log(3.0), 0.0], [50.0, -50.0]]]])
  labels = jnp.array([[[0, 1, IGNORE]]], jnp.int32)
  loss = cross_entropy(logits, labels)
  np.testing.assert_allclose(float(loss), 1.5 * math.log(2.0), rtol=1e-6)


def test_cross_entropy_matches_numpy_with_ignore():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(2, 5, 4, 6)).astype(np.float32)
  labels = rng.integers(0, 6, size=(2, 5, 4)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.3] = IGNORE
  got = cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(float(got), np_cross_entropy(logits, labels), rtol=1e-5)


def test_cross_entropy_all_ignored_is_zero():
  logits = jnp.ones((1, 3, 3, 4))
  labels = jnp.full((1, 3, 3), IGNORE, jnp.int32)
  loss = cross_entropy(logits, labels)
  assert float(loss) == 0.0
  grad = jax.grad(lambda x: cross_entropy(x, labels))(logits)
  assert np.all(np.isfinite(np.asarray(grad)))


# ---------------------------------------------------------------------------------------------
# HVSL.


def test_hvsl_two_classes_hand_case():
  # With 2 classes the wrong class is forced: relu(1 + s_other - s_true).
  logits = jnp.array([[[[2.0, 0.5], [0.0, 0.3], [1.0, 4.0], [7.0, 7.0]]]])
  labels = jnp.array([[[0, 1, 0, IGNORE]]], jnp.int32)
  # Pixel costs: max(0, 1 + 0.5 - 2) = 0; max(0, 1 + 0 - 0.3) = 0.7; max(0, 1 + 4 - 1) = 4.
  for seed in range(3):
    loss = hvsl(logits, labels, jax.random.key(seed))
    np.testing.assert_allclose(float(loss), (0.0 + 0.7 + 4.0) / 3, rtol=1e-6)
  loss = hvsl(logits, labels, jax.random.key(0), margin=2.0)
  np.testing.assert_allclose(float(loss), (0.5 + 1.7 + 5.0) / 3, rtol=1e-6)


def test_hvsl_sampled_class_is_wrong_and_uniform():
  num_classes, true_label, draws = 5, 2, 4000
  # Score 0 for the true class and 10 * (c + 1) for a wrong class c: the single-pixel loss
  # 1 + 10 * (c + 1) reveals the sampled class; a loss of 1 would mean the true class was drawn.
  scores = np.array([10.0 * (c + 1) for c in range(num_classes)], np.float32)
  scores[true_label] = 0.0
  logits = jnp.asarray(scores).reshape(1, 1, 1, num_classes)
  labels = jnp.full((1, 1, 1), true_label, jnp.int32)
  keys = jax.random.split(jax.random.key(7), draws)
  values = jax.jit(jax.vmap(lambda k: losses.hinge_visual_semantic_loss(logits, labels, k)))(keys)
  sampled = np.rint((np.asarray(values) - 1.0) / 10.0).astype(int) - 1
  assert not np.any(sampled == true_label)
  assert set(np.unique(sampled)) == {0, 1, 3, 4}
  counts = np.bincount(sampled, minlength=num_classes)[[0, 1, 3, 4]]
  # Expected 1000 each; the standard deviation is about 27.
  assert np.all(np.abs(counts - draws / 4) < 150), counts


def test_hvsl_matches_numpy_given_the_same_draws():
  rng = np.random.default_rng(1)
  num_classes = 7
  logits = rng.normal(size=(2, 4, 5, num_classes)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=(2, 4, 5)).astype(np.int32)
  labels[0, 0, :3] = IGNORE
  key = jax.random.key(3)
  got = hvsl(jnp.asarray(logits), jnp.asarray(labels), key, 0.8)
  # The implementation draws an offset 1..C-1 per pixel: wrong = (label + offset) mod C.
  offsets = np.asarray(jax.random.randint(key, labels.shape, 1, num_classes))
  total, count = 0.0, 0
  for idx in np.ndindex(labels.shape):
    label = labels[idx]
    if label == IGNORE:
      continue
    wrong = (label + offsets[idx]) % num_classes
    assert wrong != label
    total += max(0.0, 0.8 + float(logits[idx][wrong]) - float(logits[idx][label]))
    count += 1
  np.testing.assert_allclose(float(got), total / count, rtol=1e-5)


def test_hvsl_all_ignored_is_zero():
  labels = jnp.full((1, 2, 2), IGNORE, jnp.int32)
  loss = hvsl(jnp.ones((1, 2, 2, 3)), labels, jax.random.key(0))
  assert float(loss) == 0.0


# ---------------------------------------------------------------------------------------------
# Nearest label resize.


@pytest.mark.parametrize(
  ("in_size", "out_size"),
  [
    ((21, 17), (11, 9)),
    ((21, 17), (41, 33)),
    ((33, 33), (65, 65)),
    ((33, 33), (5, 7)),
    ((5, 7), (13, 3)),
    ((7, 9), (1, 1)),
    ((64, 48), (16, 12)),
    ((48, 24), (6, 3)),
    ((40, 40), (40, 40)),
  ],
)
def test_resize_labels_nearest_matches_opencv(in_size, out_size):
  rng = np.random.default_rng(sum(in_size) * 100 + sum(out_size))
  labels = rng.integers(0, 256, size=(2, *in_size)).astype(np.uint8)
  got = resize_nearest(jnp.asarray(labels), *out_size)
  np.testing.assert_array_equal(np.asarray(got), cv2_nearest(labels, *out_size))


def test_resize_labels_nearest_hand_case():
  # Source index floor(i * in / out): 4 -> 2 picks 0, 2; 3 -> 5 picks 0, 0, 1, 1, 2.
  labels = jnp.arange(12, dtype=jnp.int32).reshape(1, 3, 4)
  got = np.asarray(resize_nearest(labels, 5, 2))
  expected = np.array([[0, 2], [0, 2], [4, 6], [4, 6], [8, 10]])
  np.testing.assert_array_equal(got[0], expected)


# ---------------------------------------------------------------------------------------------
# segmentation_loss.


def _two_outputs(rng: np.random.Generator, num_classes: int) -> list[np.ndarray]:
  return [
    rng.normal(size=(2, 7, 5, num_classes)).astype(np.float32),
    rng.normal(size=(2, 4, 3, num_classes)).astype(np.float32),
  ]


def test_segmentation_loss_logits_resolution_sums_outputs():
  rng = np.random.default_rng(2)
  outputs = _two_outputs(rng, 4)
  labels = rng.integers(0, 4, size=(2, 13, 9)).astype(np.uint8)
  labels[:, :3] = IGNORE
  expected = sum(np_cross_entropy(o, cv2_nearest(labels, *o.shape[1:3])) for o in outputs)
  got = segmentation_loss(
    [jnp.asarray(o) for o in outputs],
    jnp.asarray(labels, jnp.int32),
    "cross_entropy",
    "logits",
    jax.random.key(0),
  )
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_segmentation_loss_input_resolution_upsamples_logits():
  rng = np.random.default_rng(3)
  outputs = _two_outputs(rng, 4)
  labels = rng.integers(0, 4, size=(2, 13, 9)).astype(np.int32)
  labels[:, -2:] = IGNORE
  expected = sum(np_cross_entropy(np_bilinear_resize(o, 13, 9), labels) for o in outputs)
  got = segmentation_loss(
    [jnp.asarray(o) for o in outputs],
    jnp.asarray(labels),
    "cross_entropy",
    "input",
    jax.random.key(0),
  )
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_segmentation_loss_hvsl_two_classes():
  # Two classes force the wrong class, so the value is independent of the key.
  rng = np.random.default_rng(4)
  outputs = [o[..., :2] for o in _two_outputs(rng, 2)]
  labels = rng.integers(0, 2, size=(2, 7, 5)).astype(np.uint8)
  labels[0, 0] = IGNORE
  expected = 0.0
  for o in outputs:
    target = cv2_nearest(labels, *o.shape[1:3]).astype(int)
    valid = target != IGNORE
    safe = np.where(valid, target, 0)
    true = np.take_along_axis(o, safe[..., None], -1)[..., 0]
    wrong = np.take_along_axis(o, 1 - safe[..., None], -1)[..., 0]
    expected += np.maximum(0.0, 1.0 + wrong - true)[valid].mean()
  got = segmentation_loss(
    [jnp.asarray(o) for o in outputs],
    jnp.asarray(labels, jnp.int32),
    "hvsl",
    "logits",
    jax.random.key(5),
  )
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_segmentation_loss_single_output_hand_case():
  logits = jnp.zeros((1, 2, 2, 4))
  labels = jnp.array([[[0, 1], [2, IGNORE]]], jnp.int32)
  for resolution in ("logits", "input"):
    got = segmentation_loss([logits], labels, "cross_entropy", resolution, jax.random.key(0))
    np.testing.assert_allclose(float(got), math.log(4.0), rtol=1e-6)


@pytest.mark.parametrize(
  ("name", "resolution", "field"),
  [
    ("softmax", "logits", "config.loss.name"),
    ("cross_entropy", "labels", "config.loss.label_resolution"),
  ],
)
def test_segmentation_loss_invalid_names(name, resolution, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    losses.segmentation_loss(
      [jnp.zeros((1, 2, 2, 3))], jnp.zeros((1, 2, 2), jnp.int32), name, resolution, None
    )
