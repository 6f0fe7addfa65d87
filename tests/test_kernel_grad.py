"""Kernel gradients by taps equal NumPy loops and autodiff of XLA's convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spnet_jax.models import aspp, kernel_grad, layers, resnet
from spnet_jax.models.conv_policy import CPU_TAPS_MIN_FEATURES, conv_method, kernel_grad_method
from tests.test_models import _model_config

_NHWC = ("NHWC", "HWIO", "NHWC")


def _numpy_kernel_grad(x, out_grad, kernel_hw, stride, padding, rate):
  """dK[i, j, c, o] = sum_{b,y,x} pad(x)[b, y*s + i*d, x*s + j*d, c] * out_grad[b, y, x, o]."""
  (top, bottom), (left, right) = padding
  padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  grad = np.zeros((*kernel_hw, x.shape[-1], out_grad.shape[-1]))
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      for y in range(out_grad.shape[1]):
        for x_ in range(out_grad.shape[2]):
          pixel = padded[:, y * stride + i * rate, x_ * stride + j * rate]  # [B, C]
          grad[i, j] += pixel.T @ out_grad[:, y, x_]
  return grad


def _lax_conv(x, kernel, stride, padding, rate):
  return jax.lax.conv_general_dilated(
    x, kernel, (stride, stride), padding, rhs_dilation=(rate, rate), dimension_numbers=_NHWC
  )


_CASES = [  # kernel, stride, rate, padding, height, width
  (3, 1, 1, ((1, 1), (1, 1)), 9, 7),
  (3, 2, 1, ((1, 1), (1, 1)), 9, 8),  # Strided, even width.
  (3, 1, 3, ((3, 3), (3, 3)), 8, 10),
  (3, 1, 8, ((8, 8), (8, 8)), 6, 7),  # Rate beyond the image: the outer taps read padding only.
  (7, 2, 1, ((3, 3), (3, 3)), 11, 10),  # The ResNet stem.
  (1, 2, 1, ((0, 0), (0, 0)), 9, 9),  # A strided 1x1 shortcut.
  (3, 1, 2, ((0, 3), (4, 1)), 7, 9),  # Asymmetric padding.
]


@pytest.mark.parametrize(("k", "stride", "rate", "padding", "height", "width"), _CASES)
def test_kernel_grad_by_taps_equals_numpy_loops(k, stride, rate, padding, height, width):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, height, width, 3)).astype(np.float32)
  out_shape = _lax_conv(x, np.zeros((k, k, 3, 4), np.float32), stride, padding, rate).shape
  out_grad = rng.normal(size=out_shape).astype(np.float32)
  got = kernel_grad.kernel_grad_by_taps(
    jnp.asarray(x), jnp.asarray(out_grad), (k, k, 3, 4), (stride, stride), padding, (rate, rate)
  )
  want = _numpy_kernel_grad(x, out_grad, (k, k), stride, padding, rate)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_tap_range_by_hand():
  # Input 5 wide, stride 2, 3 outputs: tap shift -1 reads inputs -1, 1, 3 -> outputs 1..2.
  assert kernel_grad.tap_range(-1, 2, 5, 3) == (1, 3)
  assert kernel_grad.tap_range(0, 2, 5, 3) == (0, 3)  # Inputs 0, 2, 4.
  assert kernel_grad.tap_range(1, 2, 5, 3) == (0, 2)  # Inputs 1, 3 (5 is outside).
  assert kernel_grad.tap_range(7, 1, 5, 5) == (0, 0)  # Beyond the image: empty.
  assert kernel_grad.tap_range(-9, 1, 5, 5) == (5, 5)


# XLA's own forward for every case; the atrous rewrites for the stride-1 dilated ones.
_FORWARDS = [(None, *case) for case in _CASES] + [
  (forward, *case)
  for forward in (layers.conv_by_taps, layers.conv_by_phases)
  for case in _CASES
  if case[1] == 1 and case[2] > 1
]


@pytest.mark.parametrize(
  ("forward", "k", "stride", "rate", "padding", "height", "width"), _FORWARDS
)
def test_gradients_equal_autodiff_of_xla_conv(forward, k, stride, rate, padding, height, width):
  conv = kernel_grad.with_kernel_grad_by_taps(forward)
  x = jax.random.normal(jax.random.key(0), (2, height, width, 3))
  kernel = jax.random.normal(jax.random.key(1), (k, k, 3, 4))

  def loss(conv_fn, x, kernel):
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _NHWC)
    y = conv_fn(x, kernel, (stride, stride), padding, None, (rate, rate), numbers)
    return jnp.sum(jnp.sin(y))

  np.testing.assert_allclose(
    loss(conv, x, kernel), loss(jax.lax.conv_general_dilated, x, kernel), rtol=1e-5
  )
  want = jax.grad(loss, argnums=(1, 2))(jax.lax.conv_general_dilated, x, kernel)
  got = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(conv, x, kernel)
  for a, b in zip(want, got, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_gradients_keep_their_dtypes():
  conv = kernel_grad.with_kernel_grad_by_taps()
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 4), jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 2), jnp.bfloat16)
  numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _NHWC)

  def loss(x, kernel):
    y = conv(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  x_grad, kernel_grad_ = jax.grad(loss, argnums=(0, 1))(x, kernel)
  assert x_grad.dtype == kernel_grad_.dtype == jnp.bfloat16
  want = jax.grad(
    lambda k: jnp.sum(
      jax.lax.conv_general_dilated(
        x.astype(jnp.float32), k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers
      )
      .astype(jnp.bfloat16)
      .astype(jnp.float32)
      ** 2
    )
  )(kernel.astype(jnp.float32))
  np.testing.assert_allclose(kernel_grad_.astype(np.float32), want, rtol=0.05, atol=0.5)


def test_unsupported_convolutions_are_refused_with_the_config_field():
  conv = kernel_grad.with_kernel_grad_by_taps()
  x, kernel = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 2, 4))
  numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _NHWC)
  with pytest.raises(ValueError, match="conv_kernel_grad='native'"):
    conv(x, kernel, (1, 1), "SAME", dimension_numbers=numbers, feature_group_count=2)
  with pytest.raises(ValueError, match="conv_kernel_grad='native'"):
    conv(x, kernel, (1, 1), "SAME", dimension_numbers=numbers)


class _ResNetWithASPP(nn.Module):
  """One bottleneck per stage and an ASPP whose rates exceed the 5x5 features."""

  conv_method: layers.ConvMethod

  @nn.compact
  def __call__(self, x):
    x = resnet.DeepLabResNet(stage_sizes=(1, 1, 1, 1), conv_method=self.conv_method)(x)
    return aspp.ASPP(5, rates=(2, 12), conv_method=self.conv_method)(x)


def test_whole_resnet_gradients_equal_native_ones():
  images = jax.random.normal(jax.random.key(0), (1, 33, 33, 3))
  native = _ResNetWithASPP(layers.ConvMethod())
  taps = _ResNetWithASPP(layers.ConvMethod(atrous="taps", kernel_grad="taps"))
  variables = native.init(jax.random.key(1), images)

  def loss(model, params):
    out = model.apply({**variables, "params": params}, images)
    return jnp.sum(jnp.sin(out))

  want = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)(native, variables["params"])
  got = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)(taps, variables["params"])
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True
  ):
    scale = float(jnp.max(jnp.abs(a))) + 1e-6
    np.testing.assert_allclose(b / scale, a / scale, atol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_auto_uses_taps_on_cpus_only():
  assert kernel_grad_method("auto", platform="cpu") == "taps"
  assert kernel_grad_method("auto", platform="gpu") == "native"
  assert kernel_grad_method("auto", platform="tpu") == "native"
  assert kernel_grad_method("native", platform="cpu") == "native"
  with pytest.raises(ValueError, match=r"config\.model\.conv_kernel_grad 'fast'"):
    kernel_grad_method("fast")
  with pytest.raises(ValueError, match=r"ConvMethod\.kernel_grad 'fast'"):
    layers.ConvMethod(kernel_grad="fast")


def test_auto_limits_taps_to_wide_convs_and_explicit_taps_do_not():
  wide = CPU_TAPS_MIN_FEATURES
  auto = conv_method(_model_config(), platform="cpu")
  assert auto == layers.ConvMethod("taps", "taps", wide, wide)
  explicit = conv_method(_model_config(atrous_conv="taps", conv_kernel_grad="taps"), "cpu")
  assert explicit == layers.ConvMethod("taps", "taps", 0, 0)
  # One field explicit, the other 'auto': the threshold follows the 'auto' one only.
  mixed = conv_method(_model_config(atrous_conv="taps"), platform="cpu")
  assert mixed == layers.ConvMethod("taps", "taps", 0, wide)
  mixed = conv_method(_model_config(conv_kernel_grad="taps"), platform="gpu")
  assert mixed == layers.ConvMethod("space_to_batch", "taps", 0, 0)
  mixed = conv_method(_model_config(atrous_conv="taps"), platform="gpu")
  assert mixed == layers.ConvMethod("taps", "native", 0, 0)
  assert conv_method(_model_config(), platform="gpu") == layers.ConvMethod("space_to_batch")
  assert conv_method(_model_config(), platform="tpu") == layers.ConvMethod()


@pytest.mark.parametrize(
  ("in_features", "kernel_size", "dilation", "want_custom_grad", "want_taps_forward"),
  [(4, 3, 2, False, False), (4, 1, 1, True, False), (8, 3, 2, True, True)],
)
def test_taps_apply_to_wide_convs_and_every_1x1_kernel_gradient(
  in_features, kernel_size, dilation, want_custom_grad, want_taps_forward
):
  method = layers.ConvMethod("taps", "taps", atrous_min_features=8, kernel_grad_min_features=8)
  conv = layers.CaffeConv(3, kernel_size, dilation=dilation, conv_method=method)
  x = jnp.ones((1, 6, 6, in_features))
  variables = conv.init(jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(lambda v: conv.apply(v, x))(variables))
  assert ("custom_vjp_call" in jaxpr) == want_custom_grad
  assert ("conv_general_dilated" not in jaxpr) == want_taps_forward
