"""Pixel-wise losses: softmax cross-entropy with an ignore label, and the HVSL baseline."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spnet_jax.data.splits import IGNORE_LABEL
from spnet_jax.models import msc

LOSSES = ("cross_entropy", "hvsl")
LABEL_RESOLUTIONS = ("logits", "input")


def _valid_mean(per_pixel: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean over valid pixels; 0 when there are none (an all-ignore batch must not give NaN)."""
  count = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, per_pixel, 0.0)) / jnp.maximum(count, 1)


def cross_entropy_with_ignore(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy averaged over the pixels whose label is not the ignore label.

  Args:
    logits: [..., C] float logits.
    labels: [...] int labels in 0..C-1, or IGNORE_LABEL.

  Returns:
    Scalar mean of -log softmax(logits)[label] over valid pixels.
  """
  logits = logits.astype(jnp.float32)
  valid = labels != IGNORE_LABEL
  safe = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  return _valid_mean(nll, valid)


def hinge_visual_semantic_loss(
  logits: jax.Array, labels: jax.Array, rng: jax.Array, margin: float = 1.0
) -> jax.Array:
  """HVSL (paper eq. 6) with the sum over wrong classes truncated to one random wrong class.

  Logits are w_c . phi(x), so each valid pixel costs max(0, margin + w_s.phi - w_y.phi) for a
  wrong class s drawn uniformly from the other C - 1 classes.
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  valid = labels != IGNORE_LABEL
  safe = jnp.where(valid, labels, 0)
  # y + k (mod C) with k uniform in 1..C-1 is uniform over the wrong classes.
  offset = jax.random.randint(rng, safe.shape, 1, num_classes)
  wrong = (safe + offset) % num_classes
  true_score = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
  wrong_score = jnp.take_along_axis(logits, wrong[..., None], axis=-1)[..., 0]
  return _valid_mean(jax.nn.relu(margin + wrong_score - true_score), valid)


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
  """OpenCV's INTER_NEAREST rule: output i reads input floor(i * (1 / (out / in))), in float64.

  SPNet resizes its training labels to each output with cv2.resize(..., INTER_NEAREST); the
  reciprocal is taken as OpenCV takes it, so that the floors fall where OpenCV's do.
  """
  step = 1.0 / (out_size / in_size)
  return np.minimum(np.floor(np.arange(out_size) * step).astype(np.int64), in_size - 1)


def resize_labels_nearest(labels: jax.Array, height: int, width: int) -> jax.Array:
  """Nearest-neighbour resize of [B, H, W] labels to [B, height, width] (OpenCV's rule)."""
  in_h, in_w = labels.shape[1:3]
  rows = nearest_source_indices(in_h, height)
  cols = nearest_source_indices(in_w, width)
  return labels[:, rows][:, :, cols]


def segmentation_loss(
  outputs: Sequence[jax.Array],
  labels: jax.Array,
  loss_name: str,
  label_resolution: str,
  rng: jax.Array,
) -> jax.Array:
  """Sum of the loss over every output (the MSC outputs, or the single output).

  Args:
    outputs: logits [B, h, w, C] per output, possibly at different resolutions.
    labels: [B, H, W] training labels (0..C-1 or ignore).
    loss_name: 'cross_entropy' or 'hvsl'.
    label_resolution: 'logits' (DeepLab: labels nearest-resized to each output) or 'input'
      (logits bilinearly upsampled to the label size).
    rng: key for HVSL's sampled wrong classes.

  Returns:
    Scalar loss.
  """
  if loss_name not in LOSSES:
    raise ValueError(f"Unknown config.loss.name {loss_name!r}; valid: {LOSSES}.")
  if label_resolution not in LABEL_RESOLUTIONS:
    raise ValueError(
      f"Unknown config.loss.label_resolution {label_resolution!r}; valid: {LABEL_RESOLUTIONS}."
    )
  height, width = labels.shape[1:3]
  total = jnp.zeros((), jnp.float32)
  for index, logits in enumerate(outputs):
    if label_resolution == "logits":
      target = resize_labels_nearest(labels, *logits.shape[1:3])
    else:
      logits = msc.resize_logits(logits, height, width)
      target = labels
    if loss_name == "cross_entropy":
      total += cross_entropy_with_ignore(logits, target)
    else:
      total += hinge_visual_semantic_loss(logits, target, jax.random.fold_in(rng, index))
  return total
