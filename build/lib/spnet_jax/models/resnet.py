"""DeepLab-v2 ResNet-101 backbone in the caffe layout (output stride 8), as in deeplab-pytorch."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spnet_jax.models.layers import CaffeConv, ConvMethod, FrozenBatchNorm, max_pool_ceil

# Output channels, first-block stride and dilation of layer2..layer5 (DeepLab-v2, output stride 8).
_STAGE_FEATURES = (256, 512, 1024, 2048)
_STAGE_STRIDES = (1, 2, 1, 1)
_STAGE_DILATIONS = (1, 1, 2, 4)
# Bottleneck width = output channels / expansion.
_EXPANSION = 4


class ConvBN(nn.Module):
  """Bias-free CaffeConv + FrozenBatchNorm (+ optional ReLU): deeplab-pytorch's `_ConvBnReLU`.

  Variables are `<name>/conv/kernel` in `params` and `<name>/bn/{scale,bias,mean,var}` in
  `batch_stats`, mirroring the PyTorch keys `<name>.conv.weight` and `<name>.bn.*`.

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    stride: convolution stride.
    dilation: convolution dilation (padding is dilation * (kernel_size - 1) / 2).
    relu: whether to apply a ReLU after the BatchNorm.
    dtype: compute dtype; parameters stay float32.
    conv_method: how the convs are computed (layers.ConvMethod).
  """

  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  relu: bool = True
  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  def setup(self) -> None:
    self.caffe_conv = CaffeConv(
      self.features,
      self.kernel_size,
      stride=self.stride,
      dilation=self.dilation,
      use_bias=False,
      dtype=self.dtype,
      conv_method=self.conv_method,
    )
    # CaffeConv names its nn.Conv "conv"; sharing our scope puts the kernel at `<name>/conv`
    # (next to `<name>/bn`) instead of `<name>/caffe_conv/conv`, so PyTorch keys map one to one.
    nn.share_scope(self, self.caffe_conv)
    self.bn = FrozenBatchNorm(dtype=self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.bn(self.caffe_conv(x))
    return nn.relu(x) if self.relu else x


class Bottleneck(nn.Module):
  """Bottleneck residual block: reduce (1x1) -> conv3x3 (dilated) -> increase (1x1) + shortcut.

  Attributes:
    features: output channels; the bottleneck width is features / 4.
    stride: spatial stride of the block.
    dilation: dilation (and padding) of the 3x3 conv.
    projection: whether the shortcut is a 1x1 conv + BN (first block of a stage).
    stride_in_3x3: put the stride in the 3x3 conv (torchvision) instead of the first 1x1 conv
      (caffe, DeepLab-v2).
    dtype: compute dtype; parameters stay float32.
    conv_method: how the convs are computed (layers.ConvMethod).
  """

  features: int
  stride: int = 1
  dilation: int = 1
  projection: bool = False
  stride_in_3x3: bool = False
  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mid = self.features // _EXPANSION
    reduce_stride, conv3x3_stride = (1, self.stride) if self.stride_in_3x3 else (self.stride, 1)
    h = ConvBN(
      mid, 1, stride=reduce_stride, dtype=self.dtype, conv_method=self.conv_method, name="reduce"
    )(x)
    h = ConvBN(
      mid,
      3,
      stride=conv3x3_stride,
      dilation=self.dilation,
      dtype=self.dtype,
      conv_method=self.conv_method,
      name="conv3x3",
    )(h)
    h = ConvBN(
      self.features,
      1,
      relu=False,
      dtype=self.dtype,
      conv_method=self.conv_method,
      name="increase",
    )(h)
    if self.projection:
      x = ConvBN(
        self.features,
        1,
        stride=self.stride,
        relu=False,
        dtype=self.dtype,
        conv_method=self.conv_method,
        name="shortcut",
      )(x)
    elif self.dtype is not None:
      x = x.astype(self.dtype)
    return nn.relu(h + x)


class ResLayer(nn.Module):
  """A stage of bottleneck blocks `block1..blockN`; the first one projects and strides.

  Attributes:
    num_blocks: number of bottleneck blocks.
    features: output channels of every block.
    stride: stride of the first block.
    dilation: dilation of every block's 3x3 conv.
    stride_in_3x3: see `Bottleneck`.
    dtype: compute dtype; parameters stay float32.
    conv_method: how the convs are computed (layers.ConvMethod).
  """

  num_blocks: int
  features: int
  stride: int = 1
  dilation: int = 1
  stride_in_3x3: bool = False
  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      x = Bottleneck(
        self.features,
        stride=self.stride if i == 0 else 1,
        dilation=self.dilation,
        projection=i == 0,
        stride_in_3x3=self.stride_in_3x3,
        dtype=self.dtype,
        conv_method=self.conv_method,
        name=f"block{i + 1}",
      )(x)
    return x


class Stem(nn.Module):
  """7x7/2 conv (pad 3) + BN + ReLU, then 3x3/2 max-pool (pad 1, ceil mode).

  Attributes:
    features: output channels of the 7x7 conv.
    dtype: compute dtype; parameters stay float32.
    conv_method: how the convs are computed (layers.ConvMethod).
  """

  features: int = 64
  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ConvBN(
      self.features, 7, stride=2, dtype=self.dtype, conv_method=self.conv_method, name="conv1"
    )(x)
    return max_pool_ceil(x, 3, 2, padding=1)


class DeepLabResNet(nn.Module):
  """DeepLab-v2 dilated ResNet (ResNet-101 by default) with output stride 8.

  Submodule names follow deeplab-pytorch (`layer1.conv1`, `layer2.block1.reduce`, ...), so a
  PyTorch state dict converts key by key.

  Attributes:
    stage_sizes: number of bottleneck blocks in layer2..layer5.
    stride_in_3x3: torchvision layout (stride in the 3x3 conv) instead of caffe's (first 1x1).
    dtype: compute dtype for mixed precision; parameters stay float32.
    conv_method: how the convs are computed (layers.ConvMethod).
  """

  stage_sizes: Sequence[int] = (3, 4, 23, 3)
  stride_in_3x3: bool = False
  dtype: jnp.dtype | None = None
  conv_method: ConvMethod = ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Computes backbone features.

    Args:
      x: [B, H, W, 3] images (BGR, caffe mean subtracted).

    Returns:
      [B, h, w, 2048] features, h = ceil-mode size at stride 8 (321 -> 41).
    """
    if len(self.stage_sizes) != len(_STAGE_FEATURES):
      raise ValueError(f"stage_sizes needs {len(_STAGE_FEATURES)} entries, got {self.stage_sizes}")
    x = Stem(dtype=self.dtype, conv_method=self.conv_method, name="layer1")(x)
    stages = zip(self.stage_sizes, _STAGE_FEATURES, _STAGE_STRIDES, _STAGE_DILATIONS, strict=True)
    for i, (num_blocks, features, stride, dilation) in enumerate(stages):
      x = ResLayer(
        num_blocks,
        features,
        stride=stride,
        dilation=dilation,
        stride_in_3x3=self.stride_in_3x3,
        dtype=self.dtype,
        conv_method=self.conv_method,
        name=f"layer{i + 2}",
      )(x)
    return x
