"""Zero-shot classification (spnet_jax/zsl): xlsa17 loader, metrics, loss, protocol, entry point.

The data are generated and written with scipy.io.savemat in the xlsa17 layout (features
[D, N], 1-based labels and split indices). Features are a random linear image of the class
attributes plus noise, so the classes are separable through the attributes; val and unseen
classes are perturbed copies of train classes, which biases an uncalibrated model towards the
seen classes as on real data.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from configs import zsl_awa, zsl_cub, zsl_sun
from spnet_jax.evaluation import calibration, metrics
from spnet_jax.zsl import data, experiment, model
from spnet_jax.zsl import evaluate as zsl_eval
from tests.conftest import ROOT, subprocess_env

NUM_TRAIN, NUM_VAL, NUM_UNSEEN, PER_CLASS = 20, 8, 12, 30


def write_xlsa17(
  root: str, name: str = "CUB", seed: int = 0, unrelated_attributes: bool = False, drop=()
) -> dict:
  """Writes <root>/<name>/res101.mat and att_splits.mat; returns the 0-based ground truth.

  Classes 0..19 are train_loc classes, 20..27 val_loc classes (trainval = both), 28..39 unseen.
  The first fifth of each seen class's images is test_seen; train_loc and val_loc cover all
  images of their classes (test_seen ones too), as in the real files. `unrelated_attributes`
  writes attributes independent of the ones that generated the features (a control); keys in
  `drop` are left out of att_splits.mat.
  """
  rng = np.random.default_rng(seed)
  dim_att, dim_feat = 32, 64
  num_seen = NUM_TRAIN + NUM_VAL
  num_classes = num_seen + NUM_UNSEEN
  base = rng.normal(size=(NUM_TRAIN, dim_att))
  parents = rng.choice(NUM_TRAIN, NUM_VAL + NUM_UNSEEN, replace=False)
  children = base[parents] / np.linalg.norm(base[parents], axis=1, keepdims=True)
  children = children * np.sqrt(dim_att) + 0.8 * rng.normal(size=children.shape)
  attributes = np.concatenate([base, children])
  attributes /= np.linalg.norm(attributes, axis=1, keepdims=True)
  labels = np.repeat(np.arange(num_classes), PER_CLASS)
  projection = rng.normal(size=(dim_att, dim_feat))
  features = attributes[labels] @ projection + 0.5 * rng.normal(size=(labels.size, dim_feat))
  features = np.maximum(features, 0.0).astype(np.float32)  # Non-negative, as ReLU features.

  images = np.arange(labels.size)
  test_seen = np.concatenate(
    [images[labels == c][: PER_CLASS // 5] for c in range(num_seen)]
  ).astype(np.int64)
  locs = {
    "trainval_loc": np.setdiff1d(images[labels < num_seen], test_seen),
    "test_seen_loc": test_seen,
    "test_unseen_loc": images[labels >= num_seen],
    "train_loc": images[labels < NUM_TRAIN],
    "val_loc": images[(labels >= NUM_TRAIN) & (labels < num_seen)],
  }
  written = attributes
  if unrelated_attributes:
    written = rng.normal(size=attributes.shape)
    written /= np.linalg.norm(written, axis=1, keepdims=True)
  names = np.empty((num_classes, 1), dtype=object)
  for c in range(num_classes):
    names[c, 0] = f"{c + 1:03d}.class_{c}"
  directory = os.path.join(root, name)
  os.makedirs(directory, exist_ok=True)
  scipy.io.savemat(
    os.path.join(directory, "res101.mat"),
    {"features": features.T, "labels": (labels + 1)[:, None]},
  )
  contents = {"att": written.T, "allclasses_names": names}
  contents.update({k: (v + 1)[:, None] for k, v in locs.items()})
  scipy.io.savemat(
    os.path.join(directory, "att_splits.mat"),
    {k: v for k, v in contents.items() if k not in drop},
  )
  return {"features": features, "labels": labels, "attributes": written, "locs": locs}


@pytest.fixture(scope="module")
def xlsa17_root(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("xlsa17"))
  write_xlsa17(root)
  return root


def small_config(path: str, name: str = "CUB"):
  config = zsl_cub.get_config()
  config.data.path = path
  config.data.name = name
  config.train.epochs = 30
  config.train.batch_size = 64
  config.optimizer.lr = 1e-2
  return config


# (a) Loader.


def test_loader_reads_xlsa17_layout(tmp_path):
  truth = write_xlsa17(str(tmp_path))
  dataset = data.load_dataset(str(tmp_path), "CUB")
  np.testing.assert_allclose(dataset.features, truth["features"])
  np.testing.assert_array_equal(dataset.labels, truth["labels"])
  np.testing.assert_allclose(dataset.attributes, truth["attributes"], rtol=1e-6)
  for key, loc in truth["locs"].items():
    np.testing.assert_array_equal(dataset.locs[key], loc)
  num_seen = NUM_TRAIN + NUM_VAL
  np.testing.assert_array_equal(dataset.seen_classes, np.arange(num_seen))
  np.testing.assert_array_equal(dataset.unseen_classes, np.arange(num_seen, num_seen + NUM_UNSEEN))
  assert dataset.class_names[0] == "001.class_0" and len(dataset.class_names) == 40
  assert dataset.counts()["feature_dim"] == 64 and dataset.counts()["attribute_dim"] == 32


def test_loader_rejects_overlapping_seen_and_unseen(tmp_path):
  write_xlsa17(str(tmp_path))
  path = os.path.join(str(tmp_path), "CUB", "att_splits.mat")
  contents = scipy.io.loadmat(path)
  # A trainval image (class 0) slipped into test_unseen makes class 0 both seen and unseen.
  contents["test_unseen_loc"] = np.concatenate([contents["test_unseen_loc"], [[7]]])
  scipy.io.savemat(path, {k: v for k, v in contents.items() if not k.startswith("__")})
  with pytest.raises(ValueError, match="'trainval_loc' and 'test_unseen_loc' must be disjoint"):
    data.load_dataset(str(tmp_path), "CUB")


def test_loader_names_missing_key_and_file(tmp_path):
  write_xlsa17(str(tmp_path), drop=("val_loc",))
  with pytest.raises(ValueError, match=r"att_splits\.mat lacks the key\(s\) \['val_loc'\]"):
    data.load_dataset(str(tmp_path), "CUB")
  expected = os.path.join(str(tmp_path), "SUN", "res101.mat")
  with pytest.raises(ValueError, match=f"Missing {expected}: expected the xlsa17 file"):
    data.load_dataset(str(tmp_path), "SUN")


# (b) Metrics.


def test_mean_per_class_accuracy_and_harmonic_mean():
  labels = np.array([0, 0, 0, 1, 2, 2])
  predictions = np.array([0, 1, 0, 1, 0, 2])
  # Classes 0, 1, 2 score 2/3, 1, 1/2: the mean is 13/18, the image-level accuracy 4/6.
  assert zsl_eval.mean_per_class_accuracy(labels, predictions) == pytest.approx(13 / 18)
  assert metrics.harmonic_mean(0.5, 0.25) == pytest.approx(1 / 3)
  assert metrics.harmonic_mean(0.0, 0.0) == 0.0


def test_calibrated_prediction_and_sweep():
  candidates = np.array([3, 5, 7])
  calibrated = np.array([True, False, False])  # Class 3 is seen.
  probabilities = np.array([[0.5, 0.4, 0.1], [0.7, 0.1, 0.2]])
  np.testing.assert_array_equal(
    zsl_eval.predict(probabilities, candidates, calibrated, 0.0), [3, 3]
  )
  np.testing.assert_array_equal(
    zsl_eval.predict(probabilities, candidates, calibrated, 0.2), [5, 3]
  )
  # Seen image (class 3) and unseen image (class 5): gamma 0.2 keeps S = 1 and makes U = 1.
  sweep = zsl_eval.gzsl_sweep(
    probabilities[1:], [3], probabilities[:1], [5], candidates, calibrated, [0.0, 0.2, 0.3, 0.6]
  )
  assert sweep["seen"] == [1.0, 1.0, 1.0, 0.0] and sweep["unseen"] == [0.0, 1.0, 1.0, 1.0]
  assert sweep["best_gamma"] == 0.2  # Ties go to the smallest gamma.


def test_gamma_grids():
  assert calibration.gamma_grid("linear", 0.05, 1.0)[:4] == [0.0, 0.05, 0.1, 0.15]
  assert len(calibration.gamma_grid("linear", 0.05, 1.0)) == 21
  log = calibration.gamma_grid("log", 0.05, 1.0, 1e-4, 41)
  assert log[:2] == [0.0, 1e-4] and log[-1] == 1.0 and 0.001 in log and len(log) == 42


# (c) Loss.


def test_seen_class_loss_matches_numpy():
  rng = np.random.default_rng(1)
  v = rng.normal(size=(6, 4)).astype(np.float32)
  features = rng.normal(size=(5, 6)).astype(np.float32)
  attributes = rng.normal(size=(3, 4)).astype(np.float32)
  labels = np.array([0, 2, 1, 1, 0])
  mask = np.array([1, 1, 0, 1, 1], np.float32)
  logits = features.astype(np.float64) @ v @ attributes.T
  log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  per_example = -log_softmax[np.arange(5), labels]
  loss = model.seen_class_loss(v, features, jnp.asarray(labels), attributes)
  assert float(loss) == pytest.approx(per_example.mean(), rel=1e-5)
  masked = model.seen_class_loss(v, features, jnp.asarray(labels), attributes, jnp.asarray(mask))
  assert float(masked) == pytest.approx((per_example * mask).sum() / mask.sum(), rel=1e-5)


def test_feature_transforms_use_training_statistics():
  train = np.array([[1.0, 2.0, 5.0], [3.0, 6.0, 5.0]], np.float32)
  standardize = model.fit_feature_transform("standardize", train)
  np.testing.assert_allclose(standardize(train), [[-1, -1, 0], [1, 1, 0]])  # Constant dim: 0.
  np.testing.assert_allclose(standardize(np.array([[2.0, 4.0, 6.0]])), [[0, 0, 1]])
  l2 = model.fit_feature_transform("l2", train)
  np.testing.assert_allclose(np.linalg.norm(l2(train), axis=1), [1, 1], rtol=1e-6)


# (d) Protocol end to end.


def test_zsl_and_calibrated_gzsl_end_to_end(xlsa17_root, tmp_path):
  results = experiment.train_and_evaluate(small_config(xlsa17_root), str(tmp_path))
  assert results["zsl"]["top1"] > 0.9  # Chance is 1 / 12.
  uncalibrated, calibrated = results["gzsl"]["uncalibrated"], results["gzsl"]["calibrated"]
  # Biased to the seen classes before calibration, as on real data; calibration fixes it.
  assert uncalibrated["seen"] > 0.9 and uncalibrated["unseen"] < 0.85
  assert calibrated["gamma"] > 0 and calibrated["harmonic"] > uncalibrated["harmonic"] + 0.05
  calibration = results["calibration"]
  assert calibration["mode"] == "val_sweep" and calibration["gamma"] == calibrated["gamma"]
  assert calibration["sweep"]["best_gamma"] == calibrated["gamma"]
  assert calibrated["gamma_source"].startswith("val split")
  # No test image reaches calibration: train_loc and val_loc lose their test_seen images.
  test_seen_per_class = PER_CLASS // 5
  images = calibration["images"]
  assert images["val_unseen"] == NUM_VAL * (PER_CLASS - test_seen_per_class)
  assert images["fit"] + images["val_seen"] == NUM_TRAIN * (PER_CLASS - test_seen_per_class)
  written = json.loads((tmp_path / "results.json").read_text())
  assert written["dataset"] == "CUB" and written["paper"]["zsl_top1"] == 56.5
  assert written["counts"]["unseen_classes"] == NUM_UNSEEN


def test_attributes_unrelated_to_features_stay_near_chance(tmp_path):
  write_xlsa17(str(tmp_path / "data"), unrelated_attributes=True)
  config = small_config(str(tmp_path / "data"))
  config.calibration.mode = "fixed"
  results = experiment.train_and_evaluate(config, str(tmp_path / "work"))
  assert results["zsl"]["top1"] < 0.3


def test_config_validation_names_the_field():
  config = zsl_cub.get_config()
  with pytest.raises(ValueError, match=r"config\.data\.path=''.*xlsa17 'data' folder"):
    experiment.validate_config(config)
  config.data.path = "/x"
  config.data.feature_norm = "pca"
  with pytest.raises(ValueError, match=r"config\.data\.feature_norm='pca'.*one of"):
    experiment.validate_config(config)


def test_configs():
  cub, sun, awa = zsl_cub.get_config(), zsl_sun.get_config(), zsl_awa.get_config()
  assert {c.task for c in (cub, sun, awa)} == {"zsl_classification"}
  assert (cub.data.name, sun.data.name, awa.data.name) == ("CUB", "SUN", "AWA1")
  assert experiment.paper_numbers("AWA2")["column"] == "AWA"


# (e) Entry point.


def test_entry_point_writes_results(xlsa17_root, tmp_path):
  workdir = str(tmp_path / "run")
  command = [
    sys.executable,
    "-m",
    "spnet_jax.main",
    "--config",
    "configs/zsl_cub.py",
    "--workdir",
    workdir,
    f"--config.data.path={xlsa17_root}",
    "--config.train.epochs=3",
    "--config.calibration.grid=linear",
  ]
  run = subprocess.run(
    command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert "ZSL top-1 (unseen classes)" in run.stdout
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["task"] == "zsl_classification" and results["train"]["epochs"] == 3
  assert set(results["gzsl"]) == {"uncalibrated", "calibrated"}
  assert len(results["calibration"]["sweep"]["gammas"]) == 21
  assert os.path.exists(os.path.join(workdir, "config.json"))
