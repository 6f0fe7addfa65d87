"""The zero-shot classification run: calibrate gamma on the val split, train on trainval, report.

Protocol (xlsa17, Xian et al. 2018):
  ZSL   test_unseen images classified among the unseen classes; mean per-class top-1 accuracy.
  GZSL  test_seen and test_unseen images classified among all classes; S and U are the mean
        per-class accuracies on each, H their harmonic mean.
  Calibration (SPNet-C) never looks at the test classes or images: a model trained on train_loc
  (minus a held-out share of its images per class) treats the val_loc classes as unseen; the
  gamma with the best H there is applied to the final model trained on trainval_loc.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from spnet_jax import workdir as workdir_lib
from spnet_jax.errors import UserError
from spnet_jax.evaluation import calibrated_prediction
from spnet_jax.evaluation import calibration as calibration_lib
from spnet_jax.zsl import data, model
from spnet_jax.zsl import evaluate as zsl_eval

CALIBRATION_MODES = ("val_sweep", "fixed")
# Paper Table 4 (SPNet row): ZSL top-1 and GZSL H on unseen classes, %. Its AWA is AWA1 ([23]).
PAPER = {"CUB": (56.5, 36.6), "SUN": (60.7, 39.6), "AWA": (66.2, 24.7)}
PAPER_COLUMN = {"CUB": "CUB", "SUN": "SUN", "AWA1": "AWA", "AWA2": "AWA"}


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first invalid field (`config.<field>=<value>`) and why."""

  def fail(field: str, value, why: str):
    raise UserError(f"Invalid config.{field}={value!r}: {why}")

  if not config.data.path:
    fail(
      "data.path",
      config.data.path,
      "set --config.data.path to the unpacked xlsa17 'data' folder (the one holding CUB/, "
      "SUN/, AWA1/, AWA2/); see the README section 'Zero-shot image classification'.",
    )
  choices = {
    "data.feature_norm": (config.data.feature_norm, model.FEATURE_NORMS),
    "optimizer.name": (config.optimizer.name, model.OPTIMIZERS),
    "optimizer.schedule": (config.optimizer.schedule, model.SCHEDULES),
    "calibration.mode": (config.calibration.mode, CALIBRATION_MODES),
    "calibration.grid": (config.calibration.grid, calibration_lib.GRIDS),
  }
  for field, (value, valid) in choices.items():
    if value not in valid:
      fail(field, value, f"must be one of {list(valid)}.")
  positive = {
    "train.epochs": config.train.epochs,
    "train.batch_size": config.train.batch_size,
    "train.log_every_epochs": config.train.log_every_epochs,
    "optimizer.lr": config.optimizer.lr,
    "calibration.gamma_step": config.calibration.gamma_step,
    "calibration.gamma_points": config.calibration.gamma_points,
  }
  for field, value in positive.items():
    if not value > 0:
      fail(field, value, "must be > 0.")
  if config.optimizer.weight_decay < 0:
    fail("optimizer.weight_decay", config.optimizer.weight_decay, "must be >= 0.")
  if not 0.0 < config.calibration.gamma_max <= 1.0:
    fail("calibration.gamma_max", config.calibration.gamma_max, "must lie in (0, 1].")
  if not 0.0 < config.calibration.gamma_min < config.calibration.gamma_max:
    fail(
      "calibration.gamma_min",
      config.calibration.gamma_min,
      f"must lie in (0, calibration.gamma_max={config.calibration.gamma_max}).",
    )
  if not 0.0 <= config.calibration.gamma <= 1.0:
    fail("calibration.gamma", config.calibration.gamma, "the factor lies in [0, 1].")
  if not 0.0 < config.calibration.seen_holdout_fraction < 1.0:
    fail(
      "calibration.seen_holdout_fraction",
      config.calibration.seen_holdout_fraction,
      "must lie in (0, 1): the share of each train_loc class held out to measure S on val.",
    )


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """V, the feature normalisation it was trained with, and the classes it was trained on."""

  v: jax.Array
  transform: model.FeatureTransform
  classes: np.ndarray
  history: list[float]

  def scores(self, features: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """[N, K] scores of the images against the K attribute rows given."""
    out = model.scores(self.v, jnp.asarray(self.transform(features)), jnp.asarray(attributes))
    return np.asarray(out, np.float64)


def train_model(
  config: ml_collections.ConfigDict,
  dataset: data.ZslDataset,
  attributes: np.ndarray,
  images: np.ndarray,
  log_name: str,
  writer=None,
) -> TrainedModel:
  """Trains V on `images` (indices), the softmax running over their classes only."""
  labels = dataset.labels[images]
  classes = np.unique(labels)
  position = np.full(dataset.num_classes, -1, np.int64)
  position[classes] = np.arange(classes.size)
  transform = model.fit_feature_transform(config.data.feature_norm, dataset.features[images])
  v, history = model.fit(
    transform(dataset.features[images]),
    position[labels],
    attributes[classes],
    config,
    config.seed,
    log_name,
    writer,
  )
  return TrainedModel(v, transform, classes, history)


def hold_out_per_class(
  images: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Holds out floor(fraction * n) random images of each class; every class keeps at least one.

  Args:
    images: image indices to split.
    labels: class of every image of the dataset.
    fraction: share of each class held out.
    seed: seeds the draw.

  Returns:
    (kept, held_out) sorted image indices.
  """
  rng = np.random.default_rng(seed)
  kept, held = [], []
  for c in np.unique(labels[images]):
    members = rng.permutation(images[labels[images] == c])
    count = min(int(np.floor(fraction * members.size)), members.size - 1)
    held.append(members[:count])
    kept.append(members[count:])
  return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def generalized_sweep(
  trained: TrainedModel,
  dataset: data.ZslDataset,
  attributes: np.ndarray,
  seen_images: np.ndarray,
  unseen_images: np.ndarray,
  candidates: np.ndarray,
  gammas,
) -> dict:
  """GZSL S / U / H of a trained model at each gamma, the candidates' softmax calibrated."""

  def probabilities(images):
    scores = trained.scores(dataset.features[images], attributes[candidates])
    return calibrated_prediction.candidate_probabilities(np.asarray(scores))

  return zsl_eval.gzsl_sweep(
    probabilities(seen_images),
    dataset.labels[seen_images],
    probabilities(unseen_images),
    dataset.labels[unseen_images],
    candidates,
    np.isin(candidates, trained.classes),
    gammas,
  )


def sweep_gammas(cfg: ml_collections.ConfigDict) -> list[float]:
  """The gammas of config.calibration's grid."""
  return calibration_lib.gamma_grid(
    cfg.grid, cfg.gamma_step, cfg.gamma_max, cfg.gamma_min, cfg.gamma_points
  )


def calibrate(
  config: ml_collections.ConfigDict, dataset: data.ZslDataset, attributes: np.ndarray, writer
) -> dict:
  """Chooses gamma without the test classes or images (config.calibration.mode='val_sweep').

  Returns:
    {'gamma', 'source', and for a sweep: 'sweep' (S / U / H per gamma on val) and 'images'}.
  """
  cfg = config.calibration
  if cfg.mode == "fixed":
    return {"gamma": float(cfg.gamma), "source": f"config.calibration.gamma={cfg.gamma}"}
  locs = dataset.locs
  # xlsa17's train_loc / val_loc also cover the test_seen images: leave every test image out.
  test_images = np.union1d(locs["test_seen_loc"], locs["test_unseen_loc"])
  pool = np.setdiff1d(locs["train_loc"], test_images)
  val_unseen = np.setdiff1d(locs["val_loc"], test_images)
  if pool.size == 0 or val_unseen.size == 0:
    raise UserError(
      f"{dataset.name}: once test images are left out, 'train_loc' keeps {pool.size} and "
      f"'val_loc' {val_unseen.size} images, too few to calibrate; set "
      "--config.calibration.mode=fixed --config.calibration.gamma=<value>."
    )
  fit_images, val_seen = hold_out_per_class(
    pool, dataset.labels, cfg.seen_holdout_fraction, config.seed
  )
  trained = train_model(config, dataset, attributes, fit_images, "train_calibration_loss", writer)
  candidates = np.union1d(trained.classes, dataset.labels[val_unseen])
  gammas = sweep_gammas(cfg)
  sweep = generalized_sweep(trained, dataset, attributes, val_seen, val_unseen, candidates, gammas)
  num_val_classes = np.unique(dataset.labels[val_unseen]).size
  source = (
    f"val split: model trained on train_loc ({fit_images.size} images, {trained.classes.size} "
    f"classes), S on {val_seen.size} held-out train_loc images, U on val_loc "
    f"({val_unseen.size} images, {num_val_classes} classes as unseen); no test image or class"
  )
  logging.info(
    "Calibration: gamma %.4g (best val H %.4f).", sweep["best_gamma"], max(sweep["harmonic"])
  )
  return {
    "gamma": sweep["best_gamma"],
    "source": source,
    "sweep": sweep,
    "images": {
      "fit": int(fit_images.size),
      "val_seen": int(val_seen.size),
      "val_unseen": int(val_unseen.size),
    },
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Calibrates, trains on trainval, evaluates ZSL and GZSL, writes `workdir`/results.json.

  Args:
    config: a configs/zsl_*.py config (config.task == 'zsl_classification').
    workdir: output folder (config.json, results.json, metric summaries).

  Returns:
    The results dict also written to results.json.
  """
  validate_config(config)
  dataset = data.load_dataset(config.data.path, config.data.name)
  logging.info("%s: %s", dataset.name, dataset.counts())
  attributes = dataset.attributes
  if config.data.normalize_attributes:
    attributes = model.normalize_attributes(attributes)
  # A workdir holds one run: a rerun that changes its training stops before touching a file.
  with workdir_lib.claim(workdir, config) as overrides:
    writer = workdir_lib.create_writer(workdir)
    try:
      return _run(config, workdir, dataset, attributes, writer, overrides)
    finally:
      writer.close()


def _run(config, workdir: str, dataset, attributes, writer, overrides: dict) -> dict:
  """train_and_evaluate on a claimed workdir."""
  calibration = calibrate(config, dataset, attributes, writer)
  locs = dataset.locs
  final = train_model(config, dataset, attributes, locs["trainval_loc"], "train_loss", writer)
  unseen = dataset.unseen_classes
  test_unseen = locs["test_unseen_loc"]
  zsl = zsl_eval.zsl_accuracy(
    final.scores(dataset.features[test_unseen], attributes[unseen]),
    dataset.labels[test_unseen],
    unseen,
  )
  everything = np.arange(dataset.num_classes)
  gammas = sweep_gammas(config.calibration)
  gamma = calibration["gamma"]
  # The whole test sweep is kept for analysis only; gamma came from `calibration`.
  test_sweep = generalized_sweep(
    final,
    dataset,
    attributes,
    locs["test_seen_loc"],
    test_unseen,
    everything,
    sorted({*gammas, 0.0, gamma}),
  )

  def at(g: float) -> dict:
    i = test_sweep["gammas"].index(g)
    keys = ("seen", "unseen", "harmonic")
    return {"gamma": g, **{k: test_sweep[k][i] for k in keys}}

  results = {
    "task": "zsl_classification",
    "dataset": dataset.name,
    "protocol": "xlsa17 (Xian et al. 2018): mean per-class top-1 accuracy",
    "counts": dataset.counts(),
    "zsl": {"top1": zsl},
    "gzsl": {
      "uncalibrated": at(0.0),
      "calibrated": {**at(gamma), "gamma_source": calibration["source"]},
    },
    "calibration": {"mode": config.calibration.mode, **calibration},
    "gzsl_test_sweep": {
      **test_sweep,
      "note": "for analysis only; the reported gamma is chosen by 'calibration'",
    },
    "train": {"epochs": config.train.epochs, "final_loss": final.history[-1]},
    "paper": paper_numbers(dataset.name),
    # Evaluation-only fields this command changed from the run's config.json.
    "config_overrides": overrides,
  }
  if jax.process_index() == 0:
    path = os.path.join(workdir, workdir_lib.RESULTS_FILE)
    workdir_lib.write_json(path, results)
    print(format_report(results), flush=True)
    print(f"Wrote {path}", flush=True)
  return results


def paper_numbers(name: str) -> dict | None:
  """The paper's Table 4 numbers for a dataset folder name, None for other datasets."""
  column = PAPER_COLUMN.get(name)
  if column is None:
    return None
  zsl, harmonic = PAPER[column]
  return {"column": column, "zsl_top1": zsl, "gzsl_harmonic": harmonic}


def format_report(results: dict) -> str:
  """The paper's numbers beside this run's, in %."""
  paper = results["paper"] or {}
  note = ""
  if results["dataset"] == "AWA2":
    note = " (the paper reports AWA1)"
  lines = [
    f"Zero-shot classification on {results['dataset']}: {results['protocol']} (%)",
    f"  {'':<30} {'paper' + note:>8} {'yours':>7}",
    f"  {'ZSL top-1 (unseen classes)':<30} {_num(paper.get('zsl_top1')):>8} "
    f"{_pct(results['zsl']['top1']):>7}",
  ]
  for key in ("uncalibrated", "calibrated"):
    row = results["gzsl"][key]
    label = f"GZSL gamma={row['gamma']:.4g}"
    for metric, name in (("seen", "S"), ("unseen", "U"), ("harmonic", "H")):
      reference = paper.get("gzsl_harmonic") if metric == "harmonic" else None
      lines.append(f"  {label + ' ' + name:<30} {_num(reference):>8} {_pct(row[metric]):>7}")
  lines.append(f"  gamma chosen on: {results['gzsl']['calibrated']['gamma_source']}")
  lines.append("  (Table 4 does not say whether its H is calibrated; it stands beside both.)")
  return "\n".join(lines)


def _num(value: float | None) -> str:
  return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
  if value is None or np.isnan(value):
    return "-"
  return f"{100 * value:.2f}"
