"""Tests for the DeepLab-v2 backbones (ResNet-101, VGG-16) and the ASPP heads."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spnet_jax.models.aspp import ASPP, ASPPL
from spnet_jax.models.resnet import Bottleneck, DeepLabResNet
from spnet_jax.models.vgg import DeepLabVGG16

# Parameter count of the reference PyTorch SPNet (ResNet-101 + ASPP, d_w = 600): conv weights,
# ASPP biases and BatchNorm weight/bias (running statistics excluded).
SPNET_RESNET101_PARAMS = 86_739_360
RATES = (6, 12, 18, 24)


# ---------------------------------------------------------------------------------------------
# Independent references.


def conv_out_size(size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
  """PyTorch Conv2d output size (floor mode)."""
  return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def pool_ceil_out_size(size: int, kernel: int, stride: int, pad: int) -> int:
  """PyTorch MaxPool2d(ceil_mode=True) output size."""
  out = math.ceil((size + 2 * pad - kernel) / stride) + 1
  # The last window must start inside the input or the left padding.
  if (out - 1) * stride >= size + pad:
    out -= 1
  return out


def resnet_out_size(size: int) -> int:
  """Spatial size after the DeepLab-v2 ResNet: stem conv, ceil pool, layer3's stride-2 1x1."""
  size = conv_out_size(size, 7, stride=2, pad=3)
  size = pool_ceil_out_size(size, 3, 2, 1)
  return conv_out_size(size, 1, stride=2)


def vgg_out_size(size: int) -> int:
  """Spatial size after DeepLab-v2 VGG-16 (3x3 convs keep the size; five ceil-mode pools)."""
  for stride in (2, 2, 2, 1, 1):
    size = pool_ceil_out_size(size, 3, stride, 1)
  return size


def np_conv(
  x: np.ndarray,
  w: np.ndarray,
  bias: np.ndarray | None = None,
  stride: int = 1,
  pad: int = 0,
  dilation: int = 1,
) -> np.ndarray:
  """Direct NHWC/HWIO convolution in float64 (cross-correlation, as in PyTorch and XLA)."""
  x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = w.shape[0]
  out_h = (x.shape[1] - dilation * (k - 1) - 1) // stride + 1
  out_w = (x.shape[2] - dilation * (k - 1) - 1) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, w.shape[-1]))
  for i in range(k):
    for j in range(k):
      patch = x[
        :,
        i * dilation : i * dilation + (out_h - 1) * stride + 1 : stride,
        j * dilation : j * dilation + (out_w - 1) * stride + 1 : stride,
      ]
      out += np.einsum("bhwc,co->bhwo", patch, w[i, j].astype(np.float64))
  return out if bias is None else out + bias


def np_bn(x: np.ndarray, stats: dict, eps: float = 1e-5) -> np.ndarray:
  """Inference BatchNorm in float64."""
  stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
  return (x - stats["mean"]) / np.sqrt(stats["var"] + eps) * stats["scale"] + stats["bias"]


def resnet_param_formula(stage_sizes: tuple[int, ...], aspp_features: int) -> int:
  """Hand count: conv weights + BN scale/offset of ResNet, plus ASPP weights and biases."""
  n = 7 * 7 * 3 * 64 + 2 * 64
  cin = 64
  for blocks, cout in zip(stage_sizes, (256, 512, 1024, 2048), strict=True):
    mid = cout // 4
    for b in range(blocks):
      n += cin * mid + 3 * 3 * mid * mid + mid * cout  # reduce, conv3x3, increase
      n += 2 * (mid + mid + cout)  # their BatchNorms
      if b == 0:
        n += cin * cout + 2 * cout  # projection shortcut + BN
      cin = cout
  n += len(RATES) * (3 * 3 * 2048 * aspp_features + aspp_features)
  return n


def vgg_param_formula(aspp_features: int, hidden: int = 1024) -> int:
  """Hand count of VGG-16 conv1_1..conv5_3 plus ASPP-L, weights and biases."""
  channels = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  n, cin = 0, 3
  for cout in channels:
    n += 3 * 3 * cin * cout + cout
    cin = cout
  branch = 3 * 3 * 512 * hidden + hidden + hidden * hidden + hidden
  branch += hidden * aspp_features + aspp_features
  return n + len(RATES) * branch


def count_trainable_and_bn_affine(variables: dict) -> int:
  """All `params` leaves plus the BatchNorm `scale`/`bias` leaves of `batch_stats`."""
  n = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables.get("batch_stats", {})):
    if path[-1].key in ("scale", "bias"):
      n += math.prod(leaf.shape)
  return n


# ---------------------------------------------------------------------------------------------
# Parameter counts and shapes (abstract evaluation only: no FLOPs for the full-size models).


