"""Optimiser: SGD or Adam with DeepLab's per-group learning rates and coupled weight decay."""

import flax
import jax
import jax.numpy as jnp
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
  """Base learning-rate schedule of config.optimizer.

  Args:
    config: config.optimizer. Its `schedule_steps` (the horizon the schedule decays over) defaults
      to `num_steps` when 0, and `schedule_update_every` holds the rate for that many steps.
    num_steps: the updates the run makes.

  Returns:
    step -> base learning rate.
  """
  cfg = config
  horizon = cfg.get("schedule_steps", 0) or num_steps
  every = cfg.get("schedule_update_every", 1) or 1
  schedule = _base_schedule(cfg, horizon)
  if every == 1:
    return schedule
  # SPNet's poly_lr_scheduler sets the rate only at steps that are multiples of 10.
  return lambda step: schedule(step // every * every)


def poly_rate(step, base_lr: float, horizon: int, power: float) -> jax.Array:
  """DeepLab's poly: base * (1 - step / horizon) ** power, 0 from the horizon on.

  The remaining steps are counted in integers first: 1 - step / horizon in float32 loses five
  digits near the end of a 100k-step schedule; (horizon - step) / horizon keeps them.
  """
  remaining = jnp.clip(horizon - jnp.asarray(step, jnp.int32), 0, horizon)
  return base_lr * (remaining.astype(jnp.float32) / horizon) ** power


def _base_schedule(cfg: ml_collections.ConfigDict, horizon: int) -> optax.Schedule:
  if cfg.schedule == "poly":
    return lambda step: poly_rate(step, cfg.base_lr, horizon, cfg.poly_power)
  if cfg.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0,
      cfg.base_lr,
      max(cfg.warmup_steps, 1),
      max(horizon, cfg.warmup_steps + 1),
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


def restart_schedule(opt_state):
  """The optimiser state with every learning-rate schedule back at step 0, momentum kept.

  SPNet's few-label stage loads the zero-label run's optimiser (its momentum buffers) and starts
  its own poly schedule from step 0.
  """
  is_schedule = lambda node: isinstance(node, optax.ScaleByScheduleState)
  return jax.tree.map(
    lambda node: (
      node._replace(count=jax.numpy.zeros_like(node.count)) if is_schedule(node) else node
    ),
    opt_state,
    is_leaf=is_schedule,
  )
