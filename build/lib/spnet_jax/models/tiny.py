"""A small dilated residual backbone that trains from scratch on a CPU (embedded benchmark)."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spnet_jax.models import layers


class ResidualBlock(nn.Module):
  """x + conv(relu(conv(relu(x)))) with dilated 3x3 convs; starts as the identity."""

  dilation: int
  dtype: jnp.dtype | None = None
  conv_method: layers.ConvMethod = layers.ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    y = layers.CaffeConv(
      width,
      3,
      dilation=self.dilation,
      use_bias=True,
      dtype=self.dtype,
      conv_method=self.conv_method,
      name="conv1",
    )(nn.relu(x))
    # Zero-initialised last conv: with no normalisation layers, identity blocks keep the deep
    # stack trainable at a high learning rate from the first step.
    y = layers.CaffeConv(
      width,
      3,
      dilation=self.dilation,
      use_bias=True,
      dtype=self.dtype,
      conv_method=self.conv_method,
      kernel_init=nn.initializers.zeros,
      name="conv2",
    )(nn.relu(y))
    return x + y


class TinyDilatedNet(nn.Module):
  """Two stride-2 stem convs (output stride 4), then dilated residual blocks.

  With the default dilations the receptive field is about 250 px, enough to see whole objects
  of the 64x64 shapes images; about 0.2 M parameters at width 48.
  """

  width: int = 48
  dilations: Sequence[int] = (1, 2, 4, 8)
  dtype: jnp.dtype | None = None
  conv_method: layers.ConvMethod = layers.ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    stem = functools.partial(
      layers.CaffeConv,
      kernel_size=3,
      stride=2,
      use_bias=True,
      dtype=self.dtype,
      conv_method=self.conv_method,
    )
    x = stem(self.width // 2, name="stem1")(x)
    x = stem(self.width, name="stem2")(nn.relu(x))
    for i, dilation in enumerate(self.dilations):
      x = ResidualBlock(
        dilation, dtype=self.dtype, conv_method=self.conv_method, name=f"block{i + 1}"
      )(x)
    return nn.relu(x)
