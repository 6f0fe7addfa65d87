"""Multi-scale inputs (MSC): run the net at several scales and fuse the logits by max."""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def rescale_images(images: jax.Array, factor: float) -> jax.Array:
  """Bilinear rescale to floor(side * factor), as SPNet's MSC does.

  SPNet calls interpolate(size=(int(h * p), int(w * p)), align_corners=False): the source
  coordinates follow the ratio of the rounded sizes (half-pixel centres, no antialiasing).
  """
  batch, height, width, channels = images.shape
  shape = (batch, int(height * factor), int(width * factor), channels)
  return jax.image.resize(images, shape, method="bilinear", antialias=False)


def resize_logits(logits: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize of [B, h, w, C] logits to (height, width), half-pixel centres, no antialias."""
  if logits.shape[1:3] == (height, width):
    return logits
  shape = (logits.shape[0], height, width, logits.shape[3])
  return jax.image.resize(logits, shape, method="bilinear", antialias=False)


def resize_logits_per_image(
  logits: jax.Array, sizes: jax.Array, canvas: tuple[int, int]
) -> jax.Array:
  """Bilinear upsampling of each image's logits to its own (height, width), on a fixed canvas.

  Args:
    logits: [B, h, w, C] logits.
    sizes: [B, 2] int target (height, width) of each image; may differ per image.
    canvas: static (H, W) >= every target size; pixels beyond an image's size are filler.

  Returns:
    [B, H, W, C]; image b's logits resized to sizes[b] (half-pixel centres) in its top-left.
  """
  in_size = jnp.asarray(logits.shape[1:3], jnp.float32)

  def one(image_logits, size):
    scale = size.astype(jnp.float32) / in_size
    return jax.image.scale_and_translate(
      image_logits,
      (*canvas, logits.shape[3]),
      spatial_dims=(0, 1),
      scale=scale,
      translation=jnp.zeros((2,), jnp.float32),
      method="linear",
      antialias=False,
    )

  return jax.vmap(one)(logits, sizes)


def multi_scale_logits(
  logits_fn: Callable[[jax.Array], jax.Array],
  images: jax.Array,
  scales: Sequence[float],
) -> list[jax.Array]:
  """DeepLab-v2 MSC outputs: [full-scale, each extra scale at its own size, fused max].

  Args:
    logits_fn: images -> logits [B, h, w, C] (the network with its head).
    images: [B, H, W, 3] network input.
    scales: the extra input scales besides 1 (SPNet: 0.5 and 0.75). Empty means no MSC.

  Returns:
    With no extra scales, [logits]. Otherwise the scale-1 logits, the logits of each extra scale
    (at their own resolution, for training losses) and, last, the element-wise max of all of
    them after bilinear upsampling to the scale-1 size.
  """
  full = logits_fn(images)
  if not scales:
    return [full]
  others = [logits_fn(rescale_images(images, s)) for s in scales]
  height, width = full.shape[1:3]
  fused = full
  for logits in others:
    fused = jnp.maximum(fused, resize_logits(logits, height, width))
  return [full, *others, fused]
