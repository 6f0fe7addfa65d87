"""The results suite: stage wiring, resuming, overrides, and the tables and findings it reports."""

import json
import os

import pytest
from absl import app

from spnet_jax.tools import report, suite


def _scores(seen, unseen, harmonic, gamma=0.0):
  return {
    "seen_miou": seen,
    "unseen_miou": unseen,
    "harmonic": harmonic,
    "miou": 0.5,
    "gamma": gamma,
  }


def _write_results(workdir, zlss, uncalibrated, calibrated=None, on_images=None):
  os.makedirs(workdir, exist_ok=True)
  test = {
    "zlss": {"unseen_miou": zlss},
    "gzlss": {"uncalibrated": uncalibrated, "calibrated": calibrated or uncalibrated},
  }
  if on_images:
    test["gzlss"]["calibrated_on_validation_images"] = on_images
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"test": test}, f)


def _fake_train_and_evaluate(calls):
  """Stands in for experiment.train_and_evaluate: records the config, writes results.json."""

  def fake(config, workdir):
    calls.append((os.path.basename(workdir), config))
    _write_results(workdir, 0.5, _scores(0.8, 0.4, 0.53))
    return {}

  return fake


def test_stages_are_wired_to_the_runs_they_continue(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(suite.experiment, "train_and_evaluate", _fake_train_and_evaluate(calls))
  suite.run_suite(str(tmp_path), seeds=[3], shots=[1, 5], overrides={"train.num_steps": 7})
  names = [name for name, _ in calls]
  assert names == [
    "held_out",
    "spnet",
    "hvsl",
    "learned",
    "selftrain",
    "flss_spnet_n1",
    "flss_learned_n1",
    "flss_spnet_n5",
    "flss_learned_n5",
  ]
  configs = dict(calls)
  seed_dir = str(tmp_path / "seed3")
  assert all(c.seed == 3 and c.train.num_steps == 7 for c in configs.values())
  assert configs["held_out"].data.hold_out_val_classes
  assert not configs["spnet"].data.hold_out_val_classes
  assert configs["spnet"].eval.gamma_file == os.path.join(seed_dir, "held_out", "calibration.json")
  assert configs["hvsl"].loss.name == "hvsl"
  assert configs["learned"].model.classifier == "learned"
  assert configs["selftrain"].selftrain.fraction > 0
  assert configs["selftrain"].selftrain.init_workdir == os.path.join(seed_dir, "spnet")
  learned = configs["flss_learned_n5"]
  assert (learned.fewshot.n, learned.model.classifier) == (5, "learned")
  assert learned.fewshot.init_workdir == os.path.join(seed_dir, "learned")
  ours = configs["flss_spnet_n1"]
  assert (ours.fewshot.n, ours.model.classifier) == (1, "projection")
  assert ours.fewshot.init_workdir == os.path.join(seed_dir, "spnet")


def test_rerun_skips_stages_that_have_results(tmp_path, monkeypatch):
  _write_results(str(tmp_path / "seed0" / "held_out"), 0.5, _scores(0.8, 0.4, 0.53))
  calls = []
  monkeypatch.setattr(suite.experiment, "train_and_evaluate", _fake_train_and_evaluate(calls))
  suite.run_suite(str(tmp_path), seeds=[0], shots=[1], overrides={})
  assert "held_out" not in [name for name, _ in calls] and len(calls) == 6
  calls.clear()
  suite.run_suite(str(tmp_path), seeds=[0], shots=[1], overrides={})
  assert calls == []


def test_overrides_parse_literals_and_reject_unknown_fields():
  assert suite.parse_overrides(
    ["train.num_steps=10", "model.dilations=(1,2)", "data.name=shapes"]
  ) == {
    "train.num_steps": 10,
    "model.dilations": (1, 2),
    "data.name": "shapes",
  }
  with pytest.raises(app.UsageError, match="KEY=VALUE"):
    suite.parse_overrides(["train.num_steps"])
  stage = suite.stages([1])[0]
  with pytest.raises(app.UsageError, match="num_stepz"):
    suite.stage_config(stage, 0, "/tmp/x", {"train.num_stepz": 3})
  with pytest.raises(app.UsageError, match="held_out"):
    suite.stage_config(stage, 0, "/tmp/x", {"train.num_steps": "many"})


def _write_suite(root, seeds, good=True):
  """Fake suite results where every finding of the paper holds (good) or the first one fails."""
  for seed in seeds:
    d = os.path.join(root, f"seed{seed}")
    shift = 0.01 * seed
    _write_results(
      os.path.join(d, "spnet"),
      0.9 + shift,
      _scores(0.9, 0.6, 0.72),
      _scores(0.88, 0.7, 0.78, gamma=0.4),
      _scores(0.89, 0.68, 0.77, gamma=0.45),
    )
    _write_results(os.path.join(d, "hvsl"), 0.8 if good else 0.95, _scores(0.9, 0.3, 0.45))
    _write_results(os.path.join(d, "selftrain"), 0.95, _scores(0.92, 0.8, 0.86))
    _write_results(os.path.join(d, "flss_spnet_n1"), 0.7, _scores(0.9, 0.5, 0.64))
    _write_results(os.path.join(d, "flss_learned_n1"), 0.2, _scores(0.9, 0.1, 0.18))


def test_suite_tables_report_medians_and_findings(tmp_path):
  root = str(tmp_path)
  _write_suite(root, [0, 1, 2])
  summary = report.suite_summary(root, [0, 1, 2], [1])
  spnet = summary["zero_label"][1]
  assert spnet["per_seed"]["zlss_unseen_miou"] == pytest.approx([0.9, 0.91, 0.92])
  assert spnet["median"]["zlss_unseen_miou"] == pytest.approx(0.91)
  assert summary["zero_label"][2]["median"]["zlss_unseen_miou"] is None
  assert summary["zero_label"][2]["median"]["gamma"] == pytest.approx(0.45)
  assert all(check["holds"] for check in summary["checks"]), summary["checks"]
  text = report.write_suite_report(root, summary)
  assert "| SPNet | 91.0 | 90.0 | 60.0 | 72.0 | 0.00 |" in text
  assert (
    "| SPNet + calibration (gamma from held-out classes) | – | 88.0 | 70.0 | 78.0 | 0.40 |" in text
  )
  assert (
    "| SPNet + calibration (gamma on validation images) | – | 89.0 | 68.0 | 77.0 | 0.45 |" in text
  )
  assert "| 1 | SPNet | 70.0 | 90.0 | 50.0 | 64.0 | 50.0 |" in text
  assert "DOES NOT HOLD" not in text
  with open(tmp_path / "suite.json") as f:
    assert json.load(f)["seeds"] == [0, 1, 2]
  assert (tmp_path / "results.md").read_text().strip() == text


def test_a_finding_that_fails_is_flagged(tmp_path):
  _write_suite(str(tmp_path), [0], good=False)
  summary = report.suite_summary(str(tmp_path), [0], [1])
  assert [c["finding"] for c in summary["checks"] if not c["holds"]] == ["SPNet beats HVSL on ZLSS"]
  assert "SPNet beats HVSL on ZLSS: DOES NOT HOLD (90.0 vs 95.0)" in report.suite_markdown(summary)


def test_missing_stage_names_the_file_and_the_command(tmp_path):
  _write_suite(str(tmp_path), [0])
  missing = r"seed1.*results\.json does not exist.*spnet_jax\.tools\.suite"
  with pytest.raises(ValueError, match=missing):
    report.suite_summary(str(tmp_path), [0, 1], [1])
