"""Atrous spatial pyramid pooling heads of DeepLab-v2: ASPP (ResNet) and ASPP-L (VGG-16)."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spnet_jax.models.layers import CaffeConv, ConvMethod

# DeepLab-v2 initialises the classifier convs with N(0, 0.01) and zero bias.
_HEAD_INIT = nn.initializers.normal(stddev=0.01)


class ASPP(nn.Module):
  """Four parallel dilated 3x3 convs with bias, outputs summed (DeepLab-v2 ASPP).

  Branch `i` is named `c{i}` (deeplab-pytorch's `aspp.c{i}`) and holds `conv/{kernel,bias}`.

  Attributes:
    features: output channels of every branch.
    rates: dilation (and padding) of each branch.
    dtype: compute dtype; parameters stay float32.
    conv_method: how the convs are computed (layers.ConvMethod).
  """

  features: int
  rates: Sequence[int] = (6, 12, 18, 24)
  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies every branch to `x` ([B, h, w, C]) and returns the [B, h, w, features] sum."""
    out = None
    for i, rate in enumerate(self.rates):
      y = CaffeConv(
        self.features,
        3,
        dilation=rate,
        use_bias=True,
        kernel_init=_HEAD_INIT,
        bias_init=nn.initializers.zeros,
        dtype=self.dtype,
        conv_method=self.conv_method,
        name=f"c{i}",
      )(x)
      out = y if out is None else out + y
    if out is None:
      raise ValueError("ASPP needs at least one rate.")
    return out


class ASPPL(nn.Module):
  """DeepLab-v2 VGG "ASPP-L": per rate fc6 (3x3 dilated) -> fc7 (1x1) -> fc8 (1x1), summed.

  Branch `i` is named `c{i}` and holds `fc6`, `fc7`, `fc8`, each with `conv/{kernel,bias}`.

  Attributes:
    features: output channels (fc8) of every branch.
    rates: dilation (and padding) of each branch's fc6.
    hidden: channels of fc6 and fc7.
    dtype: compute dtype; parameters stay float32.
    conv_method: how the convs are computed (layers.ConvMethod).
  """

  features: int
  rates: Sequence[int] = (6, 12, 18, 24)
  hidden: int = 1024
  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies every branch to `x` ([B, h, w, C]) and returns the [B, h, w, features] sum."""
    out = None
    for i, rate in enumerate(self.rates):
      y = _ASPPLBranch(
        self.features,
        rate,
        self.hidden,
        dtype=self.dtype,
        conv_method=self.conv_method,
        name=f"c{i}",
      )(x)
      out = y if out is None else out + y
    if out is None:
      raise ValueError("ASPPL needs at least one rate.")
    return out


class _ASPPLBranch(nn.Module):
  """One ASPP-L branch: fc6 (3x3, dilation `rate`) + ReLU -> fc7 (1x1) + ReLU -> fc8 (1x1)."""

  features: int
  rate: int
  hidden: int
  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = CaffeConv(
      self.hidden,
      3,
      dilation=self.rate,
      use_bias=True,
      dtype=self.dtype,
      conv_method=self.conv_method,
      name="fc6",
    )(x)
    x = nn.relu(x)
    x = CaffeConv(
      self.hidden, 1, use_bias=True, dtype=self.dtype, conv_method=self.conv_method, name="fc7"
    )(x)
    x = nn.relu(x)
    return CaffeConv(
      self.features,
      1,
      use_bias=True,
      kernel_init=_HEAD_INIT,
      bias_init=nn.initializers.zeros,
      dtype=self.dtype,
      conv_method=self.conv_method,
      name="fc8",
    )(x)
