"""SPNet few-label stage two on VOC (FLSS / GFLSS): 2000 steps at lr 1e-4, batch 10.

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
  """SPNet's few-label recipe (config/*/FLSS.yaml, --continue-from) on a zero-label config."""
  config.fewshot.n = 1  # SPNet reports n = 1, 2, 5, 10, 20.
  config.fewshot.pool_entries = "spnet"  # An image once per class it was drawn for.
  config.fewshot.keep_optimizer_state = True  # --continue-from loads the momentum buffers.
  config.train.num_steps = 2000
  config.optimizer.base_lr = 1e-4
  config.optimizer.schedule_steps = 2000  # ITER_MAX of FLSS.yaml; the schedule restarts at 0.
  return config


def get_config() -> ml_collections.ConfigDict:
  """VOC FLSS: batch 10 x 1, as config/voc12/FLSS.yaml."""
  return few_label_stage(voc_zlss.get_config())
