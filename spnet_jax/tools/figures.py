"""The paper's Figs. 3, 4 and 5 as PNG files, from a run's workdir or a results suite's root.

  python -m spnet_jax.tools.figures --workdir workdirs/shapes_zlss
  python -m spnet_jax.tools.figures --suite_root workdirs/suite

--workdir writes, into the workdir, per_class_iou.png (Fig. 3: per-class IoU of the unseen
classes ordered by their mean object size on the test split) and calibration_curve.png (Fig. 4:
seen / unseen / harmonic mIoU on the test split against the calibration factor gamma, with the
chosen gamma and the sweep it was chosen on). --suite_root writes fewshot_curve.png (Fig. 5:
FLSS unseen mIoU and GFLSS mIoU, or H with --gflss_metric=harmonic, against n) into the root.
Each written path is printed.
"""

import os

import numpy as np
from absl import app, flags, logging

from spnet_jax import cli

# Before the modules below load TensorFlow: without its start-up notices (cli.py).
cli.import_tensorflow_quietly()

from spnet_jax import experiment, paths
from spnet_jax import workdir as workdir_lib
from spnet_jax.data import splits
from spnet_jax.evaluation import metrics

PER_CLASS_FIGURE = "per_class_iou.png"
CALIBRATION_FIGURE = "calibration_curve.png"
FEWSHOT_FIGURE = "fewshot_curve.png"
GFLSS_METRICS = {"miou": "mIoU over all classes", "harmonic": "harmonic mean H of S and U"}

FLAGS = flags.FLAGS

_RUN_COMMAND = (
  "`python -m spnet_jax.main --config configs/<experiment>.py --workdir {workdir}` (add "
  "--config.mode=evaluate to evaluate its latest checkpoint without training)"
)


def _pyplot():
  """matplotlib's pyplot on the headless Agg backend."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot

  return pyplot


def _nan(value) -> float:
  """JSON null (an undefined IoU) as NaN, which matplotlib leaves out."""
  return float("nan") if value is None else float(value)


def load_results(workdir: str) -> dict:
  """The run's results.json."""
  return paths.read_json(
    os.path.join(workdir, "results.json"),
    f"train and evaluate the run first with {_RUN_COMMAND.format(workdir=workdir)}.",
  )


def load_gzlss_confusions(workdir: str, gammas: list[float]) -> np.ndarray:
  """The test split's GZLSS matrices [G, C, C + 1] of confusions.npz, one per gamma."""
  path = os.path.join(workdir, "confusions.npz")
  if not paths.exists(path):
    raise ValueError(
      f"{path} does not exist: evaluate the run with {_RUN_COMMAND.format(workdir=workdir)}."
    )
  gzlss = paths.load_arrays(path)["gzlss"]
  if gzlss.ndim != 3 or len(gzlss) != len(gammas):
    raise ValueError(
      f"{path}: 'gzlss' has shape {gzlss.shape}, expected one [C, C + 1] matrix per gamma of "
      f"results.json's gamma_grid ({len(gammas)}): the two files come from different "
      f"evaluations; evaluate again with {_RUN_COMMAND.format(workdir=workdir)}."
    )
  return gzlss


def run_split(workdir: str, results: dict) -> splits.ClassSplit:
  """The class split the run was evaluated on, from its config.json."""
  if not paths.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    raise ValueError(
      f"{os.path.join(workdir, workdir_lib.CONFIG_FILE)} does not exist: the run was made by an "
      f"older version; evaluate it again with {_RUN_COMMAND.format(workdir=workdir)}."
    )
  config = workdir_lib.load_run_config(workdir)
  split = experiment.run_split(config)
  if split.names(split.unseen) != results["classes"]["unseen"]:
    raise ValueError(
      f"{workdir}: config.json's class split ({config.data.name}/{config.data.split}) has "
      f"unseen classes {split.names(split.unseen)}, results.json has "
      f"{results['classes']['unseen']}: the files come from different runs."
    )
  return split


def per_class_bars(results: dict) -> dict:
  """Fig. 3's numbers: the unseen classes ordered by mean object size, and their IoUs.

  The mean object size of a class is its test pixels divided by the test images containing it
  (results.json's test.class_statistics); a class in no test image counts as size 0.

  Returns:
    {'classes': names, smallest objects first; 'mean_object_size': floats (None: no image);
    'images': ints; 'series': {legend label: IoU per class (None: undefined)}}.
  """
  test = results["test"]
  if "class_statistics" not in test:
    raise ValueError(
      "results.json has no test.class_statistics (it was written by an older version): "
      "evaluate the run again with --config.mode=evaluate."
    )
  stats = test["class_statistics"]
  size = lambda name: stats[name]["mean_object_size"] or 0.0
  # Ties (e.g. two classes in no image) keep the split's order.
  classes = sorted(results["classes"]["unseen"], key=size)
  unseen_task, all_task = results.get("tasks", ("ZLSS", "GZLSS"))
  gamma = test["gzlss"]["calibrated"]["gamma"]
  sources = {
    f"{unseen_task} (unseen classes only)": test["zlss"]["per_class_iou"],
    f"{all_task}, gamma 0": test["gzlss"]["per_class_iou_uncalibrated"],
    f"{all_task}, calibrated gamma {gamma:.2f}": test["gzlss"]["per_class_iou_calibrated"],
  }
  return {
    "classes": classes,
    "mean_object_size": [stats[c]["mean_object_size"] for c in classes],
    "images": [stats[c]["images"] for c in classes],
    "series": {label: [iou.get(c) for c in classes] for label, iou in sources.items()},
  }


