"""Convolutions whose kernel gradient is one matmul per kernel tap.

XLA:CPU computes a convolution's kernel gradient as another convolution, whose "kernel" is the
activation map, at a third of its matmul speed or worse (BENCHMARKS.md, batch 2 at 41x41: 308 ms
for a 3x3 512->512 conv against 101 ms as taps; 793 against 76 ms for a 1x1 1024->2048). Per
tap the gradient is a plain matmul over the output pixels whose input that tap reads:

  dK[i, j] = sum over (b, y, x) of input[b, y * s + i * d - top, x * s + j * d - left]^T
                                   @ grad[b, y, x]

so a tap that reads padding only (a rate beyond the image) costs nothing. The input gradient is
the transpose of the forward conv, as autodiff would give.
"""

import functools

import jax
import jax.numpy as jnp

from spnet_jax.models import lax_conv


def tap_range(shift: int, stride: int, size: int, out_size: int) -> tuple[int, int]:
  """Output positions [first, last) whose input position `o * stride + shift` is in [0, size)."""
  first = min(out_size, max(0, -(shift // stride)))  # ceil(-shift / stride), clipped
  last = min(out_size, (size - 1 - shift) // stride + 1)
  return first, max(first, last)


def kernel_grad_by_taps(lhs, out_grad, kernel_shape, strides, padding, rates, precision=None):
  """d(conv)/d(kernel) as one float32-accumulated matmul per tap, in float32, shaped HWIO.

  Args:
    lhs: the conv input, [N, H, W, C].
    out_grad: the gradient of the conv output, [N, H_out, W_out, O].
    kernel_shape: (kh, kw, C, O).
    strides, padding, rates: the conv's window strides, explicit ((top, bottom), (left, right))
      padding and kernel dilation.
    precision: passed to each matmul.
  """
  k_h, k_w, in_features, out_features = kernel_shape
  batch, height, width, _ = lhs.shape
  _, out_h, out_w, _ = out_grad.shape
  (top, _), (left, _) = padding
  taps = []
  for i in range(k_h):
    shift_h = i * rates[0] - top
    y0, y1 = tap_range(shift_h, strides[0], height, out_h)
    for j in range(k_w):
      shift_w = j * rates[1] - left
      x0, x1 = tap_range(shift_w, strides[1], width, out_w)
      if y0 == y1 or x0 == x1:  # This tap reads padding only.
        taps.append(jnp.zeros((in_features, out_features), jnp.float32))
        continue
      top_row, left_col = y0 * strides[0] + shift_h, x0 * strides[1] + shift_w
      bottom_row = (y1 - 1) * strides[0] + shift_h + 1
      right_col = (x1 - 1) * strides[1] + shift_w + 1
      window = jax.lax.slice(
        lhs,
        (0, top_row, left_col, 0),
        (batch, bottom_row, right_col, in_features),
        (1, strides[0], strides[1], 1),
      )
      grad = out_grad[:, y0:y1, x0:x1]
      # A 2-D matmul contracting the pixel axis: XLA:CPU runs it near its matmul peak, where
      # the 4-D einsum form is up to a third slower.
      taps.append(
        jax.lax.dot_general(
          window.reshape(-1, in_features),
          grad.reshape(-1, out_features),
          (((0,), (0,)), ((), ())),
          precision=precision,
          preferred_element_type=jnp.float32,
        )
      )
  return jnp.stack(taps).reshape(kernel_shape)


def with_kernel_grad_by_taps(forward=None):
  """`lax.conv_general_dilated` (or `forward`, with its signature) whose kernel gradient is
  `kernel_grad_by_taps`; the forward pass and the input gradient are `forward`'s own.

  Covers what CaffeConv uses: NHWC x HWIO, explicit padding, any strides and kernel dilation,
  no input dilation, no feature groups. Reverse mode only (a custom VJP).
  """
  forward = forward or jax.lax.conv_general_dilated

  @lax_conv.lax_conv_signature(
    strided=True,
    unsupported="Kernel gradients by taps need NHWC x HWIO, explicit padding, no input dilation "
    "and no feature groups; use config.model.conv_kernel_grad='native' for other convolutions.",
  )
  def conv(lhs, rhs, strides, pads, rates, precision):
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, lax_conv.NHWC)
    apply = functools.partial(
      forward,
      window_strides=strides,
      padding=pads,
      rhs_dilation=rates,
      dimension_numbers=nhwc,
      precision=precision,
    )

    @jax.custom_vjp
    def conv_fn(x, kernel):
      return apply(x, kernel)

    def conv_fwd(x, kernel):
      return apply(x, kernel), (x, kernel)

    def conv_bwd(residuals, out_grad):
      x, kernel = residuals
      (x_grad,) = jax.linear_transpose(lambda x_: apply(x_, kernel), x)(out_grad)
      kernel_grad = kernel_grad_by_taps(x, out_grad, kernel.shape, strides, pads, rates, precision)
      return x_grad, kernel_grad.astype(kernel.dtype)

    conv_fn.defvjp(conv_fwd, conv_bwd)
    return conv_fn(lhs, rhs)

  return conv
