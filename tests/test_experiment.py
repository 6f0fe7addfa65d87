"""End-to-end runs of the main job on the tiny shapes dataset: outputs, resume, errors."""

import glob
import json
import os
import re
import signal
import subprocess

import numpy as np
import pytest

from spnet_jax import experiment
from spnet_jax.data import datasets, pipeline, splits
from spnet_jax.evaluation import eval_panels, visualize
from spnet_jax.train import checkpoint
from spnet_jax.train import loop as train

from .conftest import ROOT, main_command

pytestmark = [pytest.mark.slow]  # end-to-end runs through the entry point


def test_train_and_evaluate_writes_checkpoints_summaries_and_results(fast_config, tmp_path):
  workdir = str(tmp_path / "run")
  results = experiment.train_and_evaluate(fast_config, workdir)
  assert results["step"] == 6
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "6"
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  test = written["test"]
  assert set(test["zlss"]["per_class_iou"]) == {
    "red-disc",
    "green-square",
    "blue-triangle",
    "yellow-annulus",
  }
  assert 0.0 <= test["zlss"]["unseen_miou"] <= 1.0
  sweep = written["gamma_sweep"]
  assert sweep["split"] == "validation"
  assert sweep["gammas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
  best = sweep["gammas"][int(np.argmax(sweep["harmonic"]))]
  assert test["gzlss"]["calibrated"]["gamma"] == best
  assert test["gzlss"]["uncalibrated"]["gamma"] == 0.0
  assert len(test["gzlss"]["per_class_iou_uncalibrated"]) == 17
  assert len(test["class_statistics"]) == 17
  # TensorBoard: every class's IoU and the prediction overlays of the first test images.
  tags = _event_tags(workdir)
  assert tags["eval_zlss_iou/red-disc"] == "scalars"
  assert tags["eval_gzlss_iou/background"] == "scalars"
  assert tags["eval_gzlss_calibrated_iou/yellow-annulus"] == "scalars"
  assert sum(t.startswith("eval_gzlss_iou/") for t in tags) == 17
  images = {t for t, plugin in tags.items() if plugin == "images"}
  assert images == {f"eval_predictions/{i}" for i in range(experiment.PREDICTION_IMAGES)}


def _event_tags(workdir: str) -> dict[str, str]:
  """Tag -> plugin name ('scalars', 'images') of every summary in the workdir's event files."""
  import tensorflow as tf

  tags = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags[value.tag] = value.metadata.plugin_data.plugin_name
  return tags


@pytest.mark.parametrize("mode", pipeline.IMAGE_MODES)
def test_network_input_converts_back_to_the_uint8_image(mode):
  image = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
  normalized = pipeline.normalize_image(image, mode).numpy()
  np.testing.assert_array_equal(eval_panels.to_uint8_rgb(normalized, mode), image)


def test_comparison_panel_puts_image_truth_and_prediction_side_by_side():
  image = np.full((10, 12, 3), 200, np.uint8)
  label = np.full((10, 12), splits.IGNORE_LABEL)
  label[:5] = 2
  prediction = np.full((10, 12), 3)  # 3: outside the class list (no prediction), black.
  panel = eval_panels.comparison_panel(image, label, prediction, ["a", "b", "c"])
  assert panel.shape[0] == 10 and panel.shape[1] > 3 * 12 + 8
  np.testing.assert_array_equal(panel[:, :12], image)
  np.testing.assert_array_equal(
    panel[:, 16:28], visualize.overlay(image, label, "abc", legend=False)
  )
  assert panel[0, 32].tolist() == [90, 90, 90]  # 0.45 * 200: the prediction drawn black.


def test_rerun_resumes_from_latest_checkpoint_and_evaluate_mode(fast_config, tmp_path):
  workdir = str(tmp_path / "run")
  finished = experiment.train_and_evaluate(fast_config, workdir)
  manager = checkpoint.create_manager(workdir, 5)
  assert manager.all_steps() == [3, 6]
  manager.delete(6)  # As if the run had stopped after its step-3 save.
  manager.close()
  # The rerun continues from step 3 instead of starting over, and ends where the run ended.
  results = experiment.train_and_evaluate(fast_config, workdir)
  assert results["step"] == 6 and results["test"] == finished["test"]
  # Evaluation alone restores the checkpoint and trains nothing.
  fast_config.mode = "evaluate"
  evaluated = experiment.train_and_evaluate(fast_config, workdir)
  assert evaluated["step"] == 6
  assert evaluated["test"] == results["test"]


def test_evaluate_mode_without_checkpoint_is_an_error(fast_config, tmp_path):
  fast_config.mode = "evaluate"
  with pytest.raises(ValueError, match="needs a trained workdir"):
    experiment.train_and_evaluate(fast_config, str(tmp_path / "empty"))


def test_learned_classifier_scores_zero_on_unseen(fast_config, tmp_path):
  fast_config.model.classifier = "learned"
  results = experiment.train_and_evaluate(fast_config, str(tmp_path / "learned"))
  assert results["test"]["zlss"]["unseen_miou"] == 0.0
  assert results["test"]["gzlss"]["uncalibrated"]["unseen_miou"] == 0.0
  assert results["test"]["gzlss"]["calibrated"]["unseen_miou"] == 0.0
  assert all(u == 0.0 for u in results["gamma_sweep"]["unseen_miou"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(fast_config, tmp_path):
  workdir = str(tmp_path / "nan")
  fast_config.train.num_steps = 12
  fast_config.train.log_every_steps = 1
  fast_config.optimizer.base_lr = 1e38
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+") as error:
    experiment.train_and_evaluate(fast_config, workdir)
  assert f"No checkpoint was saved yet in {workdir}/checkpoints." in str(error.value)
  manager = checkpoint.create_manager(workdir, 5)
  assert manager.latest_step() is None
  checkpoint.save(manager, 3, {"w": np.zeros(2)})
  manager.wait_until_finished()
  assert train.last_good_checkpoint(manager) == (
    f"The last good checkpoint is step 3 in {workdir}/checkpoints."
  )
  manager.close()


def test_unprepared_dataset_error_names_the_prepare_command(fast_config, tmp_path):
  fast_config.data.data_dir = str(tmp_path / "nothing_here")
  with pytest.raises(ValueError, match=re.escape("spnet_jax.data.prepare --dataset shapes")):
    datasets.get_builder(fast_config)


def test_real_benchmark_configs_say_how_to_prepare_their_datasets(tmp_path):
  from configs import coco_zlss, voc_zlss

  for module in (coco_zlss, voc_zlss):
    config = module.get_config()
    config.data.data_dir = str(tmp_path)
    with pytest.raises(ValueError, match="is not prepared") as error:
      experiment.create_setup(config)
    assert f"spnet_jax.data.prepare --dataset {config.data.name}" in str(error.value)
    assert "--manual_dir" in str(error.value)


def test_embedding_rows_must_match_the_class_list(fast_config, tmp_path):
  path = tmp_path / "w.npy"
  np.save(path, np.ones((5, 8), np.float32))
  fast_config.embeddings.source = "npy"
  fast_config.embeddings.paths = str(path)
  with pytest.raises(ValueError, match="has 5 rows but the dataset has 17 classes"):
    experiment.create_setup(fast_config)


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("model.backbone", "resnet50", "config.model.backbone='resnet50'"),
    ("train.batch_size", 0, "config.train.batch_size=0"),
    ("eval.gamma", 1.5, "config.eval.gamma=1.5"),
    ("eval.calibration_split", "test", "never chosen on the test split"),
  ],
)
def test_invalid_config_values_are_named(fast_config, field, value, message):
  section, name = field.split(".")
  fast_config[section][name] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    experiment.create_setup(fast_config)


def test_unknown_config_field_is_rejected_by_the_entry_point(tmp_path):
  command = main_command(str(tmp_path), str(tmp_path), "--config.train.num_stepz=5")
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "num_stepz" in result.stderr


def test_checkpoint_of_another_optimizer_is_a_clear_error(fast_config, tmp_path):
  workdir = str(tmp_path / "run")
  experiment.train_and_evaluate(fast_config, workdir)
  fast_config.optimizer.grad_clip_norm = 0.0  # Changes the optimiser state's structure.
  with pytest.raises(ValueError, match=r"optimizer\.grad_clip_norm: 1\.0 -> 0\.0"):
    experiment.train_and_evaluate(fast_config, workdir)
  # A workdir of an older version (no recorded config): the checkpoint's structure tells.
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(ValueError, match="does not fit this config's model and optimiser"):
    experiment.train_and_evaluate(fast_config, workdir)


def test_full_resolution_protocol_scores_original_labels(fast_config, tmp_path):
  fast_config.data.eval.warp_size = 48  # Network input; labels stay 64x64.
  fast_config.data.eval.full_resolution = True
  fast_config.data.eval.label_canvas = 64
  results = experiment.train_and_evaluate(fast_config, str(tmp_path / "full"))
  assert results["protocol"].startswith("full resolution")
  assert 0.0 <= results["test"]["zlss"]["unseen_miou"] <= 1.0
  fast_config.data.eval.label_canvas = 0
  with pytest.raises(ValueError, match=r"config\.data\.eval\.full_resolution"):
    experiment.create_setup(fast_config)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_rerun_resumes(shapes_data_dir, tmp_path):
  workdir = str(tmp_path / "preempted")
  settings = ("--config.model.dilations=(1,)", "--config.train.batch_size=4")
  command = main_command(
    workdir,
    shapes_data_dir,
    *settings,
    "--config.train.num_steps=100000",
    "--config.train.checkpoint_every_steps=100000",
    "--config.train.log_every_steps=5",
  )
  process = subprocess.Popen(
    command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  output = []
  for line in process.stdout:
    output.append(line)
    if "step 10/100000" in line:
      process.send_signal(signal.SIGTERM)
      break
  output.append(process.communicate(timeout=120)[0])
  assert process.returncode == 0, "".join(output)[-3000:]
  manager = checkpoint.create_manager(workdir, 5)
  saved = manager.latest_step()
  manager.close()
  assert saved is not None and saved >= 10
  assert "SIGTERM: saved step" in "".join(output)
  # The workdir serves evaluation from the saved step.
  result = subprocess.run(
    main_command(
      workdir,
      shapes_data_dir,
      *settings,
      "--config.train.num_steps=100000",
      "--config.train.checkpoint_every_steps=100000",
      "--config.mode=evaluate",
    ),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Restored checkpoint step {saved}" in result.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["step"] == saved
