"""Convolution rewrites behind `lax.conv_general_dilated`'s signature, which nn.Conv calls."""

import functools

import jax

NHWC = ("NHWC", "HWIO", "NHWC")


def lax_conv_signature(*, strided: bool, unsupported: str):
  """Decorator: gives `rewrite(lhs, rhs, strides, padding, rates, precision)` the signature of
  `lax.conv_general_dilated`, with tuples for strides, explicit padding and kernel dilation.

  Refuses, with `unsupported` as the message, what the rewrites do not cover: anything but
  NHWC x HWIO, padding given as a string, input dilation, feature groups, and strides other
  than 1 unless `strided`.
  """

  def decorate(rewrite):
    @functools.wraps(rewrite)
    def conv(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=None,
      rhs_dilation=None,
      dimension_numbers=None,
      feature_group_count=1,
      precision=None,
    ):
      nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
      strides = tuple(window_strides)
      if (
        isinstance(padding, str)
        or (not strided and strides != (1, 1))
        or (lhs_dilation is not None and tuple(lhs_dilation) != (1, 1))
        or dimension_numbers != nhwc
        or feature_group_count != 1
      ):
        raise ValueError(unsupported)
      pads = tuple(tuple(pair) for pair in padding)
      return rewrite(lhs, rhs, strides, pads, tuple(rhs_dilation or (1, 1)), precision)

    return conv

  return decorate
