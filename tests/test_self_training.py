"""Self-training: the pseudo-labels against a NumPy reference, and a short end-to-end run."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import shapes_zlss
from spnet_jax import experiment
from spnet_jax.data import pipeline, splits
from spnet_jax.embeddings import class_embeddings as embeddings
from spnet_jax.models.registry import create_model
from spnet_jax.train import optimizer, self_training, step
from tests.conftest import tiny_config
from tests.numpy_resize import resize_bilinear

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


def _numpy_cross_entropy(logits, labels):
  """Mean of -log softmax(logits)[label] over the pixels not labelled ignore (float64)."""
  logits = logits.astype(np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  valid = labels != IGNORE
  return -np.mean(np.take_along_axis(log_probs[valid], labels[valid][:, None], axis=-1))


def test_pseudo_labels_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 5, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 3, size=(2, 6, 5)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.6] = IGNORE
  for fraction in (0.25, 0.5, 1.0):
    got = self_training.pseudo_label(jnp.asarray(logits), jnp.asarray(labels), 3, fraction)
    np.testing.assert_array_equal(np.asarray(got), _numpy_pseudo_label(logits, labels, 3, fraction))


def test_padding_images_get_no_pseudo_labels():
  # A batch padded to fit the devices (data/batching.py): the padding images (all ignore) must
  # neither be labelled nor move the real images' confidence quantiles.
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 6, 5, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 3, size=(3, 6, 5)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.6] = IGNORE
  labels[2] = IGNORE
  mask = np.array([True, True, False])
  got = self_training.pseudo_label(jnp.asarray(logits), jnp.asarray(labels), 3, 0.5, mask)
  got = np.asarray(got)
  np.testing.assert_array_equal(got[:2], _numpy_pseudo_label(logits[:2], labels[:2], 3, 0.5))
  np.testing.assert_array_equal(got[2], labels[2])


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


def test_pseudo_labels_change_the_training_loss_and_gradient():
  # The self-training loss on one batch against NumPy: the network's logits upsampled to the
  # labels, the confident ignore pixels labelled with the unseen class the model rates highest,
  # then cross-entropy over every labelled pixel. Without pseudo-labels the same batch gives
  # another loss and another gradient.
  config = shapes_zlss.get_config()
  config.model.width, config.model.dilations = 8, (1,)
  config.selftrain.fraction = 0.5
  split = splits.get_split("shapes", "default")
  class_embeddings = embeddings.attribute_embeddings(split.class_names)
  class_embeddings /= np.linalg.norm(class_embeddings, axis=1, keepdims=True)
  model = create_model(config.model, class_embeddings.shape[1], split.num_classes)
  tx = optimizer.create_optimizer(config.optimizer, 10)
  state = step.create_train_state(model, tx, jax.random.key(0), 32, class_embeddings)
  known, unseen = len(split.train_classes), len(split.unseen)
  train_classes = np.asarray(split.train_classes + split.unseen)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, known, size=(2, 32, 32)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.7] = IGNORE

  def loss_and_grad(num_unseen):
    loss = functools.partial(
      step.loss_fn,
      model=model,
      config=config,
      class_embeddings=jnp.asarray(class_embeddings),
      train_classes=jnp.asarray(train_classes),
      num_unseen=num_unseen,
    )
    value, grads = jax.jit(jax.value_and_grad(loss))(
      state.params, state, images, labels, jax.random.key(1)
    )
    return float(value), grads

  variables = {"params": state.params, "batch_stats": state.frozen}
  logits = np.asarray(model.apply(variables, images, class_embeddings[train_classes]))
  assert logits.shape == (2, 8, 8, known + unseen)
  scores = np.stack([resize_bilinear(x, 32, 32) for x in logits.astype(np.float64)])
  pseudo = _numpy_pseudo_label(scores, labels, known, config.selftrain.fraction)
  changed = pseudo != labels
  # Only ignore pixels change; each gets the unseen class of highest probability (its argmax);
  # here half of the candidates of each unseen class.
  assert np.all(labels[changed] == IGNORE)
  np.testing.assert_array_equal(pseudo[changed], scores.argmax(-1)[changed])
  assert np.all(pseudo[changed] >= known)
  assert len(np.unique(pseudo[changed])) >= 2 and changed.sum() >= 20

  with_pseudo, grads_with = loss_and_grad(unseen)
  without, grads_without = loss_and_grad(0)
  assert with_pseudo == pytest.approx(_numpy_cross_entropy(scores, pseudo), rel=1e-5)
  assert without == pytest.approx(_numpy_cross_entropy(scores, labels), rel=1e-5)
  assert abs(with_pseudo - without) > 0.01
  difference = jax.tree.map(lambda a, b: a - b, grads_with, grads_without)
  assert float(optax.global_norm(difference)) > 0.05 * float(optax.global_norm(grads_without))


@pytest.fixture(scope="module")
def zero_label_workdir(shapes_data_dir, tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("zlss"))
  experiment.train_and_evaluate(tiny_config(shapes_data_dir), workdir)
  return workdir


def _self_training_config(data_dir: str, init_workdir: str):
  config = tiny_config(data_dir)
  config.selftrain.fraction = 0.5
  config.selftrain.init_workdir = init_workdir
  config.train.num_steps = 3
  return config


def test_self_training_continues_a_zero_label_run(
  shapes_data_dir, zero_label_workdir, tmp_path, monkeypatch
):
  config = _self_training_config(shapes_data_dir, zero_label_workdir)
  setup = experiment.create_setup(config)
  assert setup.train_classes == setup.split.train_classes + setup.split.unseen
  # The training step the run compiles pseudo-labels its batches: 13 trained classes, then the 4
  # unseen ones, with the configured fraction.
  calls = []

  def recording_pseudo_label(logits, labels, num_known, fraction, image_mask):
    calls.append((logits.shape[-1], num_known, fraction, image_mask.shape))
    return pseudo_label(logits, labels, num_known, fraction, image_mask)

  pseudo_label = self_training.pseudo_label
  monkeypatch.setattr(self_training, "pseudo_label", recording_pseudo_label)
  results = experiment.train_and_evaluate(config, str(tmp_path / "st"))
  assert results["step"] == 3 and results["tasks"] == ["ZLSS", "GZLSS"]
  assert calls and set(calls) == {(17, 13, 0.5, (config.train.batch_size,))}


class _Stop(Exception):
  pass


def test_self_training_batches_hold_no_unseen_ground_truth(
  shapes_data_dir, zero_label_workdir, tmp_path, monkeypatch
):
  config = _self_training_config(shapes_data_dir, zero_label_workdir)
  known = len(splits.get_split("shapes", "default").train_classes)
  batches = []
  create = pipeline.create_train_iterator

  def recording_iterator(*args, **kwargs):
    for batch in create(*args, **kwargs):
      if len(batches) == 2:
        raise _Stop  # Two batches are enough: stop before the first step.
      batches.append(batch)
      yield batch

  monkeypatch.setattr(pipeline, "create_train_iterator", recording_iterator)
  with pytest.raises(_Stop):
    experiment.train_and_evaluate(config, str(tmp_path / "st"))
  labels = np.concatenate([batch["label"] for batch in batches])
  # Transductive zero-label: unseen objects are unlabelled (ignore); only pseudo-labels, made on
  # device from the model's predictions, may give them an unseen class.
  assert set(np.unique(labels).tolist()) <= {*range(known), IGNORE}