def test_resnet101_aspp_param_count():
  x = jax.ShapeDtypeStruct((1, 321, 321, 3), jnp.float32)
  backbone_vars = jax.eval_shape(DeepLabResNet().init, jax.random.key(0), x)
  feats = jax.ShapeDtypeStruct((1, 41, 41, 2048), jnp.float32)
  aspp_vars = jax.eval_shape(ASPP(600).init, jax.random.key(0), feats)
  counted = count_trainable_and_bn_affine(backbone_vars) + count_trainable_and_bn_affine(aspp_vars)
  assert resnet_param_formula((3, 4, 23, 3), 600) == SPNET_RESNET101_PARAMS
  assert counted == SPNET_RESNET101_PARAMS
  # No backbone conv has a bias: every `params` leaf of the backbone is a conv kernel.
  paths = jax.tree_util.tree_leaves_with_path(backbone_vars["params"])
  assert all(p[-1].key == "kernel" for p, _ in paths)


def test_resnet_variable_names_mirror_deeplab_pytorch():
  variables = jax.eval_shape(
    DeepLabResNet().init, jax.random.key(0), jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
  )
  params, stats = variables["params"], variables["batch_stats"]
  assert params["layer1"]["conv1"]["conv"]["kernel"].shape == (7, 7, 3, 64)
  assert set(stats["layer1"]["conv1"]["bn"]) == {"scale", "bias", "mean", "var"}
  block = params["layer2"]["block1"]
  assert set(block) == {"reduce", "conv3x3", "increase", "shortcut"}
  assert block["reduce"]["conv"]["kernel"].shape == (1, 1, 64, 64)
  assert "shortcut" not in params["layer2"]["block2"]
  assert len(params["layer4"]) == 23
  assert params["layer5"]["block3"]["increase"]["conv"]["kernel"].shape == (1, 1, 512, 2048)
  assert stats["layer5"]["block1"]["shortcut"]["bn"]["mean"].shape == (2048,)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_resnet101_aspp_output_shapes(dtype):
  x = jax.ShapeDtypeStruct((2, 321, 321, 3), jnp.float32)
  backbone = DeepLabResNet(dtype=dtype)
  variables = jax.eval_shape(backbone.init, jax.random.key(0), x)
  feats = jax.eval_shape(backbone.apply, variables, x)
  assert feats.shape == (2, 41, 41, 2048)
  aspp = ASPP(600, dtype=dtype)
  aspp_vars = jax.eval_shape(aspp.init, jax.random.key(0), feats)
  out = jax.eval_shape(aspp.apply, aspp_vars, feats)
  assert out.shape == (2, 41, 41, 600)
  assert out.dtype == (dtype or jnp.float32)
  # Mixed precision never changes parameter storage.
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_vgg16_asppl_shapes_and_param_count():
  x = jax.ShapeDtypeStruct((2, 321, 321, 3), jnp.float32)
  vgg = DeepLabVGG16()
  vgg_vars = jax.eval_shape(vgg.init, jax.random.key(0), x)
  feats = jax.eval_shape(vgg.apply, vgg_vars, x)
  assert feats.shape == (2, 41, 41, 512)
  assert vgg_out_size(321) == 41
  head = ASPPL(600)
  head_vars = jax.eval_shape(head.init, jax.random.key(0), feats)
  out = jax.eval_shape(head.apply, head_vars, feats)
  assert out.shape == (2, 41, 41, 600)
  counted = count_trainable_and_bn_affine(vgg_vars) + count_trainable_and_bn_affine(head_vars)
  assert counted == vgg_param_formula(600)
  assert vgg_vars["params"]["conv5_3"]["conv"]["bias"].shape == (512,)
  assert set(head_vars["params"]["c3"]) == {"fc6", "fc7", "fc8"}


@pytest.mark.parametrize("size", [(33, 40), (50, 51)])
def test_vgg16_output_size_matches_pytorch_formula(size):
  vgg = DeepLabVGG16()
  x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
  out_shape = jax.eval_shape(vgg.apply, jax.eval_shape(vgg.init, jax.random.key(0), x), x)
  assert out_shape.shape == (1, vgg_out_size(size[0]), vgg_out_size(size[1]), 512)


# ---------------------------------------------------------------------------------------------
# Real forwards on small inputs.


@pytest.mark.parametrize("stride_in_3x3", [False, True])
@pytest.mark.parametrize("size", [(33, 40), (64, 47)])
def test_resnet_forward_size_matches_pytorch_formula(size, stride_in_3x3):
  model = DeepLabResNet(stage_sizes=(1, 1, 1, 1), stride_in_3x3=stride_in_3x3)
  x = jax.random.normal(jax.random.key(1), (1, *size, 3))
  variables = model.init(jax.random.key(0), x)
  out = model.apply(variables, x)
  assert out.shape == (1, resnet_out_size(size[0]), resnet_out_size(size[1]), 2048)
  assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("branch", range(len(RATES)))
