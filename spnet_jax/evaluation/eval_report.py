"""An evaluation's results: the calibration choice, per-class statistics, the report."""

import numpy as np

from spnet_jax.data import splits
from spnet_jax.evaluation import metrics
from spnet_jax.evaluation.eval_step import EvalTasks


def choose_gamma(gzlss: np.ndarray, tasks: EvalTasks, split: splits.ClassSplit) -> dict:
  """The sweep of S/U/H over gamma and the gamma with the best harmonic mean (ties: smallest)."""
  rows = [metrics.generalized_scores(m, split.train_classes, split.unseen) for m in gzlss]
  harmonic = np.array([r["harmonic"] for r in rows])
  best = int(np.argmax(harmonic))
  return {
    "gammas": list(tasks.gammas),
    "seen_miou": [r["seen_miou"] for r in rows],
    "unseen_miou": [r["unseen_miou"] for r in rows],
    "harmonic": harmonic.tolist(),
    "best_gamma": tasks.gammas[best],
  }


def per_class_report(confusion: np.ndarray, class_ids, split: splits.ClassSplit) -> dict:
  iou = metrics.per_class_iou(confusion)
  return {split.class_names[c]: _finite_or_none(iou[c]) for c in class_ids}


def class_statistics(confusions: dict[str, np.ndarray], split: splits.ClassSplit) -> dict:
  """Per evaluated class: labelled pixels, images containing it and mean object size.

  The mean object size is pixels / images: the class's average area in the images that contain
  it (None when no image does), what the paper orders Fig. 3 by.
  """
  # Every GZLSS matrix holds every labelled pixel once: its row sums count the ground truth.
  pixels = confusions["gzlss"][0].sum(axis=1)
  images = confusions["class_images"]
  return {
    split.class_names[c]: {
      "pixels": int(pixels[c]),
      "images": int(images[c]),
      "mean_object_size": float(pixels[c] / images[c]) if images[c] else None,
    }
    for c in split.eval_classes
  }


def summarize(
  confusions: dict[str, np.ndarray],
  tasks: EvalTasks,
  split: splits.ClassSplit,
  gamma: float,
  gamma_source: str,
) -> dict:
  """results.json content for one split: ZLSS, GZLSS at gamma 0 and at `gamma`, per class.

  Also the class statistics of the split (pixels, images, mean object size per class).
  """
  gammas = list(tasks.gammas)
  at_zero = confusions["gzlss"][gammas.index(0.0)]
  at_gamma = confusions["gzlss"][gammas.index(gamma)]
  seen, unseen = split.train_classes, split.unseen
  return {
    "zlss": {
      "unseen_miou": metrics.mean_iou(confusions["zlss"], unseen),
      "per_class_iou": per_class_report(confusions["zlss"], unseen, split),
    },
    "gzlss": {
      "uncalibrated": {"gamma": 0.0, **metrics.generalized_scores(at_zero, seen, unseen)},
      "calibrated": {
        "gamma": gamma,
        "gamma_source": gamma_source,
        **metrics.generalized_scores(at_gamma, seen, unseen),
      },
      "per_class_iou_uncalibrated": per_class_report(at_zero, split.eval_classes, split),
      "per_class_iou_calibrated": per_class_report(at_gamma, split.eval_classes, split),
    },
    "class_statistics": class_statistics(confusions, split),
  }


def _finite_or_none(value: float) -> float | None:
  return None if np.isnan(value) else float(value)


def format_report(results: dict, split: splits.ClassSplit) -> str:
  """A plain-text table of a results dict (the one written to results.json)."""
  test = results["test"]
  unseen_task, all_task = results.get("tasks", ("ZLSS", "GZLSS"))
  lines = [
    f"Results on {results['dataset']} ({results['test_split']} split, step {results['step']}, "
    f"protocol: {results['protocol']})",
    f"  {unseen_task:<5} unseen mIoU            {_pct(test['zlss']['unseen_miou'])}",
  ]
  for key in ("uncalibrated", "calibrated"):
    row = test["gzlss"][key]
    lines.append(
      f"  {all_task:<5} gamma={row['gamma']:.2f} seen {_pct(row['seen_miou'])}  unseen "
      f"{_pct(row['unseen_miou'])}  H {_pct(row['harmonic'])}"
    )
  lines.append(f"  gamma chosen on: {test['gzlss']['calibrated']['gamma_source']}")
  lines.append(f"  per-class IoU ({unseen_task} / {all_task} uncalibrated / calibrated):")
  zlss = test["zlss"]["per_class_iou"]
  uncal = test["gzlss"]["per_class_iou_uncalibrated"]
  cal = test["gzlss"]["per_class_iou_calibrated"]
  for c in split.eval_classes:
    name = split.class_names[c]
    tag = "unseen" if c in split.unseen else ("val" if c in split.val else "seen")
    lines.append(
      f"    {name:<24} {tag:<6} {_pct(zlss.get(name)):>7} {_pct(uncal[name]):>7} "
      f"{_pct(cal[name]):>7}"
    )
  return "\n".join(lines)


def _pct(value: float | None) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "   -  "
  return f"{100 * value:6.2f}"
