"""Self-training (transductive zero-label): pseudo-label unlabelled pixels with unseen classes.

After zero-label training, the ignore pixels of training images (unseen objects among them) get
an unseen-class label where the model is most confident: among the ignore pixels of a batch that
the model assigns to unseen class u, the top `fraction` by softmax confidence are labelled u.
Computed on device for each batch, so no second copy of the dataset is ever stored.
"""

import jax
import jax.numpy as jnp

from spnet_jax.data.splits import IGNORE_LABEL


def pseudo_label(
  logits: jax.Array,
  labels: jax.Array,
  num_known: int,
  fraction: float,
  image_mask: jax.Array | None = None,
) -> jax.Array:
  """Adds confident unseen-class pseudo-labels to the ignore pixels of `labels`.

  Args:
    logits: [B, H, W, K + U] logits at the label resolution: the K trained classes first, then
      the U unseen classes.
    labels: [B, H, W] training labels in 0..K-1 or IGNORE_LABEL.
    num_known: K.
    fraction: share of each unseen class's candidate pixels (ignore pixels predicted as that
      class) that get labelled, the most confident first; in (0, 1].
    image_mask: [B] bool, False for images that take no part (the padding of a batch that does
      not divide over the devices); None: every image.

  Returns:
    Labels where chosen ignore pixels hold K + u for unseen class u; other pixels unchanged.
  """
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  probs = jax.nn.softmax(logits, axis=-1)
  prediction = jnp.argmax(probs, axis=-1)
  confidence = jnp.max(probs, axis=-1)
  candidate = (labels == IGNORE_LABEL) & (prediction >= num_known)
  if image_mask is not None:
    candidate &= image_mask[:, None, None]
  result = labels
  for u in range(logits.shape[-1] - num_known):
    mine = candidate & (prediction == num_known + u)
    scores = jnp.where(mine, confidence, jnp.nan)
    # The (1 - fraction) quantile of this class's candidates; NaN when it has none.
    threshold = jnp.nanquantile(scores, 1.0 - fraction)
    chosen = mine & (confidence >= threshold)
    result = jnp.where(chosen, num_known + u, result)
  return result