def test_aspp_branch_uses_its_dilation(branch):
  size, center = 57, 28  # large enough for offsets of +-24 around the centre
  x = np.zeros((1, size, size, 2), np.float32)
  x[0, center, center, :] = (1.0, -0.5)
  aspp = ASPP(features=3, rates=RATES)
  variables = aspp.init(jax.random.key(0), jnp.asarray(x))
  rng = np.random.default_rng(branch)
  kernel = rng.uniform(0.5, 1.5, (3, 3, 2, 3)).astype(np.float32)
  params = jax.tree.map(np.zeros_like, variables["params"])
  params[f"c{branch}"]["conv"]["kernel"] = kernel
  out = np.asarray(aspp.apply({"params": params}, jnp.asarray(x)))

  rate = RATES[branch]
  expected = np_conv(x, kernel, pad=rate, dilation=rate)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  nonzero = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.abs(out[0]).sum(-1)), strict=True)}
  offsets = (-rate, 0, rate)
  assert nonzero == {(center + di, center + dj) for di in offsets for dj in offsets}


def test_aspp_sums_all_branches():
  x = np.random.default_rng(0).normal(size=(1, 30, 30, 4)).astype(np.float32)
  aspp = ASPP(features=5, rates=RATES)
  variables = aspp.init(jax.random.key(0), jnp.asarray(x))
  params = jax.tree.map(lambda a: a + 0.1, variables["params"])  # non-zero biases too
  out = np.asarray(aspp.apply({"params": params}, jnp.asarray(x)))
  expected = sum(
    np_conv(
      x,
      np.asarray(params[f"c{i}"]["conv"]["kernel"]),
      np.asarray(params[f"c{i}"]["conv"]["bias"]),
      pad=r,
      dilation=r,
    )
    for i, r in enumerate(RATES)
  )
  np.testing.assert_allclose(out, expected, atol=1e-4)


def _random_batch_stats(stats: dict, seed: int) -> dict:
  """Non-trivial BatchNorm statistics and affine parameters for every BN in `stats`."""
  rng = np.random.default_rng(seed)
  draw = {
    "scale": lambda s: rng.uniform(0.5, 1.5, s),
    "bias": lambda s: rng.normal(0.0, 0.5, s),
    "mean": lambda s: rng.normal(0.0, 0.5, s),
    "var": lambda s: rng.uniform(0.5, 2.0, s),
  }
  return jax.tree_util.tree_map_with_path(
    lambda path, a: jnp.asarray(draw[path[-1].key](a.shape), jnp.float32), stats
  )


def np_bottleneck(
  x: np.ndarray, params: dict, stats: dict, stride: int, dilation: int, stride_in_3x3: bool
) -> np.ndarray:
  """NumPy reference of a projecting bottleneck block."""

  def conv_bn(h, name, stride=1, pad=0, dilation=1):
    w = np.asarray(params[name]["conv"]["kernel"])
    return np_bn(np_conv(h, w, stride=stride, pad=pad, dilation=dilation), stats[name]["bn"])

  s_reduce, s_3x3 = (1, stride) if stride_in_3x3 else (stride, 1)
  h = np.maximum(conv_bn(x, "reduce", stride=s_reduce), 0)
  h = np.maximum(conv_bn(h, "conv3x3", stride=s_3x3, pad=dilation, dilation=dilation), 0)
  h = conv_bn(h, "increase")
  return np.maximum(h + conv_bn(x, "shortcut", stride=stride), 0)


@pytest.mark.parametrize("stride_in_3x3", [False, True])
def test_bottleneck_matches_numpy_reference(stride_in_3x3):
  x = np.random.default_rng(0).normal(size=(2, 9, 10, 8)).astype(np.float32)
  block = Bottleneck(16, stride=2, dilation=2, projection=True, stride_in_3x3=stride_in_3x3)
  variables = block.init(jax.random.key(0), jnp.asarray(x))
  variables = {
    "params": variables["params"],
    "batch_stats": _random_batch_stats(variables["batch_stats"], seed=1),
  }
  out = np.asarray(block.apply(variables, jnp.asarray(x)))
  params, stats = variables["params"], variables["batch_stats"]
  expected = np_bottleneck(x, params, stats, 2, 2, stride_in_3x3)
  assert out.shape == expected.shape == (2, 5, 5, 16)
  assert np.max(np.abs(out - expected)) < 1e-4
  # The two layouts really differ, so the check above pins where the stride is.
  other = np_bottleneck(x, params, stats, 2, 2, not stride_in_3x3)
  assert np.max(np.abs(out - other)) > 1e-2
