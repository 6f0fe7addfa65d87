"""NumPy bilinear resizing (half-pixel centres, no antialiasing) for checking resized logits."""

import numpy as np


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] weights: output i reads input (i + 0.5) * in / out - 0.5, clamped."""
  source = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
  low = np.floor(source).astype(np.int64)
  high = np.minimum(low + 1, in_size - 1)
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), low), 1.0 - (source - low))
  np.add.at(matrix, (np.arange(out_size), high), source - low)
  return matrix


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """[H, W, C] -> [height, width, C] (float64), as PyTorch's align_corners=False."""
  rows = bilinear_matrix(x.shape[0], height)
  cols = bilinear_matrix(x.shape[1], width)
  return np.einsum("yh,xw,hwc->yxc", rows, cols, np.asarray(x, np.float64))
