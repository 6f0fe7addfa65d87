"""Self-training: the pseudo-labels against a NumPy reference, and a short end-to-end run."""

import jax.numpy as jnp
import numpy as np

from spnet_jax import experiment, self_training

IGNORE = 255


def _numpy_pseudo_label(logits, labels, known, fraction):
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  prediction, confidence = probs.argmax(-1), probs.max(-1)
  out = labels.copy()
  for u in range(known, logits.shape[-1]):
    mine = (labels == IGNORE) & (prediction == u)
    if mine.any():
      threshold = np.quantile(confidence[mine], 1.0 - fraction)
      out[mine & (confidence >= threshold)] = u
  return out


def test_pseudo_labels_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 5, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 3, size=(2, 6, 5)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.6] = IGNORE
  for fraction in (0.25, 0.5, 1.0):
    got = self_training.pseudo_label(jnp.asarray(logits), jnp.asarray(labels), 3, fraction)
    np.testing.assert_array_equal(np.asarray(got), _numpy_pseudo_label(logits, labels, 3, fraction))


def test_pseudo_labels_hand_case():
  # One image, 4 ignore pixels predicted as unseen class index 2 with rising confidence; one
  # labelled pixel (kept) and one ignore pixel predicted as a known class (stays ignore).
  logits = np.full((1, 1, 6, 3), -10.0, np.float32)
  logits[0, 0, :4, 2] = [1.0, 2.0, 3.0, 4.0]
  logits[0, 0, 4, 0] = 5.0
  logits[0, 0, 5, 1] = 5.0
  labels = np.array([[[IGNORE, IGNORE, IGNORE, IGNORE, 0, IGNORE]]], np.int32)
  got = self_training.pseudo_label(jnp.asarray(logits), jnp.asarray(labels), 2, 0.5)
  assert np.asarray(got).tolist() == [[[IGNORE, IGNORE, 2, 2, 0, IGNORE]]]


def test_self_training_continues_a_zero_label_run(fast_config, tmp_path):
  zero_label = str(tmp_path / "zlss")
  experiment.train_and_evaluate(fast_config, zero_label)
  fast_config.selftrain.fraction = 0.5
  fast_config.selftrain.init_workdir = zero_label
  fast_config.train.num_steps = 3
  setup = experiment.create_setup(fast_config)
  assert setup.train_classes == setup.split.train_classes + setup.split.unseen
  results = experiment.train_and_evaluate(fast_config, str(tmp_path / "st"))
  assert results["step"] == 3 and results["tasks"] == ["ZLSS", "GZLSS"]
