"""Calibration factor files: the gamma sweep of a held-out-classes run, written and read back.

A run with config.data.hold_out_val_classes=True trains on the seen classes only and treats the
val classes as unseen; its sweep of S / U / H over gamma (on the calibration split) is the
paper's way to choose gamma without touching the test classes. The final run reads the chosen
gamma with config.eval.gamma_file.
"""

import os

import numpy as np

from spnet_jax import paths
from spnet_jax.errors import UserError

CALIBRATION_FILE = "calibration.json"
CALIBRATION_PLOT = "calibration.png"


def write_sweep(workdir: str, sweep: dict, held_out: list[str], step: int) -> str:
  """Writes calibration.json and a plot of S / U / H against gamma; returns the json path."""
  record = {**sweep, "held_out_classes": held_out, "step": step}
  path = os.path.join(workdir, CALIBRATION_FILE)
  paths.write_json(path, record)
  plot_sweep(record, os.path.join(workdir, CALIBRATION_PLOT))
  return path


def plot_sweep(record: dict, path: str) -> None:
  """S (seen), U (held-out) and H mIoU against gamma, the chosen gamma marked (headless)."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  gammas = record["gammas"]
  figure, axis = plt.subplots(figsize=(5, 3.5))
  for key, label in (("seen_miou", "S (seen)"), ("unseen_miou", "U (held out)"), ("harmonic", "H")):
    values = [np.nan if v is None else 100 * v for v in record[key]]
    axis.plot(gammas, values, marker="o", markersize=3, label=label)
  axis.axvline(record["best_gamma"], color="grey", linestyle="--", linewidth=1)
  axis.set_xlabel("calibration factor gamma")
  axis.set_ylabel("mIoU (%)")
  axis.set_title(f"Calibration sweep, best gamma {record['best_gamma']:.2f}")
  axis.legend()
  figure.tight_layout()
  paths.save_figure(path, figure)
  plt.close(figure)


def read_gamma(path: str) -> tuple[float, str]:
  """The best gamma of a calibration.json, and a sentence saying where it came from."""
  record = paths.read_json(
    path,
    "run the calibration of config.eval.gamma_file first with "
    "--config.data.hold_out_val_classes=True (it writes calibration.json in its workdir).",
  )
  if "best_gamma" not in record or "held_out_classes" not in record:
    raise UserError(f"{path} is not a calibration.json written by a held-out-classes run.")
  classes = ", ".join(record["held_out_classes"])
  return float(record["best_gamma"]), f"best H with the val classes held out ({classes}), {path}"


GRIDS = ("log", "linear")  # Kinds of calibration sweep (gamma_grid).


def gamma_grid(
  kind: str, step: float, maximum: float, minimum: float = 1e-4, points: int = 41
) -> list[float]:
  """The calibration factors swept.

  Args:
    kind: 'linear' (0, step, 2 step, ..., maximum) or 'log' (0, then `points` values spaced
      evenly in log between `minimum` and `maximum`). A softmax over hundreds of classes that
      is not confident puts every probability below 0.05, where a linear 0.05 grid jumps from
      'no change' to 'never predict a seen class'; the log grid covers those scales too.
    step: linear grid step.
    maximum: the largest gamma.
    minimum: log grid: the smallest gamma above 0.
    points: log grid: number of values above 0.

  Returns:
    The sorted gammas, rounded (0.35 rather than 0.35000000000000003).
  """
  if kind == "linear":
    count = int(np.floor(maximum / step + 1e-9))
    return [round(i * step, 6) for i in range(count + 1)]
  if kind == "log":
    return [0.0, *(float(f"{g:.4g}") for g in np.geomspace(minimum, maximum, points))]
  raise UserError(f"Unknown gamma grid {kind!r}; valid: {list(GRIDS)}.")
