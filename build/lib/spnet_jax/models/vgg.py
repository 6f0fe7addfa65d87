"""DeepLab-v2 VGG-16 backbone up to pool5 (pool4/pool5 stride 1, conv5 dilation 2)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from spnet_jax.models.layers import CaffeConv, ConvMethod, max_pool_ceil

# (number of 3x3 convs, channels, dilation, stride of the following 3x3 max-pool) per block.
_BLOCKS = (
  (2, 64, 1, 2),
  (2, 128, 1, 2),
  (3, 256, 1, 2),
  (3, 512, 1, 1),
  (3, 512, 2, 1),
)


class DeepLabVGG16(nn.Module):
  """VGG-16 in the DeepLab-v2 layout, output stride 8 (321 -> 41).

  Convs are named as in caffe (`conv1_1` .. `conv5_3`), each holding `conv/{kernel,bias}`.

  Attributes:
    dtype: compute dtype for mixed precision; parameters stay float32.
    conv_method: how the convs are computed (layers.ConvMethod).
  """

  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Computes pool5 features.

    Args:
      x: [B, H, W, 3] images (BGR, caffe mean subtracted).

    Returns:
      [B, h, w, 512] pool5 features.
    """
    for block, (num_convs, features, dilation, pool_stride) in enumerate(_BLOCKS, start=1):
      for i in range(1, num_convs + 1):
        x = CaffeConv(
          features,
          3,
          dilation=dilation,
          use_bias=True,
          dtype=self.dtype,
          conv_method=self.conv_method,
          name=f"conv{block}_{i}",
        )(x)
        x = nn.relu(x)
      # Caffe pools: 3x3 window, pad 1, ceil rounding; stride 1 keeps pool4/pool5 at /8.
      x = max_pool_ceil(x, 3, pool_stride, padding=1)
    return x
