"""SegmentationNet: the projection head against NumPy, frozen embeddings, model registry."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import shapes_zlss
from spnet_jax.models import heads, tiny
from spnet_jax.models.registry import create_model
from spnet_jax.train import optimizer, step


def _model_config(**overrides) -> ml_collections.ConfigDict:
  config = shapes_zlss.get_config().model
  config.width = 8
  config.dilations = (1, 2)
  for key, value in overrides.items():
    config[key] = value
  return config


def test_semantic_projection_equals_numpy_einsum():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  embeddings = rng.normal(size=(5, 6)).astype(np.float32)
  expected = np.zeros((2, 3, 4, 5), np.float32)
  for b in range(2):
    for h in range(3):
      for w in range(4):
        for c in range(5):
          expected[b, h, w, c] = np.dot(features[b, h, w], embeddings[c])
  got = heads.semantic_projection(jnp.asarray(features), jnp.asarray(embeddings))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_projection_model_logits_are_features_times_embeddings():
  model = create_model(_model_config(), embedding_dim=9, num_classes=17)
  images = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
  embeddings = jax.random.normal(jax.random.key(1), (17, 9))
  variables = model.init(jax.random.key(2), images, embeddings)
  # The embeddings are an input: nothing of their shape lives among the parameters.
  assert all(x.shape != (17, 9) for x in jax.tree.leaves(variables))
  logits = model.apply(variables, images, embeddings)
  features = model.apply(variables, images, method=lambda m, x: m.embedding_head(m.backbone(x)))
  expected = np.einsum("bhwd,cd->bhwc", np.asarray(features), np.asarray(embeddings))
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)
  assert logits.shape == (1, 8, 8, 17)  # Output stride 4.


def test_embeddings_get_no_update_from_a_training_step():
  config = shapes_zlss.get_config()
  config.model = _model_config()
  config.optimizer.schedule = "constant"  # A non-zero rate at step 0.
  model = create_model(config.model, embedding_dim=9, num_classes=17)
  tx = optimizer.create_optimizer(config.optimizer, 10)
  embeddings = jax.random.normal(jax.random.key(1), (17, 9))
  embeddings = embeddings / jnp.linalg.norm(embeddings, axis=1, keepdims=True)
  before = np.asarray(embeddings).copy()
  state = step.create_train_state(model, tx, jax.random.key(0), 32, embeddings)
  batch = {
    "image": jax.random.normal(jax.random.key(3), (2, 32, 32, 3)),
    "label": jax.random.randint(jax.random.key(4), (2, 32, 32), 0, 13),
  }
  train_classes = np.arange(13)
  new_state, metrics = step.train_step(
    state,
    batch,
    embeddings,
    jax.random.key(5),
    model=model,
    tx=tx,
    config=config,
    train_classes=train_classes,
  )
  np.testing.assert_array_equal(np.asarray(embeddings), before)
  leaves = jax.tree.leaves((new_state.params, new_state.opt_state))
  assert all(x.shape != (17, 9) for x in leaves)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert any(jax.tree.leaves(changed))
  assert np.isfinite(float(metrics["loss"]))


def test_learned_classifier_has_its_own_weights_and_ignores_embeddings():
  model = create_model(_model_config(classifier="learned"), embedding_dim=9, num_classes=17)
  images = jnp.zeros((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), images)
  assert variables["params"]["classifier"]["conv"]["kernel"].shape == (9, 17)
  assert model.apply(variables, images).shape == (1, 8, 8, 17)


def test_projection_without_embeddings_is_an_error():
  model = create_model(_model_config(), embedding_dim=9, num_classes=17)
  images = jnp.zeros((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), images, jnp.ones((17, 9)))
  with pytest.raises(ValueError, match="class embedding matrix"):
    model.apply(variables, images)


def test_tiny_backbone_size_and_receptive_field():
  net = tiny.TinyDilatedNet()
  variables = net.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  count = sum(x.size for x in jax.tree.leaves(variables))
  assert 100_000 < count < 300_000
  # Measured: the input pixels that output pixel (32, 32) of a 256x256 image depends on. The
  # residual branches start at zero (no gradient), so every weight and bias is set to 0.1: then
  # every ReLU passes and no two paths cancel, and the gradient is non-zero exactly on the field.
  positive = jax.tree.map(lambda x: jnp.full_like(x, 0.1), variables)
  pixel = 32

  def output_pixel(image):
    return jnp.sum(net.apply(positive, image)[0, pixel, pixel])

  grad = np.asarray(jax.grad(output_pixel)(jnp.ones((1, 256, 256, 3))))[0].sum(-1)
  rows, cols = np.nonzero(grad)
  # By hand for the default dilations (1, 2, 4, 8): stem1 (3x3/2, pad 1) reads inputs 2y-1..2y+1,
  # stem2 (3x3/2) stem1 pixels 2y-1..2y+1, so stride-4 feature y reads inputs 4y-3..4y+3; each of
  # the 8 block convs (two per block) reads features y-d..y+d: 2 * (1 + 2 + 4 + 8) = 30 a side,
  # 4 * 30 + 3 = 123 input pixels a side of the centre 4y: a 247-pixel square, all of it used.
  centre, half = 4 * pixel, 123
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (
    centre - half,
    centre + half,
    centre - half,
    centre + half,
  )
  assert rows.size == (2 * half + 1) ** 2 == 247**2


@pytest.mark.parametrize(
  ("field", "value"),
  [("backbone", "resnet50"), ("classifier", "mlp"), ("embedding_head", "fpn"), ("dtype", "f8")],
)
def test_create_model_rejects_unknown_names(field, value):
  with pytest.raises(ValueError, match=f"config.model.{field}"):
    create_model(_model_config(**{field: value}), embedding_dim=9, num_classes=17)
