"""Few-label segmentation (FLSS / GFLSS) on shapes: stage two after configs/shapes_zlss.py.

Fine-tunes the zero-label model on a pool of the first n images per seen and per novel class;
in an image drawn for novel class k only k is labelled among the novel classes.

Run (after the zero-label run in /tmp/spnet_shapes):
  python -m spnet_jax.main --config configs/shapes_flss.py --workdir /tmp/spnet_shapes_flss1 \
    --config.fewshot.init_workdir=/tmp/spnet_shapes --config.fewshot.n=1
"""

import ml_collections

from configs import shapes_zlss


def get_config() -> ml_collections.ConfigDict:
  """SPNet few-label stage: n=1 by default, its own schedule."""
  config = shapes_zlss.second_stage_schedule(shapes_zlss.get_config())
  config.fewshot.n = 1
  return config
