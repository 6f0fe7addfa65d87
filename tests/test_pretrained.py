"""Starting from converted weights: merge rules, convention and architecture checks, end to end."""

import json
import os

import jax
import numpy as np
import pytest

from spnet_jax import experiment
from spnet_jax.interop import pretrained
from spnet_jax.train import checkpoint


def test_merge_overwrites_given_leaves_and_reports_fresh_ones():
  target = {"params": {"a": {"kernel": np.zeros((2, 3))}, "b": {"bias": np.zeros(3)}}}
  source = {"params": {"a": {"kernel": np.ones((2, 3))}}}
  merged, fresh = pretrained.merge_variables(target, source, "ckpt")
  np.testing.assert_array_equal(merged["params"]["a"]["kernel"], np.ones((2, 3)))
  np.testing.assert_array_equal(merged["params"]["b"]["bias"], np.zeros(3))
  assert fresh == ["params/b/bias"]


def test_merge_rejects_unknown_leaves_and_wrong_shapes():
  target = {"params": {"a": {"kernel": np.zeros((2, 3))}}}
  with pytest.raises(ValueError, match=r"lacks: \['params/z/kernel'\]"):
    pretrained.merge_variables(target, {"params": {"z": {"kernel": np.ones(1)}}}, "ckpt")
  with pytest.raises(ValueError, match=r"params/a/kernel: checkpoint \(3, 2\) vs model \(2, 3\)"):
    pretrained.merge_variables(target, {"params": {"a": {"kernel": np.ones((3, 2))}}}, "ckpt")


@pytest.mark.parametrize(
  ("field", "value"),
  [
    ("image_mode", "imagenet_rgb"),
    ("arch", "resnet101"),
    ("stride_in_3x3", True),
  ],
)
def test_convention_or_architecture_mismatch_is_an_error(fast_config, field, value):
  metadata = {"image_mode": "minus_one_one", "arch": "tiny", "stride_in_3x3": False}
  metadata[field] = value
  with pytest.raises(ValueError, match="was converted for"):
    pretrained.check_compatible(metadata, fast_config, "ckpt")
  metadata[field] = {"image_mode": "minus_one_one", "arch": "tiny", "stride_in_3x3": False}[field]
  pretrained.check_compatible(metadata, fast_config, "ckpt")


def test_caffe_weights_with_an_rgb_config_do_not_run(fast_config, tmp_path):
  """Caffe-converted weights expect BGR minus the caffe mean: an RGB config must not train."""
  convert = pytest.importorskip("spnet_jax.interop.convert")
  directory = str(tmp_path / "converted")
  convert.save_converted(
    directory,
    {"params": {}, "batch_stats": {}},
    {"image_mode": "caffe_bgr", "arch": "tiny", "stride_in_3x3": False, "source_format": "test"},
  )
  fast_config.model.init_checkpoint = directory
  with pytest.raises(ValueError, match=r"config\.data\.image_mode='minus_one_one'"):
    experiment.train_and_evaluate(fast_config, str(tmp_path / "run"))


def test_evaluate_converted_weights_through_the_entry_point(fast_config, tmp_path):
  """Weights converted from a trained run evaluate with no workdir checkpoint."""
  convert = pytest.importorskip("spnet_jax.interop.convert")
  trained = experiment.train_and_evaluate(fast_config, str(tmp_path / "train"))
  setup = experiment.create_setup(fast_config)
  manager = checkpoint.create_manager(str(tmp_path / "train"), 2)
  state = experiment.initial_or_restored_state(setup, manager)
  manager.close()
  variables = {"params": state.params, "batch_stats": state.frozen}
  variables = jax.tree.map(np.asarray, variables)
  directory = str(tmp_path / "converted")
  metadata = {"image_mode": "minus_one_one", "arch": "tiny", "source_format": "test"}
  convert.save_converted(directory, variables, metadata)
  with open(os.path.join(directory, "metadata.json")) as f:
    assert json.load(f)["image_mode"] == "minus_one_one"
  fast_config.mode = "evaluate"
  fast_config.model.init_checkpoint = directory
  evaluated = experiment.train_and_evaluate(fast_config, str(tmp_path / "eval"))
  assert evaluated["test"] == trained["test"]


def test_converted_spnet_head_layout_must_match(fast_config):
  metadata = {
    "image_mode": "caffe_bgr",
    "arch": "resnet101",
    "stride_in_3x3": False,
    "classifier": "projection",
    "embedding_dim": 600,
    "initialised_fresh": [],
  }
  fast_config.data.image_mode = "caffe_bgr"
  fast_config.model.backbone = "resnet101"
  fast_config.model.embedding_head = "conv1x1"
  with pytest.raises(ValueError, match=r"model\.embedding_head='aspp'"):
    pretrained.check_compatible(metadata, fast_config, "ckpt")
  fast_config.model.embedding_head = "aspp"
  with pytest.raises(ValueError, match=r"model\.aspp_rates=\(6, 12, 18, 24\)"):
    pretrained.check_compatible(metadata, fast_config, "ckpt")
  fast_config.model.aspp_rates = (6, 12, 18, 24)
  pretrained.check_compatible(metadata, fast_config, "ckpt")
  # An ImageNet init has no head: any head layout fits.
  metadata["initialised_fresh"] = ["params/embedding_head/c0/conv/kernel"]
  fast_config.model.aspp_rates = (1, 2)
  pretrained.check_compatible(metadata, fast_config, "ckpt")
