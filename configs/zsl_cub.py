"""Zero-shot image classification on CUB (xlsa17 splits, paper Table 4), SPNet loss.

Run:
  python -m spnet_jax.main --config configs/zsl_cub.py --workdir /tmp/zsl_cub \
    --config.data.path=/path/to/xlsa17/data
Override any field, e.g. `--config.train.epochs=50 --config.optimizer.lr=3e-4`.

The hyperparameters are untuned defaults (no xlsa17 data was at hand when they were set): tune
them on the val split (train_loc vs val_loc) if you need the paper's numbers, never on test.
configs/zsl_sun.py and configs/zsl_awa.py change the dataset only.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Linear map V on fixed ResNet-101 features, softmax over seen classes' attributes (eq. 8)."""
  config = ml_collections.ConfigDict()
  config.task = "zsl_classification"  # Routes spnet_jax.main to spnet_jax.zsl (not segmentation).
  config.seed = 0  # Seeds the minibatch order and the calibration hold-out (V starts at zero).

  config.data = data = ml_collections.ConfigDict()
  data.path = ""  # The unpacked xlsa17 'data' folder (holding CUB/, SUN/, AWA1/, AWA2/).
  data.name = "CUB"  # Dataset folder inside data.path: 'CUB', 'SUN', 'AWA1' or 'AWA2'.
  # 'l2' (each feature scaled to unit norm: no statistics to carry from train to test, and the
  # logit scale is learned by V), 'standardize' (per-dimension z-score with the statistics of the
  # images trained on; features ~45x longer, so lower optimizer.lr a lot) or 'none'.
  data.feature_norm = "l2"
  data.normalize_attributes = True  # L2-normalise each class's attributes (xlsa17's already are).

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = "adam"  # 'adam' or 'sgd' (with momentum).
  opt.lr = 1e-3  # Peak learning rate.
  opt.schedule = "cosine"  # 'cosine' (decays to 0 over all steps) or 'constant'.
  opt.momentum = 0.9  # SGD momentum (0: plain SGD).
  opt.weight_decay = 1e-4  # Coupled weight decay on V (an L2 term added to the gradient).

  config.train = tr = ml_collections.ConfigDict()
  tr.epochs = 30  # Passes over the training images (per model: calibration and final).
  tr.batch_size = 128  # Images per update (the last minibatch of an epoch is padded, masked).
  tr.log_every_epochs = 5  # Log the epoch loss every this many epochs (and the last).

  # Calibration (SPNet-C): gamma is subtracted from the seen classes' softmax probabilities.
  config.calibration = cal = ml_collections.ConfigDict()
  # 'val_sweep': train on train_loc (test images left out), the val_loc classes play unseen,
  # pick the gamma with the best H there; 'fixed': use calibration.gamma.
  cal.mode = "val_sweep"
  cal.gamma = 0.0  # mode='fixed': the calibration factor, in [0, 1].
  # Gammas swept (probabilities, so within [0, 1]). 'log': 0 and gamma_points values log-spaced
  # in [gamma_min, gamma_max]: a softmax over 150-700 classes is rarely confident, and its seen
  # probabilities often all lie below 0.05, the first step of a linear grid. 'linear': 0,
  # gamma_step, ..., gamma_max (SPNet's segmentation sweep).
  cal.grid = "log"
  cal.gamma_min = 1e-4  # Log grid: smallest gamma above 0.
  cal.gamma_points = 41  # Log grid: values above 0 (10 per decade from 1e-4 to 1).
  cal.gamma_step = 0.05  # Linear grid step.
  cal.gamma_max = 1.0  # Largest gamma of either grid.
  cal.seen_holdout_fraction = 0.2  # Share of each train_loc class held out to measure S on val.
  return config
