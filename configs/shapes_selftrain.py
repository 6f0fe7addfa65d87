"""Self-training on shapes (transductive zero-label): continues configs/shapes_zlss.py.

Ignore pixels of the training images get unseen-class pseudo-labels where the model is most
confident (top half of each unseen class's candidates per batch), then training continues.

Run (after the zero-label run in /tmp/spnet_shapes):
  python -m spnet_jax.main --config configs/shapes_selftrain.py --workdir /tmp/spnet_shapes_st \
    --config.selftrain.init_workdir=/tmp/spnet_shapes
"""

import ml_collections

from configs import shapes_zlss


def get_config() -> ml_collections.ConfigDict:
  """Self-training stage: p = 0.5, 300 steps at a lower rate."""
  config = shapes_zlss.second_stage_schedule(shapes_zlss.get_config())
  config.selftrain.fraction = 0.5
  return config
