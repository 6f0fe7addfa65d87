"""Zero-label segmentation on the embedded shapes benchmark (CPU, a few minutes).

Run:
  python -m spnet_jax.main --config configs/shapes_zlss.py --workdir /tmp/spnet_shapes
Override any field, e.g. `--config.train.num_steps=200 --config.data.split=block`.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  """SPNet (projection head, cross-entropy) with a tiny dilated net trained from scratch."""
  config = base.get_config()
  config.data.name = "shapes"
  config.model.backbone = "tiny"
  config.embeddings.source = "attributes"
  return config


def second_stage_schedule(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The shorter, gentler schedule of a stage that continues a zero-label run."""
  config.train.num_steps = 300
  config.optimizer.base_lr = 5e-4
  config.optimizer.warmup_steps = 20
  config.train.checkpoint_every_steps = 100
  return config
