"""The COCO-Stuff config end to end on fake data in the real on-disk formats."""

import math

import jax
import numpy as np
import pytest
from PIL import Image

from configs import coco_zlss
from spnet_jax import experiment
from spnet_jax.bench import host, input_benchmark
from spnet_jax.data import datasets, pipeline, splits
from spnet_jax.models import msc
from spnet_jax.models.layers import FROZEN_COLLECTION
from spnet_jax.testing import fake_data
from tests.numpy_resize import resize_bilinear

pytestmark = [pytest.mark.slow]  # end-to-end runs on fake VOC / COCO data

IGNORE = splits.IGNORE_LABEL


def _warped_labels(fake, table, size: int) -> np.ndarray:
  """The test label PNGs warped to size x size by OpenCV's nearest rule, evaluated ids kept."""
  labels = []
  for image_id in fake.test_ids:
    label = np.asarray(Image.open(fake.label_path("test", image_id)))
    rows, cols = (
      np.minimum(np.floor(np.arange(size) * (1.0 / (size / n))).astype(np.int64), n - 1)
      for n in label.shape
    )
    labels.append(table[label[rows][:, cols]])
  return np.stack(labels)


def _numpy_zlss(logits: np.ndarray, labels: np.ndarray, unseen) -> dict[int, float]:
  """Per unseen class, its ZLSS IoU (argmax over unseen classes, unseen pixels only)."""
  unseen = np.asarray(unseen)
  scored = np.isin(labels, unseen)
  truth, prediction = labels[scored], unseen[np.argmax(logits, axis=-1)[scored]]
  ious = {}
  for c in unseen.tolist():
    hits = np.sum((truth == c) & (prediction == c))
    union = np.sum(truth == c) + np.sum(prediction == c) - hits
    if union:
      ious[c] = hits / union
  return ious


def test_coco_stuff_config_trains_and_evaluates_on_fake_data(tmp_path, monkeypatch):
  fake = fake_data.write_fake_manual_dir(str(tmp_path / "manual"), "coco_stuff", 4, 2)
  rng = np.random.default_rng(0)
  paths = []
  for name in ("fasttext", "word2vec"):
    paths.append(str(tmp_path / f"{name}.npy"))
    np.save(paths[-1], rng.normal(size=(182, 300)))
  config = coco_zlss.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = fake.manual_dir
  config.data.auto_prepare = True
  config.embeddings.paths = ",".join(paths)
  # The recipe stays (caffe BGR, warp, scale, pad, crop, flip, MSC, poly SGD, 5 x 2 batches);
  # only the backbone and the sizes shrink so that two steps run in seconds.
  config.model.backbone = "tiny"
  config.model.width = 8
  config.model.dilations = (1, 2)
  config.model.aspp_rates = (1, 2)
  config.data.init_image_size = 33
  config.data.train.warp_size = 65
  config.data.train.crop_size = 33
  config.data.eval.warp_size = 65
  config.train.batch_size = 2
  config.train.num_steps = 2
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.eval.batch_size = 2
  # Keeps what the evaluation of the test split saw: the run's setup and final state.
  evaluated = {}
  evaluate_split = experiment.evaluate_split

  def recording_evaluate_split(setup, state, split_name, tasks):
    evaluated[split_name] = (setup, state)
    return evaluate_split(setup, state, split_name, tasks)

  monkeypatch.setattr(experiment, "evaluate_split", recording_evaluate_split)
  results = experiment.train_and_evaluate(config, str(tmp_path / "run"))

  split = splits.get_split("coco_stuff", "spnet")
  test = results["test"]
  assert results["step"] == 2
  assert list(test["zlss"]["per_class_iou"]) == split.names(split.unseen)
  assert len(test["gzlss"]["per_class_iou_uncalibrated"]) == 182
  calibrated = test["gzlss"]["calibrated"]
  assert (calibrated["gamma"], calibrated["gamma_source"]) == (0.4, "config.eval.gamma")
  assert results["protocol"] == "labels and images warped to 513x513".replace("513", "65")

  # The labels scored are the test PNGs warped to 65x65: pixels and images per class.
  table = splits.eval_label_table(split)
  labels = _warped_labels(fake, table, 65)
  statistics = test["class_statistics"]
  for c in split.eval_classes:
    counted = statistics[split.class_names[c]]
    assert counted["pixels"] == int(np.sum(labels == c))
    assert counted["images"] == int(np.sum(np.any(labels == c, axis=(1, 2))))
  # The fake labels hold unseen classes (cow, wall-concrete): ZLSS scores their pixels.
  present = [c for c in split.unseen if np.any(labels == c)]
  assert fake_data.COCO_COW in present and fake_data.COCO_WALL_CONCRETE in present

  # ZLSS by NumPy from the final network's MSC logits of the test images: upsampled to the
  # labels, argmax over the unseen classes, IoU per class, mean over the classes that occur.
  setup, state = evaluated["test"]
  batch = next(pipeline.create_eval_batches(config.data, setup.builder, "test", table, 2))
  np.testing.assert_array_equal(batch["label"], labels)
  variables = {"params": state.params, FROZEN_COLLECTION: state.frozen}
  unseen_embeddings = setup.class_embeddings[np.asarray(split.unseen)]
  fused = msc.multi_scale_logits(
    lambda x: setup.model.apply(variables, x, unseen_embeddings),
    batch["image"],
    tuple(config.model.msc_scales),
  )[-1]
  logits = np.stack([resize_bilinear(x, 65, 65) for x in np.asarray(jax.device_get(fused))])
  expected = _numpy_zlss(logits, labels, split.unseen)
  assert set(present) <= set(expected)
  per_class = test["zlss"]["per_class_iou"]
  for c in split.unseen:
    name = split.class_names[c]
    if c in expected:
      assert per_class[name] == pytest.approx(expected[c], abs=1e-12), name
    else:
      assert per_class[name] is None, name
  miou = test["zlss"]["unseen_miou"]
  assert math.isfinite(miou) and 0.0 <= miou <= 1.0
  assert miou == pytest.approx(np.mean(list(expected.values())), abs=1e-12)

  # The input benchmark reads the same prepared dataset: 2 batches of 2 images timed.
  builder = datasets.get_builder(config)
  figures = input_benchmark.time_pipeline(config, builder, batches=2, warmup=1)
  assert figures["batch_shape"] == [2, 33, 33, 3]
  assert figures["cores"] == host.usable_cores()
  seconds, cpu_seconds = figures["seconds"], figures["cpu_seconds"]
  assert math.isfinite(seconds) and seconds > 0 and math.isfinite(cpu_seconds) and cpu_seconds > 0
  assert figures["images_per_sec"] * seconds == pytest.approx(2 * 2)
  assert figures["images_per_sec_per_core"] * figures["cores"] == pytest.approx(
    figures["images_per_sec"]
  )
  assert figures["images_per_cpu_second"] * cpu_seconds == pytest.approx(2 * 2)
