"""Every run behind the README's results table for the embedded benchmark, then the table.

  python -m spnet_jax.tools.suite --workdir_root workdirs/suite

Per seed (--seeds, default 0,1,2) it trains, in this order, each into <root>/seed<s>/<stage>:
  held_out        zero-label SPNet with the val classes held out: writes calibration.json
  spnet           zero-label SPNet; its calibrated GZLSS uses held_out's gamma
  hvsl            zero-label with the hinge loss (ZLSS baseline)
  learned         zero-label with a learned classifier (stage one of the few-label baseline)
  selftrain       self-training from spnet
  flss_spnet_n<n> few-label stage two from spnet, for each --shots n (default 1,2,5)
  flss_learned_n<n>  the same from learned
A stage whose results.json exists is skipped and an interrupted one resumes from its
checkpoint, so rerunning the command continues where it stopped. The tables (medians over
seeds) go to stdout, <root>/results.md and <root>/suite.json. `--set KEY=VALUE` (repeatable)
overrides a config field in every stage, e.g. `--set data.data_dir=/tmp/tfds`.
"""

import ast
import dataclasses
import os
from collections.abc import Callable, Sequence

import ml_collections
from absl import app, flags, logging

from spnet_jax import cli, experiment, paths
from spnet_jax.errors import UserError
from spnet_jax.tools import report

flags.DEFINE_string("workdir_root", None, "Folder that receives one workdir per run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; the table reports the median over them.")
flags.DEFINE_list("shots", ["1", "2", "5"], "Few-label pool sizes n.")
flags.DEFINE_multi_string("set", [], "KEY=VALUE config override applied to every stage.")
flags.DEFINE_bool("report_only", False, "Only build the tables from existing runs.")
flags.DEFINE_string(
  "configs_dir", "configs", "The repository's configs folder (the stages' shapes_*.py configs)."
)
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Stage:
  """One run of the suite: its base config, and how it is wired to the runs before it."""

  name: str
  base: Callable[[], ml_collections.ConfigDict]
  wire: Callable[[ml_collections.ConfigDict, str], None]  # (config, seed folder) -> None


def _zero_label(**fields) -> Callable[[ml_collections.ConfigDict, str], None]:
  def wire(config, seed_dir):
    del seed_dir
    config.update_from_flattened_dict(fields)

  return wire


def _final_spnet(config, seed_dir):
  config.eval.gamma_file = os.path.join(seed_dir, "held_out", "calibration.json")


def _continue_from(stage: str, **fields) -> Callable[[ml_collections.ConfigDict, str], None]:
  def wire(config, seed_dir):
    config.update_from_flattened_dict(fields)
    start = os.path.join(seed_dir, stage)
    if config.fewshot.n:
      config.fewshot.init_workdir = start
    else:
      config.selftrain.init_workdir = start

  return wire


def _config(name: str) -> Callable[[], ml_collections.ConfigDict]:
  """get_config of configs/<name>.py, read when a stage runs (--configs_dir)."""
  configs_dir = FLAGS.configs_dir if FLAGS.is_parsed() else "configs"
  return lambda: cli.import_config_module(configs_dir, name).get_config()


def stages(shots: Sequence[int]) -> list[Stage]:
  """The suite's runs in dependency order."""
  result = [
    Stage("held_out", _config("shapes_zlss"), _zero_label(**{"data.hold_out_val_classes": True})),
    Stage("spnet", _config("shapes_zlss"), _final_spnet),
    Stage("hvsl", _config("shapes_zlss"), _zero_label(**{"loss.name": "hvsl"})),
    Stage("learned", _config("shapes_zlss"), _zero_label(**{"model.classifier": "learned"})),
    Stage("selftrain", _config("shapes_selftrain"), _continue_from("spnet")),
  ]
  for n in shots:
    for head in ("spnet", "learned"):
      classifier = "projection" if head == "spnet" else "learned"
      fields = {"fewshot.n": n, "model.classifier": classifier}
      result.append(
        Stage(f"flss_{head}_n{n}", _config("shapes_flss"), _continue_from(head, **fields))
      )
  return result


def parse_overrides(items: Sequence[str]) -> dict:
  """'a.b=1' -> {'a.b': 1}; values are Python literals where they parse, strings otherwise."""
  overrides = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise app.UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. train.num_steps=100.")
    try:
      overrides[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key] = text
  return overrides


def stage_config(
  stage: Stage, seed: int, seed_dir: str, overrides: dict
) -> ml_collections.ConfigDict:
  """The stage's config: its base, the user's overrides, then the seed and the wiring."""
  config = stage.base()
  config.lock()  # An unknown key is an error, not a new field.
  try:
    config.update_from_flattened_dict(overrides)
  except (KeyError, TypeError) as error:
    raise app.UsageError(f"--set in stage {stage.name!r}: {error}") from error
  config.seed = seed
  stage.wire(config, seed_dir)
  return config


def run_suite(root: str, seeds: Sequence[int], shots: Sequence[int], overrides: dict) -> None:
  """Trains and evaluates every stage of every seed that has no results.json yet."""
  for seed in seeds:
    seed_dir = os.path.join(root, f"seed{seed}")
    for stage in stages(shots):
      workdir = os.path.join(seed_dir, stage.name)
      if paths.exists(os.path.join(workdir, "results.json")):
        logging.info("Suite: %s has results, skipped.", workdir)
        continue
      logging.info("Suite: seed %d, stage %s -> %s", seed, stage.name, workdir)
      print(f"=== seed {seed}: {stage.name} ({workdir})", flush=True)
      config = stage_config(stage, seed, seed_dir, overrides)
      results = experiment.train_and_evaluate(config, workdir)
      if "preempted_at_step" in results:
        raise SystemExit(f"Preempted during {workdir}: rerun the same command to continue.")


def _integers(flag: str, values: Sequence[str]) -> list[int]:
  try:
    return [int(value) for value in values]
  except ValueError:
    raise UserError(
      f"--{flag}={','.join(values)}: expected integers separated by commas, e.g. 0,1,2."
    ) from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir_root:
    raise app.UsageError("--workdir_root is required.")
  seeds = _integers("seeds", FLAGS.seeds)
  shots = _integers("shots", FLAGS.shots)
  if not FLAGS.report_only:
    run_suite(FLAGS.workdir_root, seeds, shots, parse_overrides(FLAGS.set))
  summary = report.suite_summary(FLAGS.workdir_root, seeds, shots)
  text = report.write_suite_report(FLAGS.workdir_root, summary)
  print(text)


def run() -> None:
  """The `spnet-suite` command (also `python -m` of this module)."""
  cli.run(main, __doc__)


if __name__ == "__main__":
  run()
