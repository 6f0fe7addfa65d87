"""spnet_jax/evaluation/calibrated_prediction.py: the one prediction rule, NumPy and JAX alike."""

import jax.numpy as jnp
import numpy as np

from spnet_jax.evaluation import calibrated_prediction as rule


def test_hand_case():
  # Softmax of (0, ln 3) is (1/4, 3/4); gamma 0.6 on the second (trained) class: (0.25, 0.15).
  logits = np.array([[0.0, np.log(3.0)]])
  calibrated = np.array([False, True])
  np.testing.assert_allclose(rule.candidate_probabilities(logits), [[0.25, 0.75]], rtol=1e-12)
  np.testing.assert_allclose(
    rule.calibrate(np.array([[0.25, 0.75]]), calibrated, 0.6), [[0.25, 0.15]]
  )
  assert rule.calibrated_choice(logits, calibrated, 0.0)[0] == 1
  assert rule.calibrated_choice(logits, calibrated, 0.6)[0] == 0


def test_numpy_and_jax_agree_and_unusable_candidates_are_never_chosen():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (5, 7, 6)).astype(np.float32)
  calibrated = np.array([1, 1, 0, 1, 0, 0], bool)
  usable = np.array([1, 1, 1, 0, 1, 1], bool)
  for gamma in (0.0, 0.3, 0.9):
    ours_np = rule.calibrated_choice(logits, calibrated, gamma, usable)
    ours_jax = np.asarray(rule.calibrated_choice(jnp.asarray(logits), calibrated, gamma, usable))
    np.testing.assert_array_equal(ours_np, ours_jax)
    assert not np.any(ours_np == 3)
    # NumPy reference written out.
    masked = np.where(usable, logits.astype(np.float64), -np.inf)
    probs = np.exp(masked - masked.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_array_equal(ours_np, np.argmax(probs - gamma * calibrated, axis=-1))
  probs = rule.candidate_probabilities(logits, usable)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
  assert np.all(probs[..., 3] == 0.0)
