"""SPNet on PASCAL VOC with DeepLab-v2 VGG-16 and ASPP-L (Adam, lr 1e-4, as in the paper).

Run:
  python -m spnet_jax.main --config configs/voc_zlss_vgg16.py --workdir /tmp/spnet_voc_vgg
"""

import ml_collections

from configs import voc_zlss


def get_config() -> ml_collections.ConfigDict:
  """VOC ZLSS, VGG-16."""
  config = voc_zlss.get_config()
  config.model.backbone = "vgg16"
  config.model.embedding_head = "aspp_l"
  config.optimizer.name = "adam"
  config.optimizer.base_lr = 1e-4
  return config
