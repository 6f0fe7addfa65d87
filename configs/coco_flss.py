"""SPNet few-label stage two on COCO-Stuff (FLSS / GFLSS): configs/voc_flss.py's recipe, 5 x 2.

Run after configs/coco_zlss.py (its workdir is the starting point):
  python -m spnet_jax.main --config configs/coco_flss.py --workdir /tmp/spnet_coco_flss1 \
    --config.fewshot.init_workdir=/tmp/spnet_coco --config.fewshot.n=1 \
    --config.data.data_dir=/data/tfds --config.embeddings.paths=FT,W2V
"""

import ml_collections

from configs import coco_zlss, voc_flss


def get_config() -> ml_collections.ConfigDict:
  """COCO-Stuff FLSS: batch 5 x 2 accumulation steps, as config/cocostuff/FLSS.yaml."""
  return voc_flss.few_label_stage(coco_zlss.get_config())
