"""The xlsa17 metrics: mean per-class top-1 accuracy, ZSL, GZSL S / U / H and calibration.

Scores arrive as [N, K] arrays over K candidate classes (`candidates` holds their class ids), so
that ZSL (unseen candidates only) and GZSL (all classes) share the code. Calibration follows the
segmentation side (spnet_jax/evaluation/calibrated_prediction.py): softmax over the candidates,
minus gamma for the classes trained on, argmax; gamma = 0 is the uncalibrated classifier.
"""

import numpy as np

from spnet_jax.evaluation import calibrated_prediction, metrics


def mean_per_class_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Top-1 accuracy of each class present in `labels`, averaged over those classes.

  Args:
    labels: [N] true class ids.
    predictions: [N] predicted class ids.

  Returns:
    The mean per-class accuracy in [0, 1]; NaN when `labels` is empty.
  """
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  classes = np.unique(labels)
  if classes.size == 0:
    return float("nan")
  return float(np.mean([np.mean(predictions[labels == c] == c) for c in classes]))


def predict(
  probabilities: np.ndarray, candidates: np.ndarray, calibrated: np.ndarray, gamma: float
) -> np.ndarray:
  """Class ids of the calibrated prediction (evaluation/calibrated_prediction.py's rule)."""
  adjusted = calibrated_prediction.calibrate(probabilities, calibrated, gamma)
  return np.asarray(candidates)[np.argmax(adjusted, axis=1)]


def zsl_accuracy(scores: np.ndarray, labels: np.ndarray, candidates: np.ndarray) -> float:
  """ZSL: mean per-class accuracy of images classified among `candidates` (the unseen classes)."""
  return mean_per_class_accuracy(labels, np.asarray(candidates)[np.argmax(scores, axis=1)])


def gzsl_sweep(
  seen_probabilities: np.ndarray,
  seen_labels: np.ndarray,
  unseen_probabilities: np.ndarray,
  unseen_labels: np.ndarray,
  candidates: np.ndarray,
  calibrated: np.ndarray,
  gammas,
) -> dict:
  """GZSL S, U and H at every gamma, and the gamma with the best H (ties: the smallest).

  Args:
    seen_probabilities: [Ns, K] softmax over all candidates for images of seen classes.
    seen_labels: [Ns] their class ids.
    unseen_probabilities: [Nu, K] the same for images of unseen classes.
    unseen_labels: [Nu] their class ids.
    candidates: [K] class ids of the columns.
    calibrated: [K] bool, the classes whose probability gamma is subtracted from (the seen ones).
    gammas: calibration factors to evaluate.

  Returns:
    {'gammas', 'seen', 'unseen', 'harmonic' (lists, one entry per gamma), 'best_gamma'}.
  """
  seen, unseen, harmonic = [], [], []
  for gamma in gammas:
    s = mean_per_class_accuracy(
      seen_labels, predict(seen_probabilities, candidates, calibrated, gamma)
    )
    u = mean_per_class_accuracy(
      unseen_labels, predict(unseen_probabilities, candidates, calibrated, gamma)
    )
    seen.append(s)
    unseen.append(u)
    harmonic.append(metrics.harmonic_mean(s, u))
  best = int(np.argmax(harmonic))
  return {
    "gammas": [float(g) for g in gammas],
    "seen": seen,
    "unseen": unseen,
    "harmonic": harmonic,
    "best_gamma": float(gammas[best]),
  }
