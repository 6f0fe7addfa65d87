"""PyTorch reference forwards of DeepLab-v2 / SPNet computed straight from a state dict.

Written with torch.nn.functional only, so that they depend on the published key layouts and the
published architecture (deeplab-pytorch's DeepLabV2 and MSC, torchvision's ResNet/VGG) and not
on any code of spnet_jax. Keys are given without wrapper prefixes (`module.`, `scale.`, `base.`).
All tensors are NCHW float32; BatchNorm is in eval mode with eps 1e-5.
"""

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

StateDict = Mapping[str, torch.Tensor]
# Blocks per stage, output channels, first-block stride and dilation of DeepLab-v2 ResNet-101.
RESNET101_STAGES = ((3, 256, 1, 1), (4, 512, 2, 1), (23, 1024, 1, 2), (3, 2048, 1, 4))
# VGG-16: convs per block, their dilation, and the stride of the 3x3 max-pool after the block.
VGG16_BLOCKS = ((2, 1, 2), (2, 1, 2), (3, 1, 2), (3, 1, 1), (3, 2, 1))
VGG16_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
ASPP_RATES = (6, 12, 18, 24)


def batch_norm(x: torch.Tensor, sd: StateDict, prefix: str) -> torch.Tensor:
  """Eval-mode BatchNorm from `<prefix>.{weight,bias,running_mean,running_var}`."""
  return F.batch_norm(
    x,
    sd[f"{prefix}.running_mean"],
    sd[f"{prefix}.running_var"],
    sd[f"{prefix}.weight"],
    sd[f"{prefix}.bias"],
    training=False,
    eps=1e-5,
  )


def conv_bn(
  x: torch.Tensor,
  sd: StateDict,
  conv: str,
  bn: str,
  stride: int = 1,
  dilation: int = 1,
  relu: bool = True,
) -> torch.Tensor:
  """Bias-free conv (padding dilation * (k - 1) / 2) + BatchNorm (+ ReLU)."""
  weight = sd[f"{conv}.weight"]
  padding = dilation * (weight.shape[-1] - 1) // 2
  x = F.conv2d(x, weight, None, stride=stride, padding=padding, dilation=dilation)
  x = batch_norm(x, sd, bn)
  return F.relu(x) if relu else x


def caffe_resnet101(sd: StateDict, x: torch.Tensor, shortcut: str = "shortcut") -> torch.Tensor:
  """deeplab-pytorch's DeepLabV2 ResNet-101 up to layer5 (stride in the first 1x1 conv).

  Args:
    sd: keys `layer1.conv1.{conv,bn}.*`, `layerK.blockN.{reduce,conv3x3,increase,<shortcut>}.*`.
    x: [B, 3, H, W] images.
    shortcut: name of the projection shortcut (`shortcut`; `proj` in older deeplab-pytorch).

  Returns:
    [B, 2048, h, w] features at output stride 8.
  """
  x = conv_bn(x, sd, "layer1.conv1.conv", "layer1.conv1.bn", stride=2)
  x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
  for stage, (blocks, _, stride, dilation) in enumerate(RESNET101_STAGES, start=2):
    for n in range(1, blocks + 1):
      name = f"layer{stage}.block{n}"
      s = stride if n == 1 else 1
      h = conv_bn(x, sd, f"{name}.reduce.conv", f"{name}.reduce.bn", stride=s)
      h = conv_bn(h, sd, f"{name}.conv3x3.conv", f"{name}.conv3x3.bn", dilation=dilation)
      h = conv_bn(h, sd, f"{name}.increase.conv", f"{name}.increase.bn", relu=False)
      if n == 1:
        p = f"{name}.{shortcut}"
        x = conv_bn(x, sd, f"{p}.conv", f"{p}.bn", stride=s, relu=False)
      x = F.relu(h + x)
  return x


