"""Label colours and overlays."""

import numpy as np
import pytest

from spnet_jax.evaluation import visualize


def test_palette_is_the_voc_colour_map():
  colours = visualize.palette(21)
  # Known PASCAL VOC colours: background, aeroplane, person (15), tvmonitor (20).
  assert colours[0].tolist() == [0, 0, 0]
  assert colours[1].tolist() == [128, 0, 0]
  assert colours[15].tolist() == [192, 128, 128]
  assert colours[20].tolist() == [0, 64, 128]
  assert len({tuple(c) for c in colours}) == 21


def test_overlay_blends_by_hand_and_adds_a_legend():
  image = np.full((30, 40, 3), 100, np.uint8)
  labels = np.zeros((30, 40), np.int64)
  labels[5:10, 5:10] = 1
  labels[0, 0] = 255  # Outside the class list: drawn black.
  out = visualize.overlay(image, labels, ["bg", "thing"], alpha=0.5)
  assert out.shape[0] == 30 and out.shape[1] > 40
  assert out[7, 7].tolist() == [114, 50, 50]  # 0.5 * 100 + 0.5 * (128, 0, 0)
  assert out[20, 20].tolist() == [50, 50, 50]
  assert out[0, 0].tolist() == [50, 50, 50]
  assert visualize.overlay(image, labels, ["bg", "thing"], legend=False).shape == (30, 40, 3)


def test_overlay_rejects_mismatched_sizes():
  with pytest.raises(ValueError, match="differ in size"):
    visualize.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4), np.int64), ["a"])
