"""The COCO-Stuff config end to end on fake data in the real on-disk formats."""

import numpy as np

from configs import coco_zlss
from spnet_jax import experiment, input_benchmark
from spnet_jax.data import datasets, fake_data, splits


def test_coco_stuff_config_trains_and_evaluates_on_fake_data(tmp_path):
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
  config.data.shuffle_buffer = 8
  config.train.batch_size = 2
  config.train.num_steps = 2
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.eval.batch_size = 2
  results = experiment.train_and_evaluate(config, str(tmp_path / "run"))

  split = splits.get_split("coco_stuff", "spnet")
  test = results["test"]
  assert results["step"] == 2
  assert list(test["zlss"]["per_class_iou"]) == split.names(split.unseen)
  assert len(test["gzlss"]["per_class_iou_uncalibrated"]) == 182
  calibrated = test["gzlss"]["calibrated"]
  assert (calibrated["gamma"], calibrated["gamma_source"]) == (0.4, "config.eval.gamma")
  assert results["protocol"] == "labels and images warped to 513x513".replace("513", "65")
  # The fake labels hold unseen classes (cow, wall-concrete): ZLSS scored some pixels.
  assert test["zlss"]["unseen_miou"] is not None

  # The input benchmark reads the same prepared dataset.
  builder = datasets.get_builder(config)
  figures = input_benchmark.time_pipeline(config, builder, batches=2, warmup=1)
  assert figures["batch_shape"] == [2, 33, 33, 3]
  assert figures["images_per_sec"] > 0 and figures["cores"] >= 1