def torchvision_resnet101_dilated(sd: StateDict, x: torch.Tensor) -> torch.Tensor:
  """torchvision ResNet-101 weights in the DeepLab-v2 arrangement (output stride 8).

  The torchvision bottleneck (stride in conv2, the 3x3), with DeepLab-v2's stage strides and
  dilations and its ceil-mode stem pool, i.e. what spnet_jax builds with stride_in_3x3=True.
  """
  x = conv_bn(x, sd, "conv1", "bn1", stride=2)
  x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
  for stage, (blocks, _, stride, dilation) in enumerate(RESNET101_STAGES, start=1):
    for n in range(blocks):
      name = f"layer{stage}.{n}"
      s = stride if n == 0 else 1
      h = conv_bn(x, sd, f"{name}.conv1", f"{name}.bn1")
      h = conv_bn(h, sd, f"{name}.conv2", f"{name}.bn2", stride=s, dilation=dilation)
      h = conv_bn(h, sd, f"{name}.conv3", f"{name}.bn3", relu=False)
      if n == 0:
        x = conv_bn(x, sd, f"{name}.downsample.0", f"{name}.downsample.1", stride=s, relu=False)
      x = F.relu(h + x)
  return x


def vgg16(sd: StateDict, x: torch.Tensor) -> torch.Tensor:
  """DeepLab-v2 VGG-16 up to pool5 from torchvision-style `features.{i}.*` keys."""
  convs = iter(VGG16_FEATURE_INDICES)
  for num_convs, dilation, pool_stride in VGG16_BLOCKS:
    for _ in range(num_convs):
      i = next(convs)
      x = F.conv2d(
        x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=dilation, dilation=dilation
      )
      x = F.relu(x)
    x = F.max_pool2d(x, 3, pool_stride, 1, ceil_mode=True)
  return x


def aspp(sd: StateDict, x: torch.Tensor, prefix: str = "aspp", rates=ASPP_RATES) -> torch.Tensor:
  """DeepLab-v2 ASPP: sum over i of conv3x3(dilation rates[i]) `<prefix>.c{i}` with bias."""
  return sum(
    F.conv2d(x, sd[f"{prefix}.c{i}.weight"], sd[f"{prefix}.c{i}.bias"], padding=r, dilation=r)
    for i, r in enumerate(rates)
  )


def aspp_l(sd: StateDict, x: torch.Tensor, prefix: str = "aspp", rates=ASPP_RATES) -> torch.Tensor:
  """DeepLab-v2 ASPP-L: sum of fc6 (3x3, dilated) -> ReLU -> fc7 (1x1) -> ReLU -> fc8 (1x1)."""
  out = 0
  for i, r in enumerate(rates):
    p = f"{prefix}.c{i}"
    h = F.relu(F.conv2d(x, sd[f"{p}.fc6.weight"], sd[f"{p}.fc6.bias"], padding=r, dilation=r))
    h = F.relu(F.conv2d(h, sd[f"{p}.fc7.weight"], sd[f"{p}.fc7.bias"]))
    out = out + F.conv2d(h, sd[f"{p}.fc8.weight"], sd[f"{p}.fc8.bias"])
  return out


def projection(h: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
  """SPNet's logits: [B, d, h, w] x [C, d] -> [B, C, h, w]."""
  return torch.einsum("bdhw,cd->bchw", h, class_embeddings)


def learned_classifier(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
  """A 1x1 conv with bias; weight [C, d] or [C, d, 1, 1]."""
  return F.conv2d(h, weight.reshape(weight.shape[0], -1, 1, 1), bias)


def msc(
  net: Callable[[torch.Tensor], torch.Tensor],
  x: torch.Tensor,
  scales: Sequence[float] = (0.5, 0.75),
) -> list[torch.Tensor]:
  """SPNet's MSC: [logits at scale 1, each scale's logits, fused element-wise max].

  The extra scales resize the input to size int(side * s) (SPNet's libs/models/msc.py); their
  logits are resized to the scale-1 logits' size before the max, all bilinear with
  align_corners=False.
  """
  logits = net(x)
  pyramid = [
    net(
      F.interpolate(
        x, size=[int(side * s) for side in x.shape[2:]], mode="bilinear", align_corners=False
      )
    )
    for s in scales
  ]
  size = logits.shape[2:]
  resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
  fused = torch.max(torch.stack([logits, *resized]), dim=0)[0]
  return [logits, *pyramid, fused]
