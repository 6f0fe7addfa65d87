"""SPNet on COCO-Stuff with DeepLab-v2 VGG-16 and ASPP-L (Adam, lr 1e-4, as in the paper).

Run:
  python -m spnet_jax.main --config configs/coco_zlss_vgg16.py --workdir /tmp/spnet_coco_vgg
"""

import ml_collections

from configs import coco_zlss


def get_config() -> ml_collections.ConfigDict:
  """COCO-Stuff ZLSS, VGG-16."""
  config = coco_zlss.get_config()
  config.model.backbone = "vgg16"
  config.model.embedding_head = "aspp_l"
  config.optimizer.name = "adam"
  config.optimizer.base_lr = 1e-4
  return config
