"""Summarises the results.json of several runs (e.g. seeds) as a Markdown table with medians.

python -m spnet_jax.report workdirs/seed0 workdirs/seed1 workdirs/seed2
"""

import json
import os
import sys

import numpy as np

COLUMNS = (
  ("ZLSS unseen", ("zlss", "unseen_miou")),
  ("GZLSS seen", ("gzlss", "uncalibrated", "seen_miou")),
  ("GZLSS unseen", ("gzlss", "uncalibrated", "unseen_miou")),
  ("GZLSS H", ("gzlss", "uncalibrated", "harmonic")),
  ("gamma", ("gzlss", "calibrated", "gamma")),
  ("calibrated seen", ("gzlss", "calibrated", "seen_miou")),
  ("calibrated unseen", ("gzlss", "calibrated", "unseen_miou")),
  ("calibrated H", ("gzlss", "calibrated", "harmonic")),
)


def load_row(workdir: str) -> list[float]:
  """The table's numbers for one run (NaN where a value is null)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: run the experiment (or its evaluation) first.")
  with open(path) as f:
    test = json.load(f)["test"]
  row = []
  for _, keys in COLUMNS:
    value = test
    for key in keys:
      value = value[key]
    row.append(float("nan") if value is None else float(value))
  return row


def markdown_table(workdirs: list[str]) -> str:
  """One row per run and a median row; IoUs in percent, gamma as is."""
  rows = [load_row(w) for w in workdirs]
  header = "| run | " + " | ".join(name for name, _ in COLUMNS) + " |"
  lines = [header, "|" + " --- |" * (len(COLUMNS) + 1)]

  def cells(values):
    return " | ".join(
      f"{v:.2f}" if name == "gamma" else f"{100 * v:.1f}"
      for (name, _), v in zip(COLUMNS, values, strict=True)
    )

  for workdir, row in zip(workdirs, rows, strict=True):
    lines.append(f"| {os.path.basename(os.path.normpath(workdir))} | {cells(row)} |")
  if len(rows) > 1:
    lines.append(f"| **median** | {cells(np.median(np.array(rows), axis=0))} |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if not argv:
    raise SystemExit(__doc__)
  print(markdown_table(argv))


if __name__ == "__main__":
  main(sys.argv[1:])
