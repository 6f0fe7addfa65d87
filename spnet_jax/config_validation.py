"""Checks a run config before anything is built, naming the field and value that is wrong."""

import ml_collections

from spnet_jax import paths
from spnet_jax.data import pipeline
from spnet_jax.errors import UserError
from spnet_jax.models.conv_policy import ATROUS_CONVS, KERNEL_GRADS
from spnet_jax.models.registry import BACKBONES, CLASSIFIERS, DTYPES, EMBEDDING_HEADS
from spnet_jax.train import losses, optimizer

_CHOICES = {
  "mode": ("train_and_evaluate", "evaluate"),
  "data.image_mode": pipeline.IMAGE_MODES,
  "model.backbone": BACKBONES,
  "model.classifier": CLASSIFIERS,
  "model.embedding_head": EMBEDDING_HEADS,
  "model.dtype": tuple(DTYPES),
  "model.atrous_conv": ATROUS_CONVS,
  "model.conv_kernel_grad": KERNEL_GRADS,
  "loss.name": losses.LOSSES,
  "loss.label_resolution": losses.LABEL_RESOLUTIONS,
  "optimizer.name": optimizer.OPTIMIZERS,
  "optimizer.schedule": optimizer.SCHEDULES,
  "fewshot.pool_entries": ("spnet", "distinct"),
}
# Fields newer than some saved run configs (workdir/config.json); absent means the default.
_ADDED_LATER = ("model.atrous_conv", "model.conv_kernel_grad", "fewshot.pool_entries")
_POSITIVE = (
  "train.batch_size",
  "train.num_steps",
  "train.accumulation_steps",
  "train.log_every_steps",
  "train.checkpoint_every_steps",
  "train.max_checkpoints",
  "eval.batch_size",
  "eval.gamma_step",
  "optimizer.base_lr",
)


def _get(config: ml_collections.ConfigDict, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first invalid field (`config.<field>=<value>`) and why."""

  def fail(field: str, why: str):
    raise UserError(f"Invalid config.{field}={_get(config, field)!r}: {why}")

  for field, choices in _CHOICES.items():
    if field in _ADDED_LATER and field.split(".")[-1] not in _get(config, field.rsplit(".", 1)[0]):
      continue  # A run config written before the field existed: its default applies.
    if _get(config, field) not in choices:
      fail(field, f"must be one of {list(choices)}.")
  for field in _POSITIVE:
    if not _get(config, field) > 0:
      fail(field, "must be > 0.")
  # A batch that does not divide over the devices is padded (data/batching.py), never refused.
  batch, k = config.train.batch_size, config.train.accumulation_steps
  if batch % k:
    fail(
      "train.batch_size",
      f"must be divisible by train.accumulation_steps ({k}): micro-batches of one size.",
    )
  if not 0.0 <= config.eval.gamma <= 1.0:
    fail("eval.gamma", "the calibration factor lies in [0, 1].")
  if not 0.0 < config.eval.gamma_max <= 1.0:
    fail("eval.gamma_max", "must lie in (0, 1].")
  train = config.data.train
  if not 0.0 < train.min_scale <= train.max_scale:
    fail("data.train.min_scale", f"needs 0 < min_scale <= max_scale ({train.max_scale}).")
  if (train.min_scale != 1.0 or train.max_scale != 1.0) and not train.crop_size:
    fail(
      "data.train.crop_size",
      "a random rescale makes images of different sizes: set a crop size so that batches stack.",
    )
  for scale in config.model.msc_scales:
    if not 0.0 < scale < 1.0:
      fail("model.msc_scales", "extra MSC scales lie in (0, 1) (scale 1 is always run).")
  if config.data.eval.full_resolution and not (
    config.data.eval.warp_size and config.data.eval.label_canvas
  ):
    fail(
      "data.eval.full_resolution",
      "needs data.eval.warp_size (network input size) and data.eval.label_canvas (>= the "
      "largest image side, e.g. 640 for COCO-Stuff, 500 for VOC).",
    )
  horizon = config.optimizer.get("schedule_steps", 0)
  if horizon < 0 or 0 < horizon < config.train.num_steps:
    fail(
      "optimizer.schedule_steps",
      f"must be 0 (= train.num_steps) or >= train.num_steps ({config.train.num_steps}): a "
      "shorter schedule ends at rate 0 before training does.",
    )
  if config.optimizer.get("schedule_update_every", 1) < 1:
    fail("optimizer.schedule_update_every", "must be >= 1 (1: a new rate every step).")
  missing = set(optimizer.GROUPS) - set(config.optimizer.lr_multipliers)
  if missing:
    fail("optimizer.lr_multipliers", f"lacks the groups {sorted(missing)}.")
  if config.data.train_split == config.eval.test_split:
    fail("eval.test_split", "the test split must differ from data.train_split.")
  if config.data.hold_out_val_classes and not config.eval.calibration_split:
    fail("data.hold_out_val_classes", "a calibration run needs eval.calibration_split to sweep on.")
  if config.data.hold_out_val_classes and config.data.get("exclude_val_classes", False):
    fail(
      "data.exclude_val_classes",
      "excluding the val classes (--excludeval) and holding them out as unseen exclude each other.",
    )
  if config.data.hold_out_val_classes and config.eval.gamma_file:
    fail("eval.gamma_file", "a calibration run chooses gamma itself; leave eval.gamma_file ''.")
  if not 0.0 <= config.selftrain.fraction <= 1.0:
    fail("selftrain.fraction", "the share of candidate pixels labelled lies in [0, 1].")
  if config.selftrain.fraction and config.fewshot.n:
    fail("selftrain.fraction", "self-training and few-label training exclude each other.")
  if config.fewshot.n not in (0, 1, 2, 5, 10, 20):
    fail("fewshot.n", "SPNet's pools hold 1, 2, 5, 10 or 20 images per class (0: off).")
  if config.fewshot.n and config.data.hold_out_val_classes:
    fail(
      "fewshot.n", "few-label training and a held-out-classes calibration run exclude each other."
    )
  if config.eval.gamma_file and not paths.exists(config.eval.gamma_file):
    fail(
      "eval.gamma_file",
      "no such file: run the calibration first with --config.data.hold_out_val_classes=True "
      "(it writes calibration.json in its workdir).",
    )
  if config.eval.calibration_split and config.eval.calibration_split == config.eval.test_split:
    fail("eval.calibration_split", "gamma is never chosen on the test split.")
