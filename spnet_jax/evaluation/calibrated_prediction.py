"""SPNet's prediction rule, the one place it is written: softmax over the candidate classes,
minus gamma on the classes trained with labels (calibration; gamma 0 is the plain classifier),
argmax. Segmentation evaluation, `predict`, the benchmark and zero-shot image classification all
call it; it takes NumPy arrays (computed in float64) and JAX arrays (float32) alike.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _is_numpy(x) -> bool:
  return isinstance(x, np.ndarray | np.generic)


def candidate_probabilities(logits, usable=None):
  """Softmax over the last axis (the candidates); candidates that are not usable get 0.

  Args:
    logits: [..., K] scores of the K candidate classes.
    usable: optional [K] bool, False for a candidate the classifier has no score for.
  """
  if _is_numpy(logits):
    logits = np.asarray(logits, np.float64)
    if usable is not None:
      logits = np.where(usable, logits, -np.inf)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)
  logits = logits.astype(jnp.float32)
  if usable is not None:
    logits = jnp.where(usable, logits, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1)


def calibrate(probabilities, calibrated, gamma):
  """Subtracts gamma from the probabilities of the `calibrated` ([K] bool) candidates."""
  xp = np if _is_numpy(probabilities) else jnp
  return probabilities - gamma * xp.asarray(calibrated, probabilities.dtype)


def calibrated_choice(logits, calibrated, gamma, usable=None):
  """Index (among the K candidates) of the prediction: argmax of the calibrated probabilities."""
  scores = calibrate(candidate_probabilities(logits, usable), calibrated, gamma)
  xp = np if _is_numpy(scores) else jnp
  return xp.argmax(scores, axis=-1)
