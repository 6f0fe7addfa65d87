"""Classifier heads: the semantic projection (fixed word embeddings) and a learned 1x1 baseline."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def semantic_projection(features: jax.Array, class_embeddings: jax.Array) -> jax.Array:
  """SPNet's logits: inner products of pixel embeddings with the fixed class embeddings.

  Args:
    features: [B, H, W, d] pixel embeddings phi(x).
    class_embeddings: [C, d] L2-normalised class embeddings W (never trained).

  Returns:
    float32 logits [B, H, W, C]; no bias and no temperature, as in the paper's eq. (1).
  """
  logits = jnp.einsum("bhwd,cd->bhwc", features, class_embeddings.astype(features.dtype))
  return logits.astype(jnp.float32)


class LearnedClassifier(nn.Module):
  """The DeepLab baseline: a trainable 1x1 classifier with a bias over a fixed class list."""

  num_classes: int
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    logits = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.initializers.normal(0.01),
      name="conv",
    )(features)
    return logits.astype(jnp.float32)
