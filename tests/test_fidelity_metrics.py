"""Evaluation against SPNet's own code: ZLSS / GZLSS predictions, calibration and mIoU.

Same logits and labels on both sides: this project's eval_step (with the network replaced by the
given logits) against the original eval.py's steps (softmax, minus the threshold on seen classes,
argmax, its class maps) and its metric functions (libs/utils: scores, scores_gzsl). Skipped when
../shared/spnet_reference is absent.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from spnet_jax.data import splits
from spnet_jax.evaluation import eval_step, metrics

from . import reference_oracle

reference_oracle.skip_unless_available()

GAMMAS = (0.0, 0.6)


def batch_of(rng, split, num_images=4, height=15, width=17):
  """Raw VOC labels (background 0 and 255 included) and logits over split.eval_classes."""
  raw = rng.integers(0, 21, (num_images, height, width))
  raw[rng.random(raw.shape) < 0.1] = 255
  candidates = split.eval_classes
  # Logits that favour the true class often, so every class gets hits and misses.
  logits = rng.normal(0.0, 1.0, (num_images, height, width, len(candidates)))
  index = {c: i for i, c in enumerate(candidates)}
  for (b, y, x), label in np.ndenumerate(raw):
    if label in index and rng.random() < 0.6:
      logits[b, y, x, index[label]] += 2.5
  return raw, logits.astype(np.float32)


def ours(monkeypatch, split, raw, logits):
  tasks = eval_step.create_tasks(split, GAMMAS, learned_classifier=False)
  monkeypatch.setattr(eval_step, "eval_logits", lambda *args, **kwargs: jnp.asarray(logits))
  labels = splits.eval_label_table(split)[raw]
  c = split.num_classes
  confusions = {
    "zlss": jnp.zeros((c, c + 1), jnp.int32),
    "gzlss": jnp.zeros((len(GAMMAS), c, c + 1), jnp.int32),
    "class_images": jnp.zeros((c,), jnp.int32),
  }
  batch = {"image": None, "label": jnp.asarray(labels), "mask": jnp.ones(len(raw), bool)}
  out = eval_step.eval_step(confusions, batch, None, None, model=None, tasks=tasks, msc_scales=())
  return np.asarray(out["zlss"]), np.asarray(out["gzlss"])


def original_predictions(logits_visible, threshold_on):
  """eval.py: softmax over the visible classes, minus the threshold on seen ones, argmax."""
  import torch
  import torch.nn.functional as F

  output = F.softmax(torch.from_numpy(logits_visible).permute(0, 3, 1, 2), dim=1)
  output = output - torch.from_numpy(threshold_on).float().view(1, -1, 1, 1)
  return torch.argmax(output, dim=1).numpy()


def class_map(visible) -> np.ndarray:
  """eval.py's cls_map: label value -> index among the visible classes, else 255."""
  table = np.array([255] * 256)
  table[np.asarray(visible)] = np.arange(len(visible))
  return table


@pytest.mark.parametrize("seed", [0, 1])
def test_zlss_and_gzlss_scores_equal_spnets(seed, monkeypatch):
  utils = reference_oracle.import_original_module("libs.utils")
  split = splits.get_split("voc_sbd", "spnet")
  rng = np.random.default_rng(seed)
  raw, logits = batch_of(rng, split)
  zlss, gzlss = ours(monkeypatch, split, raw, logits)
  position = {c: i for i, c in enumerate(split.eval_classes)}

  # ZLSS (-r zlss): the visible classes are the novel ones.
  novel = list(split.unseen)
  predicted = original_predictions(logits[..., [position[c] for c in novel]], np.zeros(len(novel)))
  score, class_iou = utils.scores(list(class_map(novel)[raw]), list(predicted), len(novel))
  np.testing.assert_allclose(metrics.mean_iou(zlss, novel), score["Mean IoU"], rtol=1e-12)
  ours_iou = metrics.per_class_iou(zlss)[novel]
  np.testing.assert_allclose(ours_iou, [class_iou[i] for i in range(len(novel))], rtol=1e-12)

  # GZLSS (-r gzlss [--threshold 0.6]): seen + val, then novel.
  seen = list(split.seen + split.val)
  visible = seen + novel
  table = class_map(visible)
  for gamma, confusion in zip(GAMMAS, gzlss, strict=True):
    threshold = np.array([gamma if c in seen else 0.0 for c in visible])
    predicted = original_predictions(logits[..., [position[c] for c in visible]], threshold)
    score, _ = utils.scores_gzsl(
      list(table[raw]), list(predicted), len(visible), table[seen], table[novel]
    )
    got = metrics.generalized_scores(confusion, seen, novel)
    np.testing.assert_allclose(got["seen_miou"], score["Mean IoU Seen"], rtol=1e-12)
    np.testing.assert_allclose(got["unseen_miou"], score["Mean IoU Unseen"], rtol=1e-12)
    np.testing.assert_allclose(got["harmonic"], score["Mean IoU Harmonic"], rtol=1e-12)
    np.testing.assert_allclose(got["miou"], score["Mean IoU"], rtol=1e-12)
