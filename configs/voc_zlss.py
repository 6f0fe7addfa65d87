"""SPNet zero-label segmentation on PASCAL VOC 2012 + SBD (12 seen + 3 val + 5 unseen classes).

The recipe of the official SPNet code: DeepLab-v2 ResNet-101 (caffe layout) with ASPP to the
600-d fastText+word2vec space, MSC, frozen BatchNorm, SGD with the poly schedule, batch 10,
20k steps. Prepare the dataset and the embeddings first (README.md, 'Datasets' and 'Word
embeddings').

Run:
  python -m spnet_jax.main --config configs/voc_zlss.py --workdir /tmp/spnet_voc \
    --config.data.data_dir=/data/tfds \
    --config.embeddings.paths=/data/voc_fasttext.npy,/data/voc_word2vec.npy
Full-resolution evaluation (logits upsampled to the original labels) instead of 513x513:
  --config.mode=evaluate --config.data.eval.full_resolution=True
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  """VOC ZLSS, ResNet-101."""
  config = base.get_config()
  data = config.data
  data.name = "voc_sbd"
  data.split = "spnet"  # SPNet's seen / val / unseen split.
  data.builder_config = "default"
  data.auto_prepare = False  # Real datasets are prepared by hand (README 'Datasets').
  data.image_mode = "caffe_bgr"  # Caffe-derived weights: BGR, 0..255 minus the caffe mean.
  data.cache = False
  data.init_image_size = 321
  data.train.warp_size = 513  # Warp image and label to 513x513 first.
  data.train.min_scale = 0.5  # Then random scale 0.5..1.5,
  data.train.max_scale = 1.5
  data.train.crop_size = 321  # pad (ignore) to >= 321 and take a random 321x321 crop,
  data.train.flip = True  # and flip at random.
  data.eval.warp_size = 513  # IoU is computed at 513x513 (SPNet's protocol).
  data.eval.label_canvas = 500  # full_resolution: VOC images are at most 500x500.

  config.embeddings.source = "files"
  # fastText and word2vec matrices [21, 300] (each normalised, concatenated, renormalised).
  config.embeddings.paths = ""

  model = config.model
  model.backbone = "resnet101"
  model.embedding_head = "aspp"
  model.aspp_rates = (6, 12, 18, 24)
  model.msc_scales = (0.5, 0.75)  # Scales 1, 0.5, 0.75; loss on all four outputs.

  config.loss.label_resolution = "logits"  # Labels nearest-resized to each output.

  opt = config.optimizer
  opt.name = "sgd"
  opt.base_lr = 2.5e-4
  opt.schedule = "poly"
  opt.poly_power = 0.9
  opt.schedule_steps = 20000  # ITER_MAX of config/voc12/ZLSS.yaml.
  opt.schedule_update_every = 10  # poly_lr_scheduler's lr_decay_iter.
  opt.momentum = 0.9
  opt.weight_decay = 5e-4
  opt.decay_biases = False
  opt.grad_clip_norm = 0.0
  opt.lr_multipliers = ml_collections.ConfigDict(
    {"backbone_kernel": 1.0, "backbone_bias": 2.0, "head_kernel": 10.0, "head_bias": 20.0}
  )

  train = config.train
  train.batch_size = 10
  train.accumulation_steps = 1
  train.num_steps = 20000
  train.log_every_steps = 50
  train.checkpoint_every_steps = 1000
  train.max_checkpoints = 3

  ev = config.eval
  ev.batch_size = 2
  ev.test_split = "test"  # The 1449 VOC 2012 val images.
  ev.calibration_split = ""  # The official scripts fix gamma; see eval.gamma.
  ev.gamma = 0.6  # Official VOC calibration factor.
  return config
