"""Starts a run from converted weights (config.model.init_checkpoint; spnet_jax/interop/convert.py).

The converted checkpoint records the input convention its weights expect and the architecture it
fits; both are checked against the config, because a wrong convention silently costs accuracy.
"""

import flax
import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from spnet_jax.errors import UserError


def expected_fields(metadata: dict) -> dict[str, object]:
  """Config fields (as 'section.name') whose values the converted weights require."""
  from spnet_jax.interop import convert  # Reading metadata needs no torch.

  expected: dict[str, object] = {
    "data.image_mode": metadata.get("image_mode"),
    "model.backbone": metadata.get("arch"),
    "model.stride_in_3x3": bool(metadata.get("stride_in_3x3", False)),
  }
  if metadata.get("arch") in ("resnet101", "vgg16"):
    overrides = convert.model_config_for(metadata)
    fresh = metadata.get("initialised_fresh", [])
    if not any(name.startswith("params/embedding_head") for name in fresh):
      # The head's weights are part of the checkpoint: its layout must match too.
      expected["model.embedding_head"] = overrides["embedding_head"]
      expected["model.aspp_rates"] = tuple(overrides["aspp_rates"])
    for key in ("classifier", "learned_head_width"):
      if key in overrides:
        expected[f"model.{key}"] = overrides[key]
  elif metadata.get("classifier"):
    expected["model.classifier"] = metadata["classifier"]
  return {field: value for field, value in expected.items() if value is not None}


def check_compatible(metadata: dict, config: ml_collections.ConfigDict, path: str) -> None:
  """Raises UserError when the converted weights do not fit config.model / config.data."""
  for field, theirs in expected_fields(metadata).items():
    section, name = field.split(".")
    ours = config[section][name]
    ours = tuple(ours) if isinstance(ours, list | tuple) else ours
    if theirs != ours:
      raise UserError(
        f"{path} was converted for {field}={theirs!r} but the config has config.{field}="
        f"{ours!r}. Set --config.{field}={theirs!r} (the weights were trained with that "
        "convention and architecture)."
      )


def merge_variables(target: dict, source: dict, path: str) -> tuple[dict, list[str]]:
  """Overwrites the leaves of `target` that `source` provides.

  Args:
    target: {'params': ..., 'batch_stats': ...} of a freshly initialised model.
    source: converted variables with the same structure (a subset of the leaves).
    path: the converted checkpoint, for error messages.

  Returns:
    The merged variables and the names of target leaves that stay freshly initialised.

  Raises:
    UserError: `source` has leaves the model lacks, or a leaf of another shape.
  """
  flat_target = flax.traverse_util.flatten_dict(target, sep="/")
  flat_source = flax.traverse_util.flatten_dict(source, sep="/")
  unknown = sorted(set(flat_source) - set(flat_target))
  if unknown:
    raise UserError(f"{path} has variables the model lacks: {unknown}.")
  mismatched = [
    f"{name}: checkpoint {tuple(np.shape(value))} vs model {tuple(flat_target[name].shape)}"
    for name, value in flat_source.items()
    if tuple(np.shape(value)) != tuple(flat_target[name].shape)
  ]
  if mismatched:
    raise UserError(f"{path} does not fit the model: {mismatched}.")
  fresh = sorted(set(flat_target) - set(flat_source))
  merged = {
    name: np.asarray(flat_source[name], flat_target[name].dtype) if name in flat_source else leaf
    for name, leaf in flat_target.items()
  }
  return flax.traverse_util.unflatten_dict(merged, sep="/"), fresh


def load_into_state(state, config: ml_collections.ConfigDict, tx: optax.GradientTransformation):
  """Returns `state` with the weights of config.model.init_checkpoint and a fresh optimiser."""
  from spnet_jax.interop import convert  # Reading converted weights needs no torch.

  path = config.model.init_checkpoint
  variables, metadata = convert.load_converted(path)
  check_compatible(metadata, config, path)
  target = {"params": state.params, "batch_stats": state.frozen}
  target = jax.tree.map(np.asarray, target)
  source = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  merged, fresh = merge_variables(target, source, path)
  if fresh:
    logging.info("Initialised fresh (not in %s): %s", path, ", ".join(fresh))
  logging.info(
    "Loaded %s (%s weights, input convention %s).",
    path,
    metadata.get("source_format"),
    metadata.get("image_mode"),
  )
  sharding = jax.tree.leaves(state.params)[0].sharding
  params = jax.device_put(merged["params"], sharding)
  frozen = jax.device_put(merged.get("batch_stats", {}), sharding)
  return state.replace(params=params, frozen=frozen, opt_state=jax.jit(tx.init)(params))
