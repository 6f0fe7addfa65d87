"""Which convolution implementation runs where: 'auto' resolved by platform and width."""

import jax
import ml_collections

from spnet_jax.models import layers

# How convs run (layers.ConvMethod); 'auto' picks per platform.
ATROUS_CONVS = ("auto", *layers.ATROUS_CONVS)
KERNEL_GRADS = ("auto", *layers.KERNEL_GRADS)
# Input channels from which taps beat XLA:CPU's convolutions (ResNet-101 vs the tiny backbone).
CPU_TAPS_MIN_FEATURES = 128


def atrous_method(atrous_conv: str, platform: str | None = None) -> str:
  """How config.model.atrous_conv computes dilated convs on `platform` (default: JAX's).

  'auto' is 'space_to_batch' on GPUs, where cuDNN's dilated-conv gradients are several times
  slower than dense ones (H100 training step 95.9 -> 72.5 ms, BENCHMARKS.md); 'taps' on CPUs,
  where skipping the taps that read padding only pays (the ASPP's rates exceed small feature
  maps; conv_method limits it to wide convs); and 'dilated' elsewhere (XLA:TPU handles dilation
  itself). Every method gives the same numbers (tests/test_atrous.py).
  """
  auto = {"gpu": "space_to_batch", "cpu": "taps"}
  return _resolve("atrous_conv", atrous_conv, ATROUS_CONVS, auto, "dilated", platform)


def kernel_grad_method(kernel_grad: str, platform: str | None = None) -> str:
  """How config.model.conv_kernel_grad computes kernel gradients on `platform`.

  'auto' is 'taps' on CPUs, where XLA's kernel-gradient convolution runs at about a third of
  its matmul speed (BENCHMARKS.md), and 'native' elsewhere.
  """
  auto = {"cpu": "taps"}
  return _resolve("conv_kernel_grad", kernel_grad, KERNEL_GRADS, auto, "native", platform)


def _resolve(field, value, choices, auto_by_platform, auto_default, platform):
  """config.model.<field>'s `value`, checked against `choices`, with 'auto' picked per platform."""
  if value not in choices:
    raise ValueError(f"Unknown config.model.{field} {value!r}; valid: {choices}.")
  if value == "auto":
    return auto_by_platform.get(platform or jax.default_backend(), auto_default)
  return value


def conv_method(
  model_config: ml_collections.ConfigDict, platform: str | None = None
) -> layers.ConvMethod:
  """config.model's convolution choices, 'auto' resolved for `platform` (default: JAX's).

  Where a field's 'auto' picks taps (CPUs), they apply to convs with at least
  CPU_TAPS_MIN_FEATURES input channels: on narrower ones XLA's own convolutions are faster
  (BENCHMARKS.md). An explicit 'taps' applies to every conv.
  """
  atrous_conv = model_config.get("atrous_conv", "auto")
  kernel_grad = model_config.get("conv_kernel_grad", "auto")
  atrous = atrous_method(atrous_conv, platform)
  grad = kernel_grad_method(kernel_grad, platform)

  def min_features(field_value, method):
    return CPU_TAPS_MIN_FEATURES if field_value == "auto" and method == "taps" else 0

  return layers.ConvMethod(
    atrous=atrous,
    kernel_grad=grad,
    atrous_min_features=min_features(atrous_conv, atrous),
    kernel_grad_min_features=min_features(kernel_grad, grad),
  )
