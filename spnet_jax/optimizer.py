"""Optimiser: SGD or Adam with DeepLab's per-group learning rates and coupled weight decay."""

import flax
import jax
import ml_collections
import optax

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("poly", "warmup_cosine", "constant")
# Parameter groups. DeepLab-v2 trains the backbone at the base rate and the head (ASPP / classifier)
# at 10x (weights) and 20x (biases); biases get no weight decay.
GROUPS = ("backbone_kernel", "backbone_bias", "head_kernel", "head_bias")


def param_group(path: tuple[str, ...]) -> str:
  """Group of a parameter from its path in the params tree ('backbone/.../kernel' etc.)."""
  part = "backbone" if path[0] == "backbone" else "head"
  kind = "bias" if path[-1] == "bias" else "kernel"
  return f"{part}_{kind}"


def param_groups(params) -> dict:
  """The params tree with each leaf replaced by its group name."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  return flax.traverse_util.unflatten_dict({k: param_group(k) for k in flat})


def create_learning_rate_schedule(
  config: ml_collections.ConfigDict, num_steps: int
) -> optax.Schedule:
  """Base learning-rate schedule of config.optimizer over `num_steps` updates."""
  cfg = config
  if cfg.schedule == "poly":
    # DeepLab's poly: base * (1 - step / max_steps) ** power.
    return optax.polynomial_schedule(cfg.base_lr, 0.0, cfg.poly_power, num_steps)
  if cfg.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0,
      cfg.base_lr,
      max(cfg.warmup_steps, 1),
      max(num_steps, cfg.warmup_steps + 1),
      end_value=cfg.base_lr * cfg.final_lr_fraction,
    )
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.base_lr)
  raise ValueError(f"Unknown config.optimizer.schedule {cfg.schedule!r}; valid: {SCHEDULES}.")


def _group_transform(
  cfg: ml_collections.ConfigDict, schedule: optax.Schedule, multiplier: float, decay: bool
) -> optax.GradientTransformation:
  parts = []
  if decay and cfg.weight_decay > 0:
    # Coupled decay (added to the gradient before momentum), as PyTorch's SGD/Adam do.
    parts.append(optax.add_decayed_weights(cfg.weight_decay))
  if cfg.name == "sgd":
    parts.append(optax.trace(decay=cfg.momentum))
  elif cfg.name == "adam":
    parts.append(optax.scale_by_adam(b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps))
  else:
    raise ValueError(f"Unknown config.optimizer.name {cfg.name!r}; valid: {OPTIMIZERS}.")
  parts.append(optax.scale_by_learning_rate(lambda step: schedule(step) * multiplier))
  return optax.chain(*parts)


def create_optimizer(
  config: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
  """The optimiser of config.optimizer (per-group learning rates and weight decay).

  Args:
    config: config.optimizer.
    num_steps: number of updates the schedule spans.

  Returns:
    An optax transformation over the params tree of a SegmentationNet.
  """
  schedule = create_learning_rate_schedule(config, num_steps)
  multipliers = config.lr_multipliers
  transforms = {
    group: _group_transform(
      config, schedule, multipliers[group], decay=group.endswith("kernel") or config.decay_biases
    )
    for group in GROUPS
  }
  tx = optax.multi_transform(transforms, param_groups)
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx


def current_learning_rate(
  config: ml_collections.ConfigDict, num_steps: int, step: int | jax.Array
) -> jax.Array:
  """Base learning rate at `step` (for logging)."""
  return create_learning_rate_schedule(config, num_steps)(step)
