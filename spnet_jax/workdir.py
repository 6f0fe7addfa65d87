"""A run's folder: its config.json, results.json and metric writer.

The run plumbing that segmentation runs (experiment.py) and zero-shot classification runs
(zsl/experiment.py) share.
"""

import json
import os

import jax
import ml_collections
import numpy as np
from clu import metric_writers

CONFIG_FILE = "config.json"  # The run's config: what predict and figures rebuild the run from.
RESULTS_FILE = "results.json"


def json_safe(value):
  """For strict JSON: NaN (an absent class) becomes null, numpy scalars plain numbers."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [json_safe(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and np.isnan(value):
    return None
  return value


def write_json(path: str, value) -> None:
  """Writes `value` (json_safe) to `path`, indented."""
  with open(path, "w") as f:
    json.dump(json_safe(value), f, indent=2)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config to `workdir`/config.json (process 0 only)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its config.json; JSON lists become tuples)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(
      f"{path} does not exist: {workdir} is not a training workdir (runs write their config "
      "there when they start), or it was made by an older version: pass --config with the "
      "experiment config it was trained with."
    )
  with open(path) as f:
    fields = json.load(f)

  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    return value

  return ml_collections.ConfigDict(tuples(fields))


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard summaries in `workdir` on process 0; logging only on the others."""
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
