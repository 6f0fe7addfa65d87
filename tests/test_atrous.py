"""Dilated convs computed over phases (space-to-batch) or by taps equal the native one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spnet_jax.models import layers
from spnet_jax.models.conv_policy import atrous_method
from spnet_jax.models.registry import create_model
from tests.test_models import _model_config


def _numpy_dilated_conv(x, kernel, rate):
  """Direct loops: out[b, y, x] = sum_ij pad(x)[b, y + i*rate, x + j*rate] @ kernel[i, j]."""
  k = kernel.shape[0]
  pad = rate * (k - 1) // 2
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  height, width = x.shape[1:3]
  out = np.zeros((x.shape[0], height, width, kernel.shape[-1]))
  for i in range(k):
    for j in range(k):
      window = padded[:, i * rate : i * rate + height, j * rate : j * rate + width]
      out += window @ kernel[i, j]
  return out


@pytest.mark.parametrize(
  ("height", "width", "rate", "kernel_size"),
  [
    (9, 9, 2, 3),
    (11, 7, 3, 3),  # Non-square, sizes not multiples of the rate.
    (6, 6, 4, 3),
    (5, 8, 12, 3),  # Rate beyond the image: off-centre taps read only padding.
    (10, 10, 2, 5),
  ],
)
@pytest.mark.parametrize("method", [layers.conv_by_phases, layers.conv_by_taps])
def test_rewrites_equal_numpy_dilated_conv(height, width, rate, kernel_size, method):
  rng = np.random.default_rng(rate + height)
  x = rng.standard_normal((2, height, width, 3)).astype(np.float32)
  kernel = rng.standard_normal((kernel_size, kernel_size, 3, 4)).astype(np.float32)
  pad = rate * (kernel_size - 1) // 2
  numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
  ours = method(
    jnp.asarray(x),
    jnp.asarray(kernel),
    (1, 1),
    ((pad, pad), (pad, pad)),
    rhs_dilation=(rate, rate),
    dimension_numbers=numbers,
  )
  np.testing.assert_allclose(ours, _numpy_dilated_conv(x, kernel, rate), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", [layers.conv_by_phases, layers.conv_by_taps])
def test_rewrites_take_asymmetric_padding_like_lax(method):
  x = jax.random.normal(jax.random.key(3), (1, 9, 8, 2))
  kernel = jax.random.normal(jax.random.key(4), (3, 3, 2, 5))
  padding, dilation = ((1, 4), (0, 2)), (2, 3)
  names = ("NHWC", "HWIO", "NHWC")
  want = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=names
  )
  numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, names)
  got = method(x, kernel, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=numbers)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", [layers.conv_by_phases, layers.conv_by_taps])
def test_rewrites_refuse_strides(method):
  x, kernel = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2))
  numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
  with pytest.raises(ValueError, match="stride 1"):
    method(x, kernel, (2, 2), ((2, 2), (2, 2)), rhs_dilation=(2, 2), dimension_numbers=numbers)


@pytest.mark.parametrize(("stride", "atrous"), [(1, "space_to_batch"), (1, "taps"), (2, "taps")])
def test_caffe_conv_same_parameters_and_gradients_either_way(stride, atrous):
  x = jax.random.normal(jax.random.key(0), (2, 13, 10, 5))
  dilated = layers.CaffeConv(6, 3, stride=stride, dilation=3, use_bias=True)
  phases = layers.CaffeConv(
    6, 3, stride=stride, dilation=3, use_bias=True, conv_method=layers.ConvMethod(atrous=atrous)
  )
  variables = dilated.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, phases.init(jax.random.key(1), x)) == jax.tree.map(
    jnp.shape, variables
  )
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # A non-zero bias.

  def loss(module, variables, x):
    return jnp.sum(jnp.sin(module.apply(variables, x)))

  want = jax.grad(loss, argnums=(1, 2))(dilated, variables, x)
  got = jax.grad(loss, argnums=(1, 2))(phases, variables, x)
  np.testing.assert_allclose(
    dilated.apply(variables, x), phases.apply(variables, x), rtol=1e-5, atol=1e-5
  )
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("atrous_conv", ["space_to_batch", "taps"])
def test_whole_model_gives_the_same_logits_either_way(atrous_conv):
  images = jax.random.normal(jax.random.key(0), (2, 40, 40, 3))
  embeddings = jax.random.normal(jax.random.key(1), (7, 9))
  dilated = create_model(_model_config(atrous_conv="dilated"), embedding_dim=9, num_classes=7)
  phases = create_model(_model_config(atrous_conv=atrous_conv), embedding_dim=9, num_classes=7)
  variables = dilated.init(jax.random.key(2), images, embeddings)
  convs = [
    str(jax.make_jaxpr(model.apply)(variables, images, embeddings)).count("conv_general_dilated")
    for model in (dilated, phases)
  ]
  if atrous_conv == "taps":  # Every dilated conv became matmuls (phases keep dense convs).
    assert convs[1] < convs[0], convs
  # Non-zero last convs, so every dilated conv of the tiny backbone shapes the output.
  variables = jax.tree.map(lambda v: v + 0.01, variables)
  np.testing.assert_allclose(
    dilated.apply(variables, images, embeddings),
    phases.apply(variables, images, embeddings),
    rtol=1e-4,
    atol=1e-4,
  )


def test_auto_uses_phases_on_gpus_and_taps_on_cpus():
  assert atrous_method("auto", platform="gpu") == "space_to_batch"
  assert atrous_method("auto", platform="cpu") == "taps"
  assert atrous_method("auto", platform="tpu") == "dilated"
  assert atrous_method("taps", platform="gpu") == "taps"
  assert atrous_method("dilated", platform="gpu") == "dilated"
  with pytest.raises(ValueError, match=r"config\.model\.atrous_conv 'fast'"):
    atrous_method("fast")
