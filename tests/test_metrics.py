"""Tests for evaluation/metrics.py and the confusion / prediction parts of eval_step.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spnet_jax.data import splits
from spnet_jax.evaluation import eval_step, metrics

IGNORE = 255
update_confusion = jax.jit(eval_step.update_confusion)
calibrated_predictions = jax.jit(eval_step.calibrated_predictions, static_argnums=(1,))
predict = jax.jit(eval_step.predict, static_argnums=(3,))


def np_confusion(labels, predictions, valid, num_classes: int) -> np.ndarray:
  """[C, C + 1] confusion matrix by a loop over pixels."""
  out = np.zeros((num_classes, num_classes + 1), np.int64)
  for label, pred, ok in zip(labels.ravel(), predictions.ravel(), valid.ravel(), strict=True):
    if ok:
      out[label, pred] += 1
  return out


def np_softmax(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Confusion matrix.


def test_update_confusion_matches_pixel_loop():
  rng = np.random.default_rng(0)
  num_classes = 5
  labels = rng.integers(0, num_classes, size=(3, 6, 7)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.2] = IGNORE
  predictions = rng.integers(0, num_classes + 1, size=labels.shape).astype(np.int32)
  mask = np.array([True, False, True])
  valid = mask[:, None, None] & (labels != IGNORE)
  start = rng.integers(0, 4, size=(num_classes, num_classes + 1)).astype(np.int32)
  got = update_confusion(
    jnp.asarray(start), jnp.asarray(labels), jnp.asarray(predictions), jnp.asarray(valid)
  )
  expected = start + np_confusion(labels, predictions, valid, num_classes)
  np.testing.assert_array_equal(np.asarray(got), expected)
  assert got.dtype == jnp.int32
  assert int(got.sum() - start.sum()) == int(valid.sum())


def test_update_confusion_hand_case():
  labels = jnp.array([[0, 0, 1, IGNORE], [2, 1, 1, 0]], jnp.int32)
  predictions = jnp.array([[0, 1, 3, 2], [2, 1, 1, 0]], jnp.int32)
  valid = labels != IGNORE
  valid = valid.at[1, 3].set(False)  # A masked-out pixel.
  got = np.asarray(update_confusion(jnp.zeros((3, 4), jnp.int32), labels, predictions, valid))
  expected = np.array([[1, 1, 0, 0], [0, 2, 0, 1], [0, 0, 1, 0]])
  np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------------
# IoU, mIoU, harmonic mean.


def test_per_class_iou_hand_case():
  confusion = np.array(
    [
      [2, 1, 0, 0],  # class 0: 3 pixels, 2 hits, 1 predicted as class 1
      [0, 3, 0, 1],  # class 1: 4 pixels, 3 hits, 1 with no prediction
      [0, 0, 0, 0],  # class 2: absent from ground truth and prediction
    ]
  )
  iou = metrics.per_class_iou(confusion)
  np.testing.assert_allclose(iou[:2], [2 / 3, 3 / 5])
  assert math.isnan(iou[2])
  # The NaN class is skipped: (2/3 + 3/5) / 2.
  np.testing.assert_allclose(metrics.mean_iou(confusion, [0, 1, 2]), 19 / 30)
  np.testing.assert_allclose(metrics.mean_iou(confusion, (1,)), 3 / 5)
  assert math.isnan(metrics.mean_iou(confusion, [2]))


def test_no_prediction_column_is_a_miss():
  hit = np.array([[4, 0, 0], [0, 0, 0]])
  void = np.array([[0, 0, 4], [0, 0, 0]])
  assert metrics.per_class_iou(hit)[0] == 1.0
  # All pixels of class 0 unpredicted: IoU 0 (not NaN, not a hit), class 1 untouched (NaN).
  iou = metrics.per_class_iou(void)
  assert iou[0] == 0.0
  assert math.isnan(iou[1])


def test_predicted_but_absent_class_has_zero_iou():
  confusion = np.array([[1, 2, 0], [0, 0, 0]])
  iou = metrics.per_class_iou(confusion)
  np.testing.assert_allclose(iou, [1 / 3, 0.0])
  np.testing.assert_allclose(metrics.mean_iou(confusion, [0, 1]), 1 / 6)


def test_per_class_iou_matches_numpy_loop():
  rng = np.random.default_rng(1)
  confusion = rng.integers(0, 9, size=(6, 7))
  confusion[4] = 0
  confusion[:, 4] = 0
  iou = metrics.per_class_iou(confusion)
  for c in range(6):
    tp = confusion[c, c]
    fn = confusion[c].sum() - tp
    fp = sum(confusion[r, c] for r in range(6)) - tp
    if tp + fn + fp == 0:
      assert math.isnan(iou[c])
    else:
      np.testing.assert_allclose(iou[c], tp / (tp + fn + fp))
  finite = [iou[c] for c in range(6) if not math.isnan(iou[c])]
  np.testing.assert_allclose(metrics.mean_iou(confusion, range(6)), sum(finite) / len(finite))


@pytest.mark.parametrize(
  ("seen", "unseen", "expected"),
  [
    (0.5, 0.25, 1 / 3),
    (0.4, 0.4, 0.4),
    (0.6, 0.0, 0.0),
    (0.0, 0.0, 0.0),
    (float("nan"), 0.3, 0.0),
    (0.3, float("nan"), 0.0),
  ],
)
def test_harmonic_mean(seen, unseen, expected):
  np.testing.assert_allclose(metrics.harmonic_mean(seen, unseen), expected)


def test_generalized_scores_hand_case():
  # Class 0 (seen): IoU 1/2. Class 1 (unseen): IoU 1/5. Class 2 (unseen): absent.
  confusion = np.array([[2, 2, 0, 0], [0, 1, 0, 2], [0, 0, 0, 0]])
  scores = metrics.generalized_scores(confusion, (0,), (1, 2))
  np.testing.assert_allclose(scores["seen_miou"], 0.5)
  np.testing.assert_allclose(scores["unseen_miou"], 0.2)
  np.testing.assert_allclose(scores["harmonic"], 2 * 0.5 * 0.2 / 0.7)
  np.testing.assert_allclose(scores["miou"], 0.35)


# ---------------------------------------------------------------------------------------------
# Prediction and calibration.


def _tasks(candidates, calibrated, available, num_classes) -> eval_step.EvalTasks:
  return eval_step.EvalTasks(
    num_classes=num_classes,
    unseen=tuple(c for c, cal in zip(candidates, calibrated, strict=True) if not cal),
    candidates=tuple(candidates),
    calibrated=tuple(calibrated),
    available=tuple(available),
    gammas=(0.0,),
  )


def test_calibration_hand_case_flips_to_unseen():
  # Candidates 1..4 of a 5-class dataset (label 0 is never scored, like VOC's background).
  tasks = _tasks((1, 2, 3, 4), (True, False, True, False), (False, True, True, True, True), 5)
  logits = jnp.array([[2.0, 1.0, 0.0, -1.0]])
  # softmax = (0.6439, 0.2369, 0.0871, 0.0321): class 1 wins at gamma 0; at gamma 0.5 the
  # calibrated scores are (0.1439, 0.2369, -0.4129, 0.0321) and unseen class 2 wins.
  assert int(calibrated_predictions(logits, tasks, jnp.float32(0.0))[0]) == 1
  assert int(calibrated_predictions(logits, tasks, jnp.float32(0.5))[0]) == 2
  # Just below the flip point p1 - p2 = 0.4070 the seen class still wins.
  assert int(calibrated_predictions(logits, tasks, jnp.float32(0.40))[0]) == 1
  assert int(calibrated_predictions(logits, tasks, jnp.float32(0.41))[0]) == 2


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.3, 0.6, 1.0])
def test_calibration_matches_numpy(gamma):
  rng = np.random.default_rng(2)
  candidates = (1, 2, 4, 5, 6)
  calibrated = (True, False, True, True, False)
  tasks = _tasks(candidates, calibrated, (True,) * 7, 7)
  logits = rng.normal(scale=2.0, size=(2, 5, 6, len(candidates))).astype(np.float32)
  got = np.asarray(calibrated_predictions(jnp.asarray(logits), tasks, jnp.float32(gamma)))
  scores = np_softmax(logits) - gamma * np.asarray(calibrated, np.float64)
  expected = np.asarray(candidates)[np.argmax(scores, axis=-1)]
  np.testing.assert_array_equal(got, expected)
  if gamma == 0.0:
    np.testing.assert_array_equal(got, np.asarray(candidates)[np.argmax(logits, axis=-1)])


def _small_split() -> splits.ClassSplit:
  names = ("a", "b", "c", "d", "e", "f")
  return splits.ClassSplit(names, seen=(0, 2, 5), val=(1,), unseen=(3, 4))


def test_create_tasks_projection_classifier():
  tasks = eval_step.create_tasks(_small_split(), [0, 0.5], learned_classifier=False)
  assert tasks.num_classes == 6
  assert tasks.unseen == (3, 4)
  assert tasks.candidates == (0, 1, 2, 3, 4, 5)
  assert tasks.calibrated == (True, True, True, False, False, True)
  assert tasks.available == (True,) * 6
  assert tasks.gammas == (0.0, 0.5)


def test_create_tasks_learned_classifier_and_custom_trained_classes():
  tasks = eval_step.create_tasks(_small_split(), [0.0], learned_classifier=True)
  assert tasks.available == (True, True, True, False, False, True)
  # Calibration sweep model: val classes held out, i.e. trained on seen only.
  tasks = eval_step.create_tasks(
    _small_split(), [0.0], learned_classifier=True, trained_classes=(0, 2, 5)
  )
  assert tasks.available == (True, False, True, False, False, True)
  assert tasks.calibrated == (True, False, True, False, False, True)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_learned_classifier_never_predicts_unavailable(gamma):
  tasks = eval_step.create_tasks(_small_split(), [gamma], learned_classifier=True)
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1, 8, 8, 6)).astype(np.float32)
  logits[..., 3:5] += 100.0  # Unavailable classes would win every pixel.
  got = np.asarray(calibrated_predictions(jnp.asarray(logits), tasks, jnp.float32(gamma)))
  assert not np.isin(got, [3, 4]).any()
  assert np.isin(got, [0, 1, 2, 5]).all()
  usable = [0, 1, 2, 5]
  scores = np_softmax(logits[..., usable]) - gamma
  np.testing.assert_array_equal(got, np.asarray(usable)[np.argmax(scores, -1)])


def test_predict_skips_unusable_candidates():
  scores = jnp.array([[0.9, 0.5, 0.1], [0.1, 0.2, 0.3]])
  candidates = jnp.array([4, 7, 9])
  usable = jnp.array([False, True, True])
  np.testing.assert_array_equal(np.asarray(predict(scores, candidates, usable, 10)), [7, 9])


def test_zlss_without_usable_class_predicts_void():
  # Learned classifier, ZLSS: none of the unseen classes has a score.
  tasks = eval_step.create_tasks(_small_split(), [0.0], learned_classifier=True)
  unseen = jnp.asarray(tasks.unseen)
  usable = jnp.asarray(tasks.available)[unseen]
  logits = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 3, 2)), jnp.float32)
  pred = np.asarray(predict(logits, unseen, usable, tasks.num_classes))
  assert np.all(pred == tasks.num_classes)
  # Those pixels land in the last column: misses, IoU 0 for each unseen class.
  labels = jnp.asarray(np.array([3, 4] * 9).reshape(2, 3, 3), jnp.int32)
  confusion = update_confusion(
    jnp.zeros((6, 7), jnp.int32), labels, jnp.asarray(pred), jnp.ones((2, 3, 3), bool)
  )
  confusion = np.asarray(confusion)
  assert confusion[3, 6] == 9 and confusion[4, 6] == 9
  assert confusion.sum() == 18
  np.testing.assert_array_equal(metrics.per_class_iou(confusion)[[3, 4]], [0.0, 0.0])
  assert metrics.mean_iou(confusion, tasks.unseen) == 0.0


def test_gzlss_all_unavailable_predicts_void():
  tasks = _tasks((0, 1), (False, False), (False, False), 2)
  got = np.asarray(calibrated_predictions(jnp.ones((3, 2)), tasks, jnp.float32(0.3)))
  np.testing.assert_array_equal(got, [2, 2, 2])
