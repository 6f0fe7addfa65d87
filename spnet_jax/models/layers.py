"""Building blocks shared by the backbones: caffe-style convolutions and frozen BatchNorm."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from spnet_jax.models import kernel_grad, lax_conv

# Name of the variable collection that holds every BatchNorm tensor. It is not 'params', so the
# optimiser never sees it: DeepLab-v2 keeps BatchNorm frozen (statistics and affine alike).
FROZEN_COLLECTION = "batch_stats"
# The ways ConvMethod can compute dilated convs and kernel gradients (same numbers, own speed).
ATROUS_CONVS = ("dilated", "space_to_batch", "taps")
KERNEL_GRADS = ("native", "taps")


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


@dataclasses.dataclass(frozen=True)
class ConvMethod:
  """How CaffeConv computes a convolution; every choice has the same parameters and results.

  Attributes:
    atrous: how a dilated stride-1 conv runs: 'dilated' (XLA's dilated convolution),
      'space_to_batch' (`conv_by_phases`: a dense conv over the dilation**2 phases of the input;
      cuDNN's dilated-conv gradients are several times slower than dense ones) or 'taps'
      (`conv_by_taps`: one matmul per kernel tap over the pixels it reads).
    kernel_grad: how the kernel gradient is computed: 'native' (autodiff of the forward) or
      'taps' (`kernel_grad.kernel_grad_by_taps`: one matmul per tap; XLA:CPU's kernel-gradient
      convolution runs at a third of its matmul speed).
    atrous_min_features: `atrous` applies to convs with at least this many input channels;
      narrower ones run XLA's dilated convolution ('auto' sets it on CPUs, where per-tap
      matmuls that narrow cost more than they save).
    kernel_grad_min_features: likewise for `kernel_grad`, except that a 1x1 kernel gradient
      (a single matmul either way) always follows `kernel_grad`.

  'taps' kernel gradients are a custom VJP: reverse-mode autodiff only (jax.grad, jax.vjp),
  no jax.jvp / jacfwd through such a conv.
  """

  atrous: str = "dilated"
  kernel_grad: str = "native"
  atrous_min_features: int = 0
  kernel_grad_min_features: int = 0

  def __post_init__(self):
    if self.atrous not in ATROUS_CONVS:
      raise ValueError(f"Unknown ConvMethod.atrous {self.atrous!r}; valid: {ATROUS_CONVS}.")
    if self.kernel_grad not in KERNEL_GRADS:
      raise ValueError(
        f"Unknown ConvMethod.kernel_grad {self.kernel_grad!r}; valid: {KERNEL_GRADS}."
      )


class CaffeConv(nn.Module):
  """Conv2D with explicit symmetric padding, as in caffe/PyTorch (not XLA 'SAME').

  Attributes:
    conv_method: how the convolution is computed (ConvMethod); it never changes the parameters
      or the numbers.
  """

  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  use_bias: bool = False
  kernel_init: nn.initializers.Initializer = nn.initializers.he_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros
  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    method = self.conv_method
    in_features = x.shape[-1]
    conv_fn = None
    if self.dilation > 1 and self.stride == 1 and in_features >= method.atrous_min_features:
      conv_fn = ATROUS_METHODS[method.atrous]
    if method.kernel_grad == "taps" and (
      in_features >= method.kernel_grad_min_features or self.kernel_size == 1
    ):
      conv_fn = kernel_grad.with_kernel_grad_by_taps(conv_fn)
    return nn.Conv(
      self.features,
      (self.kernel_size, self.kernel_size),
      strides=(self.stride, self.stride),
      padding=same_padding(self.kernel_size, self.dilation),
      kernel_dilation=(self.dilation, self.dilation),
      use_bias=self.use_bias,
      kernel_init=self.kernel_init,
      bias_init=self.bias_init,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      conv_general_dilated=conv_fn,
      name="conv",
    )(x)


_STRIDE_1_ONLY = "The atrous rewrites need NHWC x HWIO, explicit padding, stride 1, no groups."


@lax_conv.lax_conv_signature(strided=False, unsupported=_STRIDE_1_ONLY)
def conv_by_phases(lhs, rhs, strides, padding, rates, precision):
  """`lax.conv_general_dilated` of a dilated conv, computed as a dense conv over phases.

  Output pixel (y, x) reads padded-input pixels (y + i * rate, x + j * rate), all in phase
  (y mod rate, x mod rate). Splitting the padded input into its rate**2 phase images (stacked on
  the batch axis) turns the dilated conv into a dense VALID one; the outputs are interleaved
  back and cropped.
  """
  rate_h, rate_w = rates
  batch, _, _, channels = lhs.shape
  k_h, k_w = rhs.shape[:2]
  (top, bottom), (left, right) = padding
  x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h = x.shape[1] - rate_h * (k_h - 1)
  out_w = x.shape[2] - rate_w * (k_w - 1)
  # Pad up to a multiple of the rate, so every phase image has the same size.
  extra_h, extra_w = -x.shape[1] % rate_h, -x.shape[2] % rate_w
  x = jnp.pad(x, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
  rows, cols = x.shape[1] // rate_h, x.shape[2] // rate_w
  x = x.reshape(batch, rows, rate_h, cols, rate_w, channels).transpose(2, 4, 0, 1, 3, 5)
  y = jax.lax.conv_general_dilated(
    x.reshape(rate_h * rate_w * batch, rows, cols, channels),
    rhs,
    (1, 1),
    "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=precision,
  )
  phase_h, phase_w, features = y.shape[1:]
  y = y.reshape(rate_h, rate_w, batch, phase_h, phase_w, features).transpose(2, 3, 0, 4, 1, 5)
  return y.reshape(batch, phase_h * rate_h, phase_w * rate_w, features)[:, :out_h, :out_w]


@lax_conv.lax_conv_signature(strided=False, unsupported=_STRIDE_1_ONLY)
def conv_by_taps(lhs, rhs, strides, padding, rates, precision):
  """`lax.conv_general_dilated` as one matmul per kernel tap, over the pixels the tap reads.

  Tap (i, j) adds input[y + i * rate - top, x + j * rate - left] @ kernel[i, j] to output (y, x)
  wherever that input pixel exists; taps that would read only padding (a rate beyond the
  image) cost nothing.
  """
  rate_h, rate_w = rates
  _, height, width, _ = lhs.shape
  (top, bottom), (left, right) = padding
  out_h = height + top + bottom - rate_h * (rhs.shape[0] - 1)
  out_w = width + left + right - rate_w * (rhs.shape[1] - 1)
  out = None
  for i in range(rhs.shape[0]):
    # Output rows y0..y1-1 read input rows y0 + shift .. y1 - 1 + shift, all inside the image.
    shift_h = i * rate_h - top
    y0, y1 = kernel_grad.tap_range(shift_h, 1, height, out_h)
    for j in range(rhs.shape[1]):
      shift_w = j * rate_w - left
      x0, x1 = kernel_grad.tap_range(shift_w, 1, width, out_w)
      if y0 == y1 or x0 == x1:
        continue
      window = lhs[:, y0 + shift_h : y1 + shift_h, x0 + shift_w : x1 + shift_w]
      # Partial sums stay float32 (one conv accumulates all taps in float32 too).
      part = jnp.einsum(
        "bhwc,cd->bhwd", window, rhs[i, j], precision=precision, preferred_element_type=jnp.float32
      )
      part = jnp.pad(part, ((0, 0), (y0, out_h - y1), (x0, out_w - x1), (0, 0)))
      out = part if out is None else out + part
  if out is None:  # Every tap reads padding only.
    return jnp.zeros((lhs.shape[0], out_h, out_w, rhs.shape[-1]), lhs.dtype)
  return out.astype(lhs.dtype)


ATROUS_METHODS = dict(zip(ATROUS_CONVS, (None, conv_by_phases, conv_by_taps), strict=True))


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
