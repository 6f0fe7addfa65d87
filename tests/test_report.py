"""The multi-run summary table: values, medians, missing files."""

import json
import os

import pytest

from spnet_jax.tools import report


def _write(workdir, zlss, harmonic):
  os.makedirs(workdir)
  scores = {"seen_miou": 0.5, "unseen_miou": 0.25, "harmonic": harmonic, "miou": 0.4}
  results = {
    "test": {
      "zlss": {"unseen_miou": zlss},
      "gzlss": {"uncalibrated": {"gamma": 0.0, **scores}, "calibrated": {"gamma": 0.3, **scores}},
    }
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f)


def test_table_has_a_row_per_run_and_the_median(tmp_path):
  dirs = [str(tmp_path / f"seed{i}") for i in range(3)]
  for d, z in zip(dirs, (0.9, 0.5, 0.7), strict=True):
    _write(d, z, harmonic=z / 2)
  table = report.markdown_table(dirs).splitlines()
  assert len(table) == 2 + 3 + 1
  assert table[2].startswith("| seed0 | 90.0 | 50.0 | 25.0 | 45.0 | 0.30 |")
  assert table[-1].startswith("| **median** | 70.0 | 50.0 | 25.0 | 35.0 | 0.30 |")


def test_missing_results_file_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"results\.json does not exist"):
    report.markdown_table([str(tmp_path)])
