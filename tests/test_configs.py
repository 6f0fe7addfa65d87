"""Every config loads, validates, and the paper configs encode SPNet's official recipe."""

import importlib

import pytest

from spnet_jax import config_validation

CONFIGS = (
  "shapes_zlss",
  "shapes_flss",
  "shapes_selftrain",
  "voc_zlss",
  "coco_zlss",
  "voc_zlss_vgg16",
  "coco_zlss_vgg16",
  "voc_flss",
  "coco_flss",
)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_validates(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  config_validation.validate_config(config)


@pytest.mark.parametrize("name", ["voc_zlss", "coco_zlss"])
def test_resnet_recipe(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  data, model, opt = config.data, config.model, config.optimizer
  assert data.image_mode == "caffe_bgr"
  assert data.train.warp_size == 513
  assert (data.train.min_scale, data.train.max_scale) == (0.5, 1.5)
  assert data.train.crop_size == 321 and data.train.flip
  assert data.eval.warp_size == 513 and not data.eval.full_resolution
  assert model.backbone == "resnet101" and model.embedding_head == "aspp"
  assert tuple(model.aspp_rates) == (6, 12, 18, 24)
  assert tuple(model.msc_scales) == (0.5, 0.75)
  assert model.classifier == "projection"
  assert config.loss.name == "cross_entropy" and config.loss.label_resolution == "logits"
  assert (opt.name, opt.base_lr, opt.schedule, opt.poly_power) == ("sgd", 2.5e-4, "poly", 0.9)
  assert (opt.momentum, opt.weight_decay, opt.decay_biases) == (0.9, 5e-4, False)
  assert dict(opt.lr_multipliers) == {
    "backbone_kernel": 1.0,
    "backbone_bias": 2.0,
    "head_kernel": 10.0,
    "head_bias": 20.0,
  }
  assert config.embeddings.source == "files"


def test_dataset_specific_schedules():
  from configs import coco_zlss, voc_zlss

  voc, coco = voc_zlss.get_config(), coco_zlss.get_config()
  assert (voc.train.batch_size, voc.train.accumulation_steps, voc.train.num_steps) == (10, 1, 20000)
  assert (coco.train.batch_size, coco.train.accumulation_steps) == (10, 2)  # 5 x 2.
  assert coco.train.num_steps == 20000
  assert (voc.eval.gamma, coco.eval.gamma) == (0.6, 0.4)
  assert (voc.data.name, coco.data.name) == ("voc_sbd", "coco_stuff")


@pytest.mark.parametrize("name", ["voc_zlss_vgg16", "coco_zlss_vgg16"])
def test_vgg_recipe(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.model.backbone == "vgg16" and config.model.embedding_head == "aspp_l"
  assert (config.optimizer.name, config.optimizer.base_lr) == ("adam", 1e-4)


@pytest.mark.parametrize(("name", "accumulation"), [("voc_flss", 1), ("coco_flss", 2)])
def test_few_label_recipe(name, accumulation):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.fewshot.n == 1
  assert (config.train.num_steps, config.optimizer.base_lr) == (2000, 1e-4)
  assert config.optimizer.schedule_steps == 2000
  assert (config.train.batch_size, config.train.accumulation_steps) == (10, accumulation)
  assert config.fewshot.pool_entries == "spnet" and config.fewshot.keep_optimizer_state


def _fields(config, prefix=""):
  out = set()
  for key, value in config.items():
    if hasattr(value, "items") and not isinstance(value, dict) and key != "lr_multipliers":
      out |= _fields(value, f"{prefix}{key}.")
    else:
      out.add(prefix + key)
  return out


@pytest.mark.parametrize("name", [c for c in CONFIGS])
def test_segmentation_configs_share_the_fields_of_the_base(name):
  from configs import base

  config = importlib.import_module(f"configs.{name}").get_config()
  assert _fields(config) == _fields(base.get_config())
