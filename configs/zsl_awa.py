"""Zero-shot image classification on AWA (xlsa17 splits, paper Table 4), SPNet loss.

Run:
  python -m spnet_jax.main --config configs/zsl_awa.py --workdir /tmp/zsl_awa \
    --config.data.path=/path/to/xlsa17/data
AWA2 (the public-image re-collection of Xian et al.) instead: `--config.data.name=AWA2`.

Untuned defaults, those of configs/zsl_cub.py (see there).
"""

import ml_collections

from configs import zsl_cub


def get_config() -> ml_collections.ConfigDict:
  """configs/zsl_cub.py on AWA1, the paper's AWA ([23]): 50 animals, 85 attributes."""
  config = zsl_cub.get_config()
  config.data.name = "AWA1"  # Dataset folder: 'AWA1' (the paper's) or 'AWA2'.
  return config
