"""The model registry: SegmentationNet (backbone + embedding head + classifier) from a config."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from spnet_jax.models import aspp, heads, layers, resnet, tiny, vgg
from spnet_jax.models.conv_policy import conv_method

BACKBONES = ("resnet101", "vgg16", "tiny")
EMBEDDING_HEADS = ("aspp", "aspp_l", "conv1x1")
CLASSIFIERS = ("projection", "learned", "deeplab")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
