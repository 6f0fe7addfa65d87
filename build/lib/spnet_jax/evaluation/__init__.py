"""Evaluation: the eval step, calibrated predictions, metrics, calibration."""