def calibration_curve(gzlss: np.ndarray, gammas, seen, unseen) -> dict:
  """Fig. 4's numbers: S, U and H for each gamma's GZLSS matrix (as eval_report.choose_gamma).

  Args:
    gzlss: [G, C, C + 1] confusion matrices, one per gamma.
    gammas: the G calibration factors.
    seen: class ids of S (the classes trained with labels).
    unseen: class ids of U.

  Returns:
    {'gammas', 'seen_miou', 'unseen_miou', 'harmonic'}: lists of G floats (NaN: undefined).
  """
  rows = [metrics.generalized_scores(m, seen, unseen) for m in gzlss]
  curve = {"gammas": [float(g) for g in gammas]}
  for key in ("seen_miou", "unseen_miou", "harmonic"):
    curve[key] = [r[key] for r in rows]
  return curve


def selection_sweep(workdir: str, results: dict) -> tuple[dict | None, str]:
  """The sweep the run's gamma was chosen on, and a legend label; (None, '') if none.

  Either the run's own sweep on its calibration split (results['gamma_sweep']) or the
  held-out-classes run's calibration.json named by its config.eval.gamma_file.
  """
  if results.get("gamma_sweep"):
    return results["gamma_sweep"], f"chosen on the {results['gamma_sweep']['split']} split"
  path = workdir_lib.load_run_config(workdir).eval.get("gamma_file")
  if not path:
    return None, ""
  if not paths.exists(path):
    logging.warning("Fig. 4 leaves out the calibration sweep: %s (eval.gamma_file) is gone.", path)
    return None, ""
  return paths.read_json(path), "chosen with the val classes held out"


def fewshot_curves(summary: dict, gflss_metric: str = "miou") -> dict:
  """Fig. 5's numbers: per method, FLSS unseen mIoU and a GFLSS metric against n (medians).

  Args:
    summary: suite.json (report.suite_summary).
    gflss_metric: 'miou' (all classes) or 'harmonic' (H of seen and unseen mIoU).

  Returns:
    {'flss': {method: (ns, values)}, 'gflss': {method: (ns, values)}}, ns ascending, values
    None where a seed's value was undefined.
  """
  if gflss_metric not in GFLSS_METRICS:
    raise ValueError(f"Unknown GFLSS metric {gflss_metric!r}; valid: {sorted(GFLSS_METRICS)}.")
  rows = summary.get("few_label") or []
  if not rows:
    raise ValueError(
      "suite.json has no few-label rows: run the suite with few-label shots (--shots 1,2,5)."
    )
  curves = {"flss": {}, "gflss": {}}
  for row in sorted(rows, key=lambda r: r["n"]):
    for task, key in (("flss", "zlss_unseen_miou"), ("gflss", gflss_metric)):
      ns, values = curves[task].setdefault(row["method"], ([], []))
      ns.append(row["n"])
      values.append(row["median"][key])
  return curves


def plot_per_class(bars: dict, path: str, title: str) -> None:
  """Grouped bars of IoU per unseen class, mean object size in the tick labels."""
  plt = _pyplot()
  classes = bars["classes"]
  positions = np.arange(len(classes))
  width = 0.8 / len(bars["series"])
  # 2.6 inches more for the legend beside the axes: inside them it would hide the tallest bars.
  figure, axis = plt.subplots(figsize=(max(5.0, 0.9 * len(classes) + 2) + 2.6, 4))
  for i, (label, values) in enumerate(bars["series"].items()):
    heights = [100 * _nan(v) for v in values]
    axis.bar(positions + (i - (len(bars["series"]) - 1) / 2) * width, heights, width, label=label)
  ticks = [
    f"{name}\n{'no image' if size is None else f'{size:.0f} px'}"
    for name, size in zip(classes, bars["mean_object_size"], strict=True)
  ]
  axis.set_xticks(positions, ticks, rotation=45 if len(classes) > 6 else 0, ha="center")
  axis.set_xlabel("unseen class, mean object size (pixels per image containing it)")
  axis.set_ylabel("IoU (%)")
  axis.set_ylim(0, 100)
  axis.set_title(title)
  axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
  figure.tight_layout()
  paths.save_figure(path, figure)
  plt.close(figure)


