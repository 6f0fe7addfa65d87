"""SPNet few-label stage two on VOC (FLSS / GFLSS): 2000 steps at lr 1e-4, batch 5 x 2.

Run after configs/voc_zlss.py (its workdir is the starting point):
  python -m spnet_jax.main --config configs/voc_flss.py --workdir /tmp/spnet_voc_flss1 \
    --config.fewshot.init_workdir=/tmp/spnet_voc --config.fewshot.n=1 \
    --config.data.data_dir=/data/tfds --config.embeddings.paths=FT,W2V
For SPNet's exact VOC pools add --config.fewshot.spnet_pickle=.../inverse_dict_train.pkl
--config.fewshot.spnet_train_ids=.../train_ids.txt.
"""

import ml_collections

from configs import voc_zlss


def few_label_stage(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """SPNet's few-label recipe on top of a zero-label config (also used by coco_flss)."""
  config.fewshot.n = 1  # SPNet reports n = 1, 2, 5, 10, 20.
  config.train.num_steps = 2000
  config.train.batch_size = 10  # 5 images x 2 accumulation steps.
  config.train.accumulation_steps = 2
  config.optimizer.base_lr = 1e-4
  return config


def get_config() -> ml_collections.ConfigDict:
  """VOC FLSS."""
  return few_label_stage(voc_zlss.get_config())
