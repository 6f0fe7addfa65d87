"""Calibration tuned the paper's way: on the val classes held out as unseen, never on test."""

import json
import os

import pytest

from spnet_jax import experiment
from spnet_jax.data import splits


def test_holding_out_val_moves_val_to_unseen_and_drops_the_test_classes():
  split = splits.get_split("shapes", "default")
  held = split.holding_out_val()
  assert held.unseen == split.val and held.val == () and held.seen == split.seen
  assert held.train_classes == split.seen
  assert not set(held.eval_classes) & set(split.unseen)
  assert splits.eval_label_table(held)[split.unseen[0]] == splits.IGNORE_LABEL
  assert splits.remap_table(held.train_classes)[split.val[0]] == splits.IGNORE_LABEL


def test_held_out_run_writes_the_sweep_and_the_final_run_uses_it(fast_config, tmp_path):
  held_dir = str(tmp_path / "held_out")
  fast_config.data.hold_out_val_classes = True
  held = experiment.train_and_evaluate(fast_config, held_dir)
  split = splits.get_split("shapes", "default")
  assert held["classes"]["unseen"] == split.names(split.val)
  assert held["classes"]["val"] == []
  assert set(held["test"]["zlss"]["per_class_iou"]) == set(split.names(split.val))
  path = os.path.join(held_dir, "calibration.json")
  with open(path) as f:
    record = json.load(f)
  assert record["held_out_classes"] == split.names(split.val)
  assert record["gammas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
  assert len(record["harmonic"]) == 5
  assert os.path.getsize(os.path.join(held_dir, "calibration.png")) > 1000

  fast_config.data.hold_out_val_classes = False
  fast_config.eval.gamma_file = path
  final = experiment.train_and_evaluate(fast_config, str(tmp_path / "final"))
  calibrated = final["test"]["gzlss"]["calibrated"]
  assert calibrated["gamma"] == record["best_gamma"]
  assert "val classes held out" in calibrated["gamma_source"]
  # The validation images' own choice is reported beside it, never applied.
  sweep = final["gamma_sweep"]
  assert sweep["split"] == "validation"
  on_images = final["test"]["gzlss"]["calibrated_on_validation_images"]
  assert on_images["gamma"] == sweep["best_gamma"]
  assert "for comparison" in on_images["gamma_source"]


def test_missing_gamma_file_says_how_to_make_it(fast_config, tmp_path):
  fast_config.eval.gamma_file = str(tmp_path / "nope.json")
  fast_config.train.num_steps = 1
  with pytest.raises(ValueError, match="hold_out_val_classes=True"):
    experiment.train_and_evaluate(fast_config, str(tmp_path / "run"))