def plot_calibration(
  curve: dict, chosen_gamma: float, sweep: dict | None, sweep_label: str, path: str, title: str
) -> None:
  """S, U, H against gamma (solid: test split; dashed: the selection sweep), gamma marked."""
  plt = _pyplot()
  figure, axis = plt.subplots(figsize=(8.5, 4))
  names = (("seen_miou", "S"), ("unseen_miou", "U"), ("harmonic", "H"))
  for colour, (key, name) in zip(("C0", "C1", "C2"), names, strict=True):
    values = [100 * _nan(v) for v in curve[key]]
    axis.plot(
      curve["gammas"], values, color=colour, marker="o", markersize=3, label=f"{name}, test"
    )
    if sweep:
      swept = [100 * _nan(v) for v in sweep[key]]
      axis.plot(
        sweep["gammas"], swept, color=colour, linestyle="--", label=f"{name}, {sweep_label}"
      )
  axis.axvline(chosen_gamma, color="grey", linestyle=":", label=f"chosen gamma {chosen_gamma:.2f}")
  axis.set_xlabel("calibration factor gamma")
  axis.set_ylabel("mIoU (%)")
  axis.set_title(title)
  # Beside the axes: six curves and the marker would hide the curves inside them.
  axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
  figure.tight_layout()
  paths.save_figure(path, figure)
  plt.close(figure)


def plot_fewshot(curves: dict, gflss_metric: str, path: str) -> None:
  """Two panels against n: FLSS unseen mIoU and GFLSS (`gflss_metric`), a line per method."""
  plt = _pyplot()
  # One legend for both panels (their methods and colours are the same), below them, where
  # it covers no line.
  figure, axes = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
  labels = {
    "flss": ("(a) FLSS", "unseen mIoU (%)"),
    "gflss": ("(b) GFLSS", f"{GFLSS_METRICS[gflss_metric]} (%)"),
  }
  for axis, (task, (title, ylabel)) in zip(axes, labels.items(), strict=True):
    for method, (ns, values) in curves[task].items():
      axis.plot(ns, [100 * _nan(v) for v in values], marker="o", label=method)
      axis.set_xticks(ns)
    axis.set_xlabel("n (labelled images per novel class)")
    axis.set_ylabel(ylabel)
    axis.set_ylim(bottom=0)
    axis.set_title(f"{title}, test split, median over seeds")
  handles, labels = axes[0].get_legend_handles_labels()
  figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
  paths.save_figure(path, figure)
  plt.close(figure)


def workdir_figures(workdir: str) -> list[str]:
  """Writes Figs. 3 and 4 of a run into its workdir; returns their paths."""
  # Every input is read and checked before anything is written.
  results = load_results(workdir)
  split = run_split(workdir, results)
  bars = per_class_bars(results)
  gammas = results["gamma_grid"]
  gzlss = load_gzlss_confusions(workdir, gammas)
  curve = calibration_curve(gzlss, gammas, split.train_classes, split.unseen)
  sweep, sweep_label = selection_sweep(workdir, results)

  where = f"{results['dataset']}, {results['test_split']} split, step {results['step']}"
  per_class = os.path.join(workdir, PER_CLASS_FIGURE)
  plot_per_class(bars, per_class, f"Unseen classes ordered by mean object size\n({where})")
  chosen = results["test"]["gzlss"]["calibrated"]["gamma"]
  all_task = results.get("tasks", ("ZLSS", "GZLSS"))[1]
  calibration = os.path.join(workdir, CALIBRATION_FIGURE)
  title = f"{all_task} against the calibration factor ({where})"
  plot_calibration(curve, chosen, sweep, sweep_label, calibration, title)
  return [per_class, calibration]


def suite_figure(root: str, gflss_metric: str = "miou") -> str:
  """Writes Fig. 5 of a results suite into its root; returns the path."""
  summary = paths.read_json(
    os.path.join(root, "suite.json"),
    f"run `python -m spnet_jax.tools.suite --workdir_root {root}` (add --report_only when every "
    "run already has its results).",
  )
  figure = os.path.join(root, FEWSHOT_FIGURE)
  plot_fewshot(fewshot_curves(summary, gflss_metric), gflss_metric, figure)
  return figure


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir and not FLAGS.suite_root:
    raise app.UsageError("Give --workdir (Figs. 3 and 4), --suite_root (Fig. 5) or both.")
  written = []
  if FLAGS.workdir:
    written += workdir_figures(FLAGS.workdir)
  if FLAGS.suite_root:
    written.append(suite_figure(FLAGS.suite_root, FLAGS.gflss_metric))
  for path in written:
    print(path, flush=True)


def define_flags() -> None:
  # Defined only when run as a program: spnet_jax.main owns --workdir in its own process, and
  # a module that imports both must not define it twice.
  flags.DEFINE_string("workdir", None, "A run's workdir: Figs. 3 and 4 are written into it.")
  flags.DEFINE_string("suite_root", None, "A results suite's root (suite.json): Fig. 5 there.")
  flags.DEFINE_enum("gflss_metric", "miou", list(GFLSS_METRICS), "What Fig. 5 plots for GFLSS.")


def run() -> None:
  """The `spnet-figures` command (also `python -m` of this module)."""
  cli.run(main, __doc__, define_flags)


if __name__ == "__main__":
  run()
