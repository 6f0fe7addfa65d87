"""Few-label stage two end to end: starts from a zero-label run, trains on the pool, FLSS/GFLSS."""

import pytest

from spnet_jax import experiment

pytestmark = [pytest.mark.slow]  # end-to-end few-label runs


def test_few_label_stage_starts_from_the_zero_label_run(fast_config, tmp_path):
  zero_label = str(tmp_path / "zlss")
  experiment.train_and_evaluate(fast_config, zero_label)

  fast_config.fewshot.n = 1
  fast_config.fewshot.init_workdir = zero_label
  fast_config.train.num_steps = 4
  setup = experiment.create_setup(fast_config)
  split = setup.split
  # Training labels cover seen + val, then the novel classes.
  assert setup.train_classes == split.train_classes + split.unseen
  tags = {entry.tag for entry in setup.pool.entries}
  assert set(split.unseen) & tags  # Images drawn for novel classes are in the pool.

  results = experiment.train_and_evaluate(fast_config, str(tmp_path / "flss"))
  assert results["tasks"] == ["FLSS", "GFLSS"]
  assert results["fewshot"]["n"] == 1 and results["step"] == 4
  assert results["fewshot"]["pool_size"] == len(setup.pool.entries)
  assert results["fewshot"]["pool_entries"] == setup.config.fewshot.pool_entries
  assert 0.0 <= results["test"]["gzlss"]["uncalibrated"]["miou"] <= 1.0


def test_learned_head_baseline_can_predict_novel_classes_after_few_label_training(
  fast_config, tmp_path
):
  fast_config.model.classifier = "learned"
  zero_label = str(tmp_path / "zlss")
  zero = experiment.train_and_evaluate(fast_config, zero_label)
  assert zero["test"]["zlss"]["unseen_miou"] == 0.0
  fast_config.fewshot.n = 2
  fast_config.fewshot.init_workdir = zero_label
  fast_config.train.num_steps = 8
  few = experiment.train_and_evaluate(fast_config, str(tmp_path / "flss"))
  # The novel rows of the classifier are now trained, so they are available to predict.
  assert few["test"]["zlss"]["unseen_miou"] > 0.0


def test_missing_zero_label_run_is_a_clear_error(fast_config, tmp_path):
  fast_config.fewshot.n = 1
  fast_config.fewshot.init_workdir = str(tmp_path / "nothing")
  with pytest.raises(ValueError, match="holds no checkpoint"):
    experiment.train_and_evaluate(fast_config, str(tmp_path / "flss"))
