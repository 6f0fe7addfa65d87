"""Figs. 3, 4 and 5 (spnet_jax.tools.figures) and the class statistics behind Fig. 3."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from spnet_jax import experiment
from spnet_jax import workdir as workdir_lib
from spnet_jax.data import splits
from spnet_jax.evaluation import eval_report, eval_step
from spnet_jax.tools import figures

from .conftest import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPES = splits.get_split("shapes", "default")
GAMMAS = [0.0, 0.5, 1.0]


def _assert_png(path: str) -> None:
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE, path
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.size[0] > 200 and image.size[1] > 200


def test_image_counts_per_class_match_numpy_and_skip_padding():
  rng = np.random.default_rng(0)
  labels = rng.choice([0, 1, 2, 3, splits.IGNORE_LABEL], size=(4, 6, 5)).astype(np.int32)
  labels[1] = np.where(labels[1] == 3, 0, labels[1])  # Image 1 lacks class 3.
  labels[3] = 4  # A padded image (mask False) full of class 4: it must count for nothing.
  mask = np.array([True, True, True, False])
  valid = mask[:, None, None] & (labels != splits.IGNORE_LABEL)
  count = jax.jit(eval_step.count_images_per_class, static_argnums=2)
  got = np.asarray(count(jnp.asarray(labels), jnp.asarray(valid), 6))
  expected = [sum(np.any((labels[i] == c) & valid[i]) for i in range(4)) for c in range(6)]
  assert got.tolist() == expected
  assert got[4] == 0 and got[3] == expected[3] <= 2


def test_class_statistics_from_confusion_rows_and_image_counts():
  split = splits.ClassSplit(("a", "b", "c", "d"), seen=(0,), val=(1,), unseen=(3,))
  gzlss = np.zeros((2, 4, 5), np.int64)
  gzlss[:, 0, 0], gzlss[:, 1, 4], gzlss[:, 3, 1] = 30, 7, 12
  confusions = {"gzlss": gzlss, "class_images": np.array([3, 1, 0, 0])}
  stats = eval_report.class_statistics(confusions, split)
  assert stats == {
    "a": {"pixels": 30, "images": 3, "mean_object_size": 10.0},
    "b": {"pixels": 7, "images": 1, "mean_object_size": 7.0},
    "d": {"pixels": 12, "images": 0, "mean_object_size": None},
  }


def _synthetic_results(unseen_sizes: dict) -> dict:
  names = list(unseen_sizes)
  stats = {
    n: {"pixels": 0, "images": 0 if s is None else 2, "mean_object_size": s}
    for n, s in unseen_sizes.items()
  }
  stats["seen-class"] = {"pixels": 10, "images": 1, "mean_object_size": 10.0}
  iou = {n: i / 10 for i, n in enumerate(names)}
  return {
    "classes": {"seen": ["seen-class"], "val": [], "unseen": names},
    "tasks": ["ZLSS", "GZLSS"],
    "test": {
      "class_statistics": stats,
      "zlss": {"per_class_iou": iou},
      "gzlss": {
        "calibrated": {"gamma": 0.5},
        "per_class_iou_uncalibrated": {**{n: 0.0 for n in names}, "seen-class": 0.9},
        "per_class_iou_calibrated": {**{n: v + 0.05 for n, v in iou.items()}, names[0]: None},
      },
    },
  }


def test_per_class_bars_order_unseen_classes_by_mean_object_size():
  results = _synthetic_results({"big": 500.0, "absent": None, "small": 20.0, "mid": 80.0})
  bars = figures.per_class_bars(results)
  assert bars["classes"] == ["absent", "small", "mid", "big"]
  assert bars["mean_object_size"] == [None, 20.0, 80.0, 500.0]
  assert bars["images"] == [0, 2, 2, 2]
  zlss, uncalibrated, calibrated = bars["series"].values()
  assert zlss == [0.1, 0.2, 0.3, 0.0]
  assert uncalibrated == [0.0] * 4
  assert calibrated == pytest.approx([0.15, 0.25, 0.35, None])
  assert list(bars["series"])[2] == "GZLSS, calibrated gamma 0.50"


def test_calibration_curve_values_by_hand():
  # Seen classes 0 and 1, unseen class 2; rows ground truth, last column no prediction.
  gzlss = np.array(
    [
      [[8, 2, 0, 0], [0, 10, 0, 0], [0, 4, 1, 0]],
      [[8, 1, 1, 0], [0, 9, 1, 0], [0, 0, 5, 0]],
      [[8, 2, 0, 0], [0, 10, 0, 0], [0, 0, 0, 0]],  # Class 2 nowhere: U undefined, H 0.
    ]
  )
  curve = figures.calibration_curve(gzlss, GAMMAS, seen=(0, 1), unseen=(2,))
  s0, u0 = (0.8 + 10 / 16) / 2, 1 / 5
  s1, u1 = (0.8 + 9 / 11) / 2, 5 / 7
  assert curve["gammas"] == GAMMAS
  assert curve["seen_miou"] == pytest.approx([s0, s1, (0.8 + 10 / 12) / 2])
  assert curve["unseen_miou"][:2] == pytest.approx([u0, u1])
  assert np.isnan(curve["unseen_miou"][2])
  assert curve["harmonic"] == pytest.approx([2 * s0 * u0 / (s0 + u0), 2 * s1 * u1 / (s1 + u1), 0])


def _suite_summary() -> dict:
  rows = []
  for n in (5, 1, 2):  # Out of order: the curves sort by n.
    for method, base in (("learned head", 0.1), ("SPNet", 0.4)):
      median = {"zlss_unseen_miou": base + n / 100, "miou": base + n / 50, "harmonic": base / 2}
      rows.append({"n": n, "method": method, "median": median})
  rows[0]["median"]["harmonic"] = None
  return {"seeds": [0], "zero_label": [], "few_label": rows}


def test_fewshot_curves_per_method_against_n():
  curves = figures.fewshot_curves(_suite_summary())
  assert list(curves["flss"]) == ["learned head", "SPNet"]
  ns, values = curves["flss"]["SPNet"]
  assert ns == [1, 2, 5] and values == pytest.approx([0.41, 0.42, 0.45])
  assert curves["gflss"]["learned head"][1] == pytest.approx([0.12, 0.14, 0.2])
  harmonic = figures.fewshot_curves(_suite_summary(), "harmonic")["gflss"]
  assert harmonic["learned head"][1] == [0.05, 0.05, None]
  with pytest.raises(ValueError, match="valid"):
    figures.fewshot_curves(_suite_summary(), "accuracy")
  with pytest.raises(ValueError, match="--shots"):
    figures.fewshot_curves({"few_label": []})


def _synthetic_workdir(path, gamma_file: str = "") -> str:
  """A shapes workdir with config.json, confusions.npz and the results.json they give."""
  workdir = str(path)
  os.makedirs(workdir)
  rng = np.random.default_rng(1)
  c = SHAPES.num_classes
  gzlss = rng.integers(0, 50, size=(len(GAMMAS), c, c + 1))
  gzlss[:, :, :c] += 400 * np.eye(c, dtype=np.int64)  # Mostly right, so IoUs differ from 0.
  confusions = {
    "zlss": rng.integers(0, 50, size=(c, c + 1)),
    "gzlss": gzlss,
    "class_images": rng.integers(1, 24, size=c),
  }
  tasks = eval_step.create_tasks(SHAPES, GAMMAS, learned_classifier=False)
  sweep = None if gamma_file else eval_report.choose_gamma(gzlss[::-1], tasks, SHAPES)
  if sweep:
    sweep["split"] = "validation"
  results = {
    "dataset": "shapes",
    "test_split": "test",
    "step": 6,
    "classes": {
      "seen": SHAPES.names(SHAPES.seen),
      "val": SHAPES.names(SHAPES.val),
      "unseen": SHAPES.names(SHAPES.unseen),
    },
    "tasks": ["ZLSS", "GZLSS"],
    "gamma_grid": GAMMAS,
    "gamma_sweep": sweep,
    "test": eval_report.summarize(confusions, tasks, SHAPES, 0.5, "test"),
  }
  config = {
    "data": {"name": "shapes", "split": "default", "hold_out_val_classes": False},
    "eval": {"gamma_file": gamma_file},
  }
  np.savez(os.path.join(workdir, "confusions.npz"), **confusions)
  for name, content in (("results.json", results), (workdir_lib.CONFIG_FILE, config)):
    with open(os.path.join(workdir, name), "w") as f:
      json.dump(content, f)
  return workdir


def test_workdir_and_suite_figures_from_synthetic_files_on_the_command_line(tmp_path):
  workdir = _synthetic_workdir(tmp_path / "run")
  root = str(tmp_path / "suite")
  os.makedirs(root)
  with open(os.path.join(root, "suite.json"), "w") as f:
    json.dump(_suite_summary(), f)
  command = [
    sys.executable,
    "-m",
    "spnet_jax.tools.figures",
    "--workdir",
    workdir,
    "--suite_root",
    root,
  ]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  expected = [
    os.path.join(workdir, figures.PER_CLASS_FIGURE),
    os.path.join(workdir, figures.CALIBRATION_FIGURE),
    os.path.join(root, figures.FEWSHOT_FIGURE),
  ]
  assert result.stdout.split() == expected
  for path in expected:
    _assert_png(path)


def test_calibration_curve_of_a_workdir_uses_the_trained_classes_as_seen(tmp_path):
  workdir = _synthetic_workdir(tmp_path / "run")
  results = figures.load_results(workdir)
  split = figures.run_split(workdir, results)
  gzlss = figures.load_gzlss_confusions(workdir, results["gamma_grid"])
  curve = figures.calibration_curve(gzlss, GAMMAS, split.train_classes, split.unseen)
  # At gamma 0 and the chosen 0.5 the curve is results.json's own (test split) numbers.
  for index, key in ((0, "uncalibrated"), (1, "calibrated")):
    row = results["test"]["gzlss"][key]
    for name in ("seen_miou", "unseen_miou", "harmonic"):
      assert curve[name][index] == pytest.approx(row[name])
  sweep, label = figures.selection_sweep(workdir, results)
  assert sweep["harmonic"] == pytest.approx(curve["harmonic"][::-1])  # Made from gzlss[::-1].
  assert label == "chosen on the validation split"


def test_calibration_sweep_of_a_held_out_run_comes_from_the_gamma_file(tmp_path):
  record = {"gammas": GAMMAS, "seen_miou": [0.5] * 3, "unseen_miou": [0.1, 0.3, 0.2]}
  record.update(harmonic=[0.2, 0.4, 0.3], best_gamma=0.5, held_out_classes=["red-square"])
  gamma_file = str(tmp_path / "calibration.json")
  with open(gamma_file, "w") as f:
    json.dump(record, f)
  workdir = _synthetic_workdir(tmp_path / "run", gamma_file)
  sweep, label = figures.selection_sweep(workdir, figures.load_results(workdir))
  assert sweep == record and label == "chosen with the val classes held out"
  assert len(figures.workdir_figures(workdir)) == 2
  os.remove(gamma_file)  # A vanished file leaves the dashed lines out instead of failing.
  assert figures.selection_sweep(workdir, figures.load_results(workdir)) == (None, "")


def test_missing_inputs_name_the_file_and_the_command_that_makes_it(tmp_path):
  with pytest.raises(ValueError, match=r"results\.json does not exist.*spnet_jax\.main"):
    figures.workdir_figures(str(tmp_path))
  with pytest.raises(ValueError, match=r"suite\.json does not exist.*spnet_jax\.tools\.suite"):
    figures.suite_figure(str(tmp_path))
  workdir = _synthetic_workdir(tmp_path / "run")
  os.remove(os.path.join(workdir, "confusions.npz"))
  with pytest.raises(ValueError, match=r"confusions\.npz does not exist.*mode=evaluate"):
    figures.workdir_figures(workdir)
  os.remove(os.path.join(workdir, workdir_lib.CONFIG_FILE))
  with pytest.raises(ValueError, match=r"config\.json does not exist"):
    figures.workdir_figures(workdir)


def test_figures_of_a_real_tiny_run(fast_config, tmp_path):
  workdir = str(tmp_path / "run")
  results = experiment.train_and_evaluate(fast_config, workdir)
  stats = results["test"]["class_statistics"]
  assert set(stats) == set(SHAPES.names(SHAPES.eval_classes))
  # Shapes labels have no ignore pixels: every pixel of the 24 test images is some class, and
  # every image has background.
  assert sum(s["pixels"] for s in stats.values()) == 24 * 64 * 64
  assert stats["background"]["images"] == 24
  for s in stats.values():
    assert 0 <= s["images"] <= 24
    assert s["mean_object_size"] == (s["pixels"] / s["images"] if s["images"] else None)

  paths = figures.workdir_figures(workdir)
  assert [os.path.basename(p) for p in paths] == [
    figures.PER_CLASS_FIGURE,
    figures.CALIBRATION_FIGURE,
  ]
  for path in paths:
    _assert_png(path)
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  sizes = figures.per_class_bars(written)["mean_object_size"]
  assert sorted(sizes, key=lambda s: s or 0.0) == sizes
  split = figures.run_split(workdir, written)
  gzlss = figures.load_gzlss_confusions(workdir, written["gamma_grid"])
  curve = figures.calibration_curve(gzlss, written["gamma_grid"], split.train_classes, split.unseen)
  chosen = written["gamma_grid"].index(written["test"]["gzlss"]["calibrated"]["gamma"])
  calibrated = written["test"]["gzlss"]["calibrated"]
  assert curve["harmonic"][chosen] == pytest.approx(calibrated["harmonic"])
  assert curve["seen_miou"][0] == pytest.approx(
    written["test"]["gzlss"]["uncalibrated"]["seen_miou"]
  )
