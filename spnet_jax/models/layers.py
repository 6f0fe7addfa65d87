"""Building blocks shared by the backbones: caffe-style convolutions and frozen BatchNorm."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Name of the variable collection that holds every BatchNorm tensor. It is not 'params', so the
# optimiser never sees it: DeepLab-v2 keeps BatchNorm frozen (statistics and affine alike).
FROZEN_COLLECTION = "batch_stats"


class FrozenBatchNorm(nn.Module):
  """Inference-mode BatchNorm whose scale, offset, mean and variance are never trained.

  All four tensors live in the `batch_stats` collection, so they travel with checkpoints and
  conversions but are invisible to the optimiser (SPNet/DeepLab-v2 freeze BatchNorm completely).
  """

  epsilon: float = 1e-5
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.variable(FROZEN_COLLECTION, "scale", jnp.ones, (features,), jnp.float32)
    bias = self.variable(FROZEN_COLLECTION, "bias", jnp.zeros, (features,), jnp.float32)
    mean = self.variable(FROZEN_COLLECTION, "mean", jnp.zeros, (features,), jnp.float32)
    var = self.variable(FROZEN_COLLECTION, "var", jnp.ones, (features,), jnp.float32)
    # Folding into one multiply-add keeps the op cheap and identical to BN in eval mode.
    multiplier = scale.value * jax.lax.rsqrt(var.value + self.epsilon)
    offset = bias.value - mean.value * multiplier
    dtype = self.dtype or x.dtype
    return x * multiplier.astype(dtype) + offset.astype(dtype)


def same_padding(kernel_size: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding that PyTorch/caffe use for an odd kernel: dilation * (k - 1) / 2."""
  pad = dilation * (kernel_size - 1) // 2
  return ((pad, pad), (pad, pad))


class CaffeConv(nn.Module):
  """Conv2D with explicit symmetric padding, as in caffe/PyTorch (not XLA 'SAME').

  Attributes:
    space_to_batch: compute a dilated stride-1 conv as a dense conv over the dilation**2
      phases of the input (`atrous_by_space_to_batch`); same parameters, same result. cuDNN's
      dilated-conv gradients are several times slower than dense ones on GPUs.
  """

  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  use_bias: bool = False
  kernel_init: nn.initializers.Initializer = nn.initializers.he_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros
  dtype: jnp.dtype | None = None
  space_to_batch: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    by_phases = self.space_to_batch and self.dilation > 1 and self.stride == 1
    conv = nn.Conv(
      self.features,
      (self.kernel_size, self.kernel_size),
      strides=(self.stride, self.stride),
      padding="VALID" if by_phases else same_padding(self.kernel_size, self.dilation),
      kernel_dilation=(1, 1) if by_phases else (self.dilation, self.dilation),
      use_bias=self.use_bias,
      kernel_init=self.kernel_init,
      bias_init=self.bias_init,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="conv",
    )
    if by_phases:
      return atrous_by_space_to_batch(conv, x, self.kernel_size, self.dilation)
    return conv(x)


def atrous_by_space_to_batch(conv, x: jax.Array, kernel_size: int, rate: int) -> jax.Array:
  """A 'same'-padded conv of dilation `rate`, computed by the undilated VALID `conv`.

  Output pixel (y, x) reads input pixels (y + i * rate, x + j * rate) of the padded input, all
  in phase (y mod rate, x mod rate). Splitting the padded input into its rate**2 phase images
  (stacked on the batch axis) turns the dilated conv into a dense one; the outputs are
  interleaved back and cropped to the input size.
  """
  batch, height, width, channels = x.shape
  pad = rate * (kernel_size - 1) // 2
  # Pad to the "same" padding, then up to a multiple of the rate.
  padded_h = -(-(height + 2 * pad) // rate) * rate
  padded_w = -(-(width + 2 * pad) // rate) * rate
  x = jnp.pad(x, ((0, 0), (pad, padded_h - height - pad), (pad, padded_w - width - pad), (0, 0)))
  x = x.reshape(batch, padded_h // rate, rate, padded_w // rate, rate, channels)
  x = x.transpose(2, 4, 0, 1, 3, 5).reshape(rate * rate * batch, padded_h // rate, -1, channels)
  y = conv(x)
  out_h, out_w, features = y.shape[1:]
  y = y.reshape(rate, rate, batch, out_h, out_w, features).transpose(2, 3, 0, 4, 1, 5)
  return y.reshape(batch, out_h * rate, out_w * rate, features)[:, :height, :width]


def max_pool_ceil(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """Max pooling with PyTorch's `ceil_mode=True` output size (extra right/bottom padding).

  Args:
    x: [B, H, W, C] input.
    window: pooling window size.
    stride: pooling stride.
    padding: symmetric padding added before pooling (padded with -inf).

  Returns:
    The pooled array, with ceil((H + 2p - window) / stride) + 1 rows (and likewise columns),
    dropping a last window that would start inside the right padding only (PyTorch's rule).
  """
  pads: list[tuple[int, int]] = []
  for size in x.shape[1:3]:
    out = -(-(size + 2 * padding - window) // stride) + 1
    # PyTorch drops the last window when it starts in the padding.
    if (out - 1) * stride >= size + padding:
      out -= 1
    needed = (out - 1) * stride + window - (size + 2 * padding)
    pads.append((padding, padding + max(needed, 0)))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


def spatial_size(x: jax.Array) -> Sequence[int]:
  """(height, width) of an NHWC array."""
  return x.shape[1:3]
