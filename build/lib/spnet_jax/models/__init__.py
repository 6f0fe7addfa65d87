"""Model registry: config.model -> a segmentation network (backbone, embedding head, classifier)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from spnet_jax.models import aspp, heads, layers, resnet, tiny, vgg

BACKBONES = ("resnet101", "vgg16", "tiny")
EMBEDDING_HEADS = ("aspp", "aspp_l", "conv1x1")
CLASSIFIERS = ("projection", "learned", "deeplab")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# How convs run (layers.ConvMethod); 'auto' picks per platform.
ATROUS_CONVS = ("auto", *layers.ATROUS_CONVS)
KERNEL_GRADS = ("auto", *layers.KERNEL_GRADS)
# Input channels from which taps beat XLA:CPU's convolutions (ResNet-101 vs the tiny backbone).
CPU_TAPS_MIN_FEATURES = 128


class SegmentationNet(nn.Module):
  """Backbone -> embedding head (d_out channels) -> classifier logits.

  With the 'projection' classifier the embedding head emits phi(x) in the word-embedding space
  and the logits are inner products with the class embeddings passed to __call__ (they are an
  input, never a parameter). With the 'learned' classifier a 1x1 layer with a bias scores a
  fixed list of classes and the embeddings are ignored. With 'deeplab' (projection=False, no
  classifier) the embedding head's outputs are the class logits, as in DeepLab-v2 itself.
  """

  backbone: nn.Module
  embedding_head: nn.Module
  classifier: nn.Module | None = None
  projection: bool = True

  def __call__(self, images: jax.Array, class_embeddings: jax.Array | None = None) -> jax.Array:
    """Returns float32 logits [B, h, w, C] at the backbone's output resolution."""
    features = self.embedding_head(self.backbone(images))
    if self.classifier is not None:
      return self.classifier(features)
    if not self.projection:
      return features.astype(jnp.float32)
    if class_embeddings is None:
      raise ValueError("The projection classifier needs the class embedding matrix.")
    return heads.semantic_projection(features, class_embeddings)


class Conv1x1Head(nn.Module):
  """A single 1x1 conv with bias: the lightest embedding head, for small backbones."""

  features: int
  dtype: jnp.dtype | None = None
  conv_method: layers.ConvMethod = layers.ConvMethod()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return layers.CaffeConv(
      self.features, 1, use_bias=True, dtype=self.dtype, conv_method=self.conv_method, name="c0"
    )(x)


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


def create_model(
  model_config: ml_collections.ConfigDict, embedding_dim: int, num_classes: int
) -> SegmentationNet:
  """Builds the network described by config.model.

  Args:
    model_config: config.model.
    embedding_dim: d_w, the width of the class embeddings (projection classifier).
    num_classes: classes scored by the learned classifier (ignored by the projection).

  Returns:
    An uninitialised SegmentationNet.
  """
  if model_config.dtype not in DTYPES:
    raise ValueError(f"Unknown config.model.dtype {model_config.dtype!r}; valid: {list(DTYPES)}.")
  dtype = DTYPES[model_config.dtype]
  convs = conv_method(model_config)
  name = model_config.backbone
  if name == "resnet101":
    backbone = resnet.DeepLabResNet(
      stride_in_3x3=model_config.get("stride_in_3x3", False), dtype=dtype, conv_method=convs
    )
  elif name == "vgg16":
    backbone = vgg.DeepLabVGG16(dtype=dtype, conv_method=convs)
  elif name == "tiny":
    backbone = tiny.TinyDilatedNet(
      width=model_config.width,
      dilations=tuple(model_config.dilations),
      dtype=dtype,
      conv_method=convs,
    )
  else:
    raise ValueError(f"Unknown config.model.backbone {name!r}; valid: {BACKBONES}.")

  if model_config.classifier == "projection":
    head_width, classifier = embedding_dim, None
  elif model_config.classifier == "learned":
    head_width = model_config.learned_head_width or embedding_dim
    classifier = heads.LearnedClassifier(num_classes, dtype=dtype)
  elif model_config.classifier == "deeplab":
    head_width, classifier = num_classes, None
  else:
    raise ValueError(
      f"Unknown config.model.classifier {model_config.classifier!r}; valid: {CLASSIFIERS}."
    )

  kind = model_config.embedding_head
  rates = tuple(model_config.aspp_rates)
  if kind == "aspp":
    head = aspp.ASPP(head_width, rates=rates, dtype=dtype, conv_method=convs)
  elif kind == "aspp_l":
    head = aspp.ASPPL(head_width, rates=rates, dtype=dtype, conv_method=convs)
  elif kind == "conv1x1":
    head = Conv1x1Head(head_width, dtype=dtype, conv_method=convs)
  else:
    raise ValueError(f"Unknown config.model.embedding_head {kind!r}; valid: {EMBEDDING_HEADS}.")
  return SegmentationNet(
    backbone=backbone,
    embedding_head=head,
    classifier=classifier,
    projection=model_config.classifier == "projection",
  )
