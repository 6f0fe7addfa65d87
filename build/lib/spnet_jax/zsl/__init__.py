"""Zero-shot image classification with the SPNet loss on fixed image features (paper Table 4).

Modules: `data` reads the xlsa17 files, `model` trains the linear map V, `evaluate` scores ZSL
and GZSL by mean per-class top-1 accuracy, `experiment` runs the protocol (calibration on the
val split, final model on trainval) and writes results.json.
"""

from spnet_jax.zsl.experiment import train_and_evaluate

__all__ = ["train_and_evaluate"]
