"""Segmentation metrics from confusion matrices: per-class IoU, mIoU and the harmonic mean.

A confusion matrix has shape [C, C + 1]: rows are ground-truth classes, columns predictions,
and the extra last column counts pixels that received no prediction (a classifier that has no
score for any candidate class, e.g. the learned head on unseen classes). Those pixels are
misses, never hits.
"""

import numpy as np


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
  """IoU of each class; NaN where the class is absent from both ground truth and prediction."""
  confusion = np.asarray(confusion, np.float64)
  num_classes = confusion.shape[0]
  true_positive = np.diag(confusion[:, :num_classes])
  ground_truth = confusion.sum(axis=1)
  predicted = confusion[:, :num_classes].sum(axis=0)
  union = ground_truth + predicted - true_positive
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(confusion: np.ndarray, classes) -> float:
  """Mean IoU over `classes`, skipping NaN (absent) classes; NaN if all are absent."""
  iou = per_class_iou(confusion)[np.asarray(classes, np.int64)]
  if np.all(np.isnan(iou)):
    return float("nan")
  return float(np.nanmean(iou))


def harmonic_mean(seen: float, unseen: float) -> float:
  """H = 2SU / (S + U); 0 when undefined (a NaN input or S + U = 0)."""
  if np.isnan(seen) or np.isnan(unseen) or seen + unseen <= 0:
    return 0.0
  return float(2 * seen * unseen / (seen + unseen))


def generalized_scores(confusion: np.ndarray, seen, unseen) -> dict[str, float]:
  """GZLSS/GFLSS summary: mIoU over seen, unseen and all, and their harmonic mean."""
  seen_miou = mean_iou(confusion, seen)
  unseen_miou = mean_iou(confusion, unseen)
  return {
    "seen_miou": seen_miou,
    "unseen_miou": unseen_miou,
    "harmonic": harmonic_mean(seen_miou, unseen_miou),
    "miou": mean_iou(confusion, list(seen) + list(unseen)),
  }
