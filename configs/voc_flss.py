"""SPNet few-label stage two on VOC (FLSS / GFLSS): 2000 steps at lr 1e-4, batch 5 x 2.

Run after configs/voc_zlss.py (its workdir is the starting point):
  python -m spnet_jax.main --config configs/voc_flss.py --workdir /tmp/spnet_voc_flss1 \
    --config.fewshot.init_workdir=/tmp/spnet_voc --config.fewshot.n=1 \
    --config.data.data_dir=/data/tfds --config.embeddings.paths=FT,W2V
"""

import ml_collections

from configs import voc_zlss


def get_config() -> ml_collections.ConfigDict:
  """SPNet's FLSS recipe on top of the zero-label config."""
  config = voc_zlss.get_config()
  config.fewshot.n = 1  # SPNet reports n = 1, 2, 5, 10, 20.
  config.train.num_steps = 2000
  config.train.batch_size = 10  # 5 images x 2 accumulation steps.
  config.train.accumulation_steps = 2
  config.optimizer.base_lr = 1e-4
  return config
