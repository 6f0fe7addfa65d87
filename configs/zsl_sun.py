"""Zero-shot image classification on SUN (xlsa17 splits, paper Table 4), SPNet loss.

Run:
  python -m spnet_jax.main --config configs/zsl_sun.py --workdir /tmp/zsl_sun \
    --config.data.path=/path/to/xlsa17/data

Untuned defaults, those of configs/zsl_cub.py (see there).
"""

import ml_collections

from configs import zsl_cub


def get_config() -> ml_collections.ConfigDict:
  """configs/zsl_cub.py on the SUN folder (717 scenes, 102 attributes)."""
  config = zsl_cub.get_config()
  config.data.name = "SUN"  # Dataset folder inside data.path.
  return config
