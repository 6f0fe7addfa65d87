"""Tests for spnet_jax/models/msc.py against NumPy ports of PyTorch's bilinear interpolation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spnet_jax.models import msc

rescale_images = jax.jit(msc.rescale_images, static_argnums=(1,))
resize_logits = jax.jit(msc.resize_logits, static_argnums=(1, 2))


def torch_bilinear(x: np.ndarray, out_h: int, out_w: int, scale_h: float, scale_w: float):
  """F.interpolate(mode='bilinear', align_corners=False) in NHWC, float64, by loops.

  `scale_*` is the output/input ratio used for the source coordinates: the user's scale factor
  when one is given, out/in when a size is given.
  """

  def taps(out: int, n: int, scale: float):
    rows = []
    for dst in range(out):
      src = max((dst + 0.5) / scale - 0.5, 0.0)
      lo = min(int(np.floor(src)), n - 1)
      hi = min(lo + 1, n - 1)
      rows.append((lo, hi, src - lo))
    return rows

  x = x.astype(np.float64)
  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for i, (y0, y1, ly) in enumerate(taps(out_h, x.shape[1], scale_h)):
    for j, (x0, x1, lx) in enumerate(taps(out_w, x.shape[2], scale_w)):
      out[:, i, j] = (1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1]) + ly * (
        (1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]
      )
  return out


def np_rescale(x: np.ndarray, factor: float) -> np.ndarray:
  """SPNet's MSC input: interpolate(size=floor(side * factor)), coordinates use the size ratio."""
  out_h, out_w = int(np.floor(x.shape[1] * factor)), int(np.floor(x.shape[2] * factor))
  return torch_bilinear(x, out_h, out_w, out_h / x.shape[1], out_w / x.shape[2])


def np_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """interpolate(size=(out_h, out_w)): coordinates use the size ratio."""
  return torch_bilinear(x, out_h, out_w, out_h / x.shape[1], out_w / x.shape[2])


# ---------------------------------------------------------------------------------------------
# rescale_images.


@pytest.mark.parametrize("factor", [0.5, 0.75])
@pytest.mark.parametrize("size", [(21, 17), (13, 13), (8, 10)])
def test_rescale_images_matches_pytorch(factor, size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *size, 3)).astype(np.float32)
  got = np.asarray(rescale_images(jnp.asarray(x), factor))
  expected = np_rescale(x, factor)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_rescale_images_hand_case():
  # One row 0..9 (width 10), factor 0.5: output width 5, source (j + 0.5) * 10 / 5 - 0.5
  # = 0.5, 2.5, 4.5, 6.5, 8.5. On a ramp the result is the source coordinate.
  x = jnp.arange(10, dtype=jnp.float32).reshape(1, 1, 10, 1)
  got = np.asarray(rescale_images(jnp.tile(x, (1, 2, 1, 1)), 0.5))
  assert got.shape == (1, 1, 5, 1)
  np.testing.assert_allclose(got[0, 0, :, 0], [0.5, 2.5, 4.5, 6.5, 8.5], rtol=1e-5)


def test_rescale_images_uses_the_size_ratio_like_spnet():
  # 21 * 0.75 = 15.75 -> 15: SPNet maps coordinates with 15/21, not with the factor 0.75.
  x = np.random.default_rng(1).normal(size=(1, 21, 21, 1)).astype(np.float32)
  got = np.asarray(rescale_images(jnp.asarray(x), 0.75))
  by_factor = torch_bilinear(x, 15, 15, 0.75, 0.75)
  assert np.abs(got - by_factor).max() > 1e-2
  np.testing.assert_allclose(got, np_resize(x, 15, 15), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# resize_logits.


@pytest.mark.parametrize(
  ("in_size", "out_size"), [((5, 4), (11, 9)), ((6, 6), (41, 41)), ((9, 7), (4, 5))]
)
def test_resize_logits_matches_pytorch(in_size, out_size):
  x = np.random.default_rng(2).normal(size=(2, *in_size, 4)).astype(np.float32)
  got = np.asarray(resize_logits(jnp.asarray(x), *out_size))
  np.testing.assert_allclose(got, np_resize(x, *out_size), rtol=1e-5, atol=1e-5)


def test_resize_logits_hand_case():
  # Width 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to the edge).
  x = jnp.array([0.0, 4.0]).reshape(1, 1, 2, 1)
  got = np.asarray(resize_logits(x, 1, 4))[0, 0, :, 0]
  np.testing.assert_allclose(got, [0.0, 1.0, 3.0, 4.0], rtol=1e-6)


def test_resize_logits_same_size_is_identity():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 3, 5, 2)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(msc.resize_logits(x, 3, 5)), np.asarray(x))


