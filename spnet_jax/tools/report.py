"""Summarises results.json files as Markdown tables with medians over seeds.

python -m spnet_jax.tools.report workdirs/seed0 workdirs/seed1 workdirs/seed2
The tables of the whole results suite (spnet_jax.tools.suite) come from `suite_summary`.
"""

import os

import numpy as np

from spnet_jax import cli, paths
from spnet_jax.errors import UserError

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
  test = paths.read_json(
    os.path.join(workdir, "results.json"), "run the experiment (or its evaluation) first."
  )["test"]
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
  """argv: the workdirs (cli.run_without_flags answers --help and takes out --verbose)."""
  if not argv:
    raise UserError(
      "Name the run folders to summarise, e.g. `python -m spnet_jax.tools.report "
      "workdirs/seed0 workdirs/seed1` (--help: usage)."
    )
  options = [arg for arg in argv if arg.startswith("-")]
  if options:
    raise UserError(f"Unknown flags {options}: the arguments are run folders (--help: usage).")
  print(markdown_table(argv))


# The results suite (spnet_jax.tools.suite): one workdir per seed and stage under a root folder.
ZERO_LABEL_ROWS = (
  # (method, stage, GZLSS key, show the stage's ZLSS)
  ("HVSL (hinge loss baseline)", "hvsl", "uncalibrated", True),
  ("SPNet", "spnet", "uncalibrated", True),
  (
    "SPNet + calibration (gamma on validation images)",
    "spnet",
    "calibrated_on_validation_images",
    False,
  ),
  ("SPNet + calibration (gamma from held-out classes)", "spnet", "calibrated", False),
  ("SPNet + self-training", "selftrain", "uncalibrated", True),
)
FEW_LABEL_METHODS = (("learned head (DeepLab baseline)", "learned"), ("SPNet", "spnet"))
GENERALIZED = ("seen_miou", "unseen_miou", "harmonic", "miou", "gamma")


def _load_test(path: str) -> dict:
  missing = (
    "run `python -m spnet_jax.tools.suite` with the same --workdir_root (it continues where it "
    "stopped)."
  )
  return paths.read_json(path, missing)["test"]


def _suite_row(root, seeds, stage, gzlss_key, with_zlss) -> dict:
  """Per-seed values and their median for one table row."""
  per_seed = {name: [] for name in ("zlss_unseen_miou", *GENERALIZED)}
  for seed in seeds:
    test = _load_test(os.path.join(root, f"seed{seed}", stage, "results.json"))
    zlss = test["zlss"]["unseen_miou"] if with_zlss else None
    per_seed["zlss_unseen_miou"].append(zlss)
    for name in GENERALIZED:
      per_seed[name].append(test["gzlss"][gzlss_key][name])
  median = {
    name: None if any(v is None for v in values) else float(np.median(values))
    for name, values in per_seed.items()
  }
  return {"stage": stage, "gzlss": gzlss_key, "per_seed": per_seed, "median": median}


def suite_summary(root: str, seeds: list[int], shots: list[int]) -> dict:
  """The suite's numbers (per seed and median) and whether the paper's findings hold."""
  zero_label = [
    {"method": method, **_suite_row(root, seeds, stage, key, with_zlss)}
    for method, stage, key, with_zlss in ZERO_LABEL_ROWS
  ]
  few_label = [
    {"n": n, "method": method, **_suite_row(root, seeds, f"flss_{head}_n{n}", "uncalibrated", True)}
    for n in shots
    for method, head in FEW_LABEL_METHODS
  ]
  summary = {"seeds": list(seeds), "zero_label": zero_label, "few_label": few_label}
  summary["checks"] = expected_findings(summary)
  return summary


def expected_findings(summary: dict) -> list[dict]:
  """The paper's qualitative findings, checked on the medians."""
  hvsl, spnet, on_images, held_out, selftrain = (row["median"] for row in summary["zero_label"])
  checks = [
    ("SPNet beats HVSL on ZLSS", spnet["zlss_unseen_miou"], hvsl["zlss_unseen_miou"]),
    ("SPNet beats HVSL on GZLSS H", spnet["harmonic"], hvsl["harmonic"]),
    (
      "calibration (gamma on validation images) raises GZLSS H",
      on_images["harmonic"],
      spnet["harmonic"],
    ),
    (
      "calibration (gamma from held-out classes) raises GZLSS H",
      held_out["harmonic"],
      spnet["harmonic"],
    ),
    ("self-training raises GZLSS unseen mIoU", selftrain["unseen_miou"], spnet["unseen_miou"]),
    ("self-training raises GZLSS H", selftrain["harmonic"], spnet["harmonic"]),
  ]
  by_key = {(row["n"], row["stage"].split("_")[1]): row["median"] for row in summary["few_label"]}
  smallest = min(row["n"] for row in summary["few_label"]) if summary["few_label"] else None
  if smallest is not None:
    ours, baseline = by_key[(smallest, "spnet")], by_key[(smallest, "learned")]
    checks += [
      (
        f"SPNet beats the learned head on FLSS at n={smallest}",
        ours["zlss_unseen_miou"],
        baseline["zlss_unseen_miou"],
      ),
      (
        f"SPNet beats the learned head on GFLSS H at n={smallest}",
        ours["harmonic"],
        baseline["harmonic"],
      ),
    ]
  return [
    {"finding": text, "ours": a, "other": b, "holds": a is not None and b is not None and a > b}
    for text, a, b in checks
  ]


def _cell(value) -> str:
  return "–" if value is None else f"{100 * value:.1f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def suite_markdown(summary: dict) -> str:
  """The two README tables (medians) and the list of checked findings."""
  seeds = ", ".join(str(s) for s in summary["seeds"])
  scores = ("seen_miou", "unseen_miou", "harmonic")
  zero_label = [
    [row["method"], _cell(row["median"]["zlss_unseen_miou"])]
    + [_cell(row["median"][k]) for k in scores]
    + [f"{row['median']['gamma']:.2f}"]
    for row in summary["zero_label"]
  ]
  few_label = [
    [str(row["n"]), row["method"]]
    + [_cell(row["median"][k]) for k in ("zlss_unseen_miou", *scores, "miou")]
    for row in summary["few_label"]
  ]
  lines = [f"Zero-label (test split, median over seeds {seeds}; IoUs in percent):", ""]
  lines += _markdown_table(
    ["method", "ZLSS unseen", "GZLSS seen", "GZLSS unseen", "GZLSS H", "gamma"], zero_label
  )
  lines += [
    "",
    f"Few-label, n labelled images per class (test split, median over seeds {seeds}):",
    "",
  ]
  lines += _markdown_table(
    ["n", "method", "FLSS unseen", "GFLSS seen", "GFLSS unseen", "GFLSS H", "GFLSS mIoU"],
    few_label,
  )
  lines += ["", "Findings of the paper, checked on the medians:", ""]
  for check in summary["checks"]:
    mark = "holds" if check["holds"] else "DOES NOT HOLD"
    lines.append(
      f"- {check['finding']}: {mark} ({_cell(check['ours'])} vs {_cell(check['other'])})"
    )
  return "\n".join(lines)


def write_suite_report(root: str, summary: dict) -> str:
  """Writes <root>/suite.json and <root>/results.md; returns the Markdown."""
  text = suite_markdown(summary)
  paths.write_json(os.path.join(root, "suite.json"), summary)
  paths.write_text(os.path.join(root, "results.md"), text + "\n")
  return text


def run() -> None:
  """The `spnet-report` command (also `python -m` of this module)."""
  cli.run_without_flags(main, __doc__)


if __name__ == "__main__":
  run()
