"""Full-resolution evaluation with images of other sizes than the label canvas, against NumPy.

config.data.eval.full_resolution: the network sees each image warped to warp_size, its logits
are upsampled to the image's own size, and its original labels (padded with ignore to a fixed
canvas so that batches stack) are scored on the image's own pixels only.
"""

import functools

import jax
import numpy as np
import tensorflow as tf

from configs import shapes_zlss
from spnet_jax.data import pipeline, splits
from spnet_jax.embeddings import class_embeddings as embeddings
from spnet_jax.evaluation import eval_step
from spnet_jax.models.registry import create_model
from tests.numpy_resize import resize_bilinear

IGNORE = splits.IGNORE_LABEL
SIZES = ((37, 53), (61, 29))  # (height, width): taller, wider, odd, both below the canvas.
CANVAS, WARP = 64, 16
GAMMAS = (0.0, 0.5)


def _numpy_confusions(logits, labels, tasks):
  """ZLSS and GZLSS (per gamma) confusions [C, C + 1] of one image's own pixels (float64)."""
  c = tasks.num_classes
  candidates, unseen = np.asarray(tasks.candidates), np.asarray(tasks.unseen)
  zlss, gzlss = np.zeros((c, c + 1), np.int64), np.zeros((len(GAMMAS), c, c + 1), np.int64)
  scored = np.isin(labels, unseen)
  positions = [tasks.candidates.index(u) for u in tasks.unseen]
  prediction = unseen[np.argmax(logits[..., positions], axis=-1)]
  np.add.at(zlss, (labels[scored], prediction[scored]), 1)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  labelled = labels != IGNORE
  for i, gamma in enumerate(GAMMAS):
    calibrated = probs - gamma * np.asarray(tasks.calibrated, np.float64)
    prediction = candidates[np.argmax(calibrated, axis=-1)]
    np.add.at(gzlss[i], (labels[labelled], prediction[labelled]), 1)
  return zlss, gzlss


def test_full_resolution_scores_each_image_at_its_own_size():
  config = shapes_zlss.get_config()
  config.model.width, config.model.dilations = 8, (1,)
  config.data.eval.warp_size = WARP
  config.data.eval.full_resolution = True
  config.data.eval.label_canvas = CANVAS
  split = splits.get_split("shapes", "default")
  table = splits.eval_label_table(split)
  rng = np.random.default_rng(0)
  examples, originals = [], []
  for height, width in SIZES:
    image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    label = rng.integers(0, split.num_classes, (height, width)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = IGNORE
    example = {"image": tf.constant(image), "label": tf.constant(label[..., None])}
    out = {k: v.numpy() for k, v in pipeline.eval_preprocess(example, config.data, table).items()}
    # The input warped to WARP x WARP; the label kept at its size in the canvas' top-left corner.
    np.testing.assert_allclose(
      out["image"], resize_bilinear(image / 127.5 - 1.0, WARP, WARP), atol=1e-5
    )
    assert out["label_size"].tolist() == [height, width] and out["mask"]
    canvas = np.full((CANVAS, CANVAS), IGNORE, np.int64)
    canvas[:height, :width] = label
    np.testing.assert_array_equal(out["label"], canvas)
    examples.append(out)
    originals.append(label.astype(np.int64))
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  class_embeddings = embeddings.attribute_embeddings(split.class_names)
  class_embeddings /= np.linalg.norm(class_embeddings, axis=1, keepdims=True)
  model = create_model(config.model, class_embeddings.shape[1], split.num_classes)
  variables = model.init(jax.random.key(0), batch["image"], class_embeddings)
  tasks = eval_step.create_tasks(split, GAMMAS, learned_classifier=False)
  net_logits = np.asarray(
    model.apply(variables, batch["image"], class_embeddings[np.asarray(tasks.candidates)])
  ).astype(np.float64)
  assert net_logits.shape == (2, WARP // 4, WARP // 4, len(tasks.candidates))
  logits = jax.jit(
    functools.partial(
      eval_step.eval_logits, model=model, candidates=tasks.candidates, msc_scales=()
    )
  )(batch, variables, class_embeddings)
  assert logits.shape == (2, CANVAS, CANVAS, len(tasks.candidates))
  c = split.num_classes
  zeros = {
    "zlss": np.zeros((c, c + 1), np.int32),
    "gzlss": np.zeros((len(GAMMAS), c, c + 1), np.int32),
    "class_images": np.zeros((c,), np.int32),
  }
  step = jax.jit(functools.partial(eval_step.eval_step, model=model, tasks=tasks, msc_scales=()))
  confusions = {
    k: np.asarray(v) for k, v in step(zeros, batch, variables, class_embeddings).items()
  }

  expected = {k: v.astype(np.int64) for k, v in zeros.items()}
  for b, (height, width) in enumerate(SIZES):
    # Each image's logits upsampled to its own size (not the canvas) fill its own pixels.
    upsampled = resize_bilinear(net_logits[b], height, width)
    np.testing.assert_allclose(np.asarray(logits[b, :height, :width]), upsampled, atol=1e-5)
    zlss, gzlss = _numpy_confusions(upsampled, originals[b], tasks)
    expected["zlss"] += zlss
    expected["gzlss"] += gzlss
    present = np.unique(originals[b][originals[b] != IGNORE])
    expected["class_images"][present] += 1
  for key, value in expected.items():
    np.testing.assert_array_equal(confusions[key], value, err_msg=key)
  # Only the images' own labelled pixels are scored: none of the canvas padding.
  labelled = sum(int(np.sum(label != IGNORE)) for label in originals)
  assert [int(m.sum()) for m in confusions["gzlss"]] == [labelled] * len(GAMMAS)
  unseen_pixels = sum(int(np.isin(label, split.unseen).sum()) for label in originals)
  assert int(confusions["zlss"].sum()) == unseen_pixels > 0