# ---------------------------------------------------------------------------------------------
# multi_scale_logits.

PROJECTION = np.array([[1.0, -1.0, 0.5, 0.0], [0.5, 2.0, -1.0, 1.0], [-0.5, 0.0, 1.0, 3.0]])


def logits_fn(images: jax.Array) -> jax.Array:
  """A stand-in network: 2x2 average pool (stride 2, floor) and a fixed channel projection."""
  b, h, w, c = images.shape
  h2, w2 = h // 2, w // 2
  pooled = images[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c).mean(axis=(2, 4))
  return pooled @ jnp.asarray(PROJECTION, jnp.float32)


def np_logits_fn(images: np.ndarray) -> np.ndarray:
  b, h, w, _ = images.shape
  out = np.zeros((b, h // 2, w // 2, PROJECTION.shape[1]))
  for i in range(h // 2):
    for j in range(w // 2):
      pooled = images[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(1, 2))
      out[:, i, j] = pooled @ PROJECTION
  return out


def test_multi_scale_logits_matches_numpy():
  images = np.random.default_rng(4).normal(size=(2, 21, 17, 3)).astype(np.float32)
  outputs = jax.jit(lambda x: msc.multi_scale_logits(logits_fn, x, (0.5, 0.75)))(
    jnp.asarray(images)
  )
  assert len(outputs) == 4
  full = np_logits_fn(images.astype(np.float64))
  half = np_logits_fn(np_rescale(images, 0.5))
  three_quarters = np_logits_fn(np_rescale(images, 0.75))
  # Sizes: 21x17 -> 10x8; 0.5: 10x8 -> 5x4; 0.75: 15x12 -> 7x6.
  assert [o.shape[1:3] for o in outputs] == [(10, 8), (5, 4), (7, 6), (10, 8)]
  fused = np.maximum(full, np.maximum(np_resize(half, 10, 8), np_resize(three_quarters, 10, 8)))
  for got, expected in zip(outputs, [full, half, three_quarters, fused], strict=True):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)
  # The max really mixes scales: neither the full-scale map alone nor a single scale.
  assert not np.allclose(np.asarray(outputs[3]), full, atol=1e-3)


def test_multi_scale_logits_no_scales():
  images = jnp.asarray(np.random.default_rng(5).normal(size=(1, 8, 6, 3)), jnp.float32)
  outputs = msc.multi_scale_logits(logits_fn, images, ())
  assert len(outputs) == 1
  np.testing.assert_allclose(
    np.asarray(outputs[0]), np_logits_fn(np.asarray(images, np.float64)), rtol=1e-5, atol=1e-6
  )


def test_multi_scale_logits_hand_case():
  # Constant images give constant logits at every scale; the fused max is then the full map.
  images = jnp.ones((1, 8, 8, 3))
  outputs = msc.multi_scale_logits(logits_fn, images, (0.5,))
  assert [o.shape[1:3] for o in outputs] == [(4, 4), (2, 2), (4, 4)]
  expected = PROJECTION.sum(axis=0)  # [1.0, 1.0, 0.5, 4.0]
  for out in outputs:
    np.testing.assert_allclose(np.asarray(out)[0], np.broadcast_to(expected, out.shape[1:]))


def test_resize_logits_per_image_matches_single_image_resize():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 5, 5, 3)).astype(np.float32))
  sizes = jnp.asarray([[10, 10], [7, 9]], jnp.int32)
  out = np.asarray(msc.resize_logits_per_image(logits, sizes, (10, 10)))
  assert out.shape == (2, 10, 10, 3)
  first = np.asarray(msc.resize_logits(logits[:1], 10, 10))[0]
  second = np.asarray(msc.resize_logits(logits[1:], 7, 9))[0]
  np.testing.assert_allclose(out[0], first, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[1, :7, :9], second, rtol=1e-5, atol=1e-5)
