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


def _drawn_figures(monkeypatch, plot, *args) -> list:
  """(figure, renderer) of each figure that `plot(*args)` saves, drawn instead of written."""
  drawn = []

  def draw(path, figure, **_):
    figure.canvas.draw()  # Before plot() closes it, which takes its Agg canvas away.
    drawn.append((figure, figure.canvas.get_renderer()))

  monkeypatch.setattr(figures.paths, "save_figure", draw)
  plot(*args)
  return drawn


def _legends(figure) -> list:
  return [*figure.legends, *(a.get_legend() for a in figure.axes if a.get_legend())]


def _bar_boxes(figure, renderer) -> list:
  """Window extents of the bars with a height (NaN bars are not drawn)."""
  return [
    patch.get_window_extent(renderer)
    for axis in figure.axes
    for container in axis.containers
    for patch in container.patches
    if np.isfinite(patch.get_height()) and patch.get_height() > 0
  ]


def _line_points(figure) -> np.ndarray:
  """[N, 2] display coordinates along every data line, 20 points per segment."""
  points = []
  for axis in figure.axes:
    for line in axis.get_lines():
      xy = line.get_xydata()
      if line.get_label().startswith("chosen gamma") or len(xy) < 2:
        continue  # The vertical marker spans the whole height: nothing can avoid it.
      steps = np.linspace(0, 1, 20)[:, None, None]
      along = (xy[:-1] + steps * (xy[1:] - xy[:-1])).reshape(-1, 2)
      along = along[np.all(np.isfinite(along), axis=1)]
      points.append(line.get_transform().transform(along))
  return np.concatenate(points) if points else np.zeros((0, 2))


def _assert_legends_cover_no_data(figure, renderer) -> None:
  legends = _legends(figure)
  assert legends
  points = _line_points(figure)
  for legend in legends:
    box = legend.get_window_extent(renderer)
    assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1, "legend cut off"
    assert figure.bbox.y0 <= box.y0 and box.y1 <= figure.bbox.y1, "legend cut off"
    for bar in _bar_boxes(figure, renderer):
      assert not box.overlaps(bar), (box, bar)
    inside = (
      (points[:, 0] > box.x0)
      & (points[:, 0] < box.x1)
      & (points[:, 1] > box.y0)
      & (points[:, 1] < box.y1)
    )
    assert not inside.any(), points[inside][:3]


def test_per_class_legend_covers_no_bar(monkeypatch):
  # Bars near 100 % fill the top of the axes, where a legend inside them would sit.
  names = ["blue-triangle", "yellow-annulus", "green-square", "red-disc", "no-image"]
  series = {
    "ZLSS (unseen classes only)": [1.0, 0.98, 1.0, 0.99, None],
    "GZLSS, gamma 0": [0.52, 0.77, 0.83, 0.86, None],
    "GZLSS, calibrated gamma 0.40": [0.67, 0.82, 0.87, 0.81, None],
  }
  bars = {"classes": names, "mean_object_size": [163.0, 256.0, 358.0, 372.0, None]}
  bars.update(images=[5, 5, 5, 5, 0], series=series)
  (drawn,) = _drawn_figures(monkeypatch, figures.plot_per_class, bars, "x.png", "title")
  _assert_legends_cover_no_data(*drawn)


def test_calibration_and_fewshot_legends_cover_no_line(monkeypatch):
  curve = {
    "gammas": GAMMAS,
    "seen_miou": [0.9, 0.85, 0.6],
    "unseen_miou": [0.2, 0.7, 0.9],
    "harmonic": [0.33, 0.77, 0.72],
  }
  sweep = {k: [v * 0.95 for v in values] for k, values in curve.items()}
  sweep["gammas"] = GAMMAS
  label = "chosen on validation"
  args = (curve, 0.5, sweep, label, "x.png", "title")
  drawn = _drawn_figures(monkeypatch, figures.plot_calibration, *args)
  for metric in figures.GFLSS_METRICS:
    curves = figures.fewshot_curves(_suite_summary(), metric)
    drawn += _drawn_figures(monkeypatch, figures.plot_fewshot, curves, metric, "x.png")
  assert len(drawn) == 1 + len(figures.GFLSS_METRICS)
  for figure, renderer in drawn:
    _assert_legends_cover_no_data(figure, renderer)


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
