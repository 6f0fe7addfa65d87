"""SPNet zero-label segmentation on COCO-Stuff 164k (155 seen + 12 val + 15 unseen classes).

Same recipe as configs/voc_zlss.py with COCO-Stuff's schedule: batch 5 x 2 accumulation steps,
evaluated at 20k steps (100k max in the official configs).

Run:
  python -m spnet_jax.main --config configs/coco_zlss.py --workdir /tmp/spnet_coco \
    --config.data.data_dir=/data/tfds \
    --config.embeddings.paths=/data/coco_fasttext.npy,/data/coco_word2vec.npy
"""

import ml_collections

from configs import voc_zlss


def get_config() -> ml_collections.ConfigDict:
  """COCO-Stuff ZLSS, ResNet-101."""
  config = voc_zlss.get_config()
  config.data.name = "coco_stuff"
  config.train.batch_size = 10  # 5 images x 2 accumulation steps per update.
  config.train.accumulation_steps = 2
  config.train.num_steps = 20000  # The paper evaluates at 20k (of 100k) iterations...
  config.optimizer.schedule_steps = 100000  # ...of a poly schedule over ITER_MAX = 100k.
  config.data.eval.label_canvas = 640  # full_resolution: COCO images are at most 640x640.
  config.eval.gamma = 0.4  # Official COCO-Stuff calibration factor.
  return config
