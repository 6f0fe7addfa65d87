"""Class colours fixed by name, label panels, overlays and legends."""

import colorsys

import numpy as np
import pytest
from PIL import Image

from spnet_jax.data import splits
from spnet_jax.evaluation import visualize

# Hue in degrees of each colour word of the shapes classes.
NAMED_HUES = {"red": 0.0, "green": 120.0, "blue": 240.0, "yellow": 60.0}


def _hue_degrees(colour) -> float:
  return 360.0 * colorsys.rgb_to_hsv(*(v / 255 for v in colour))[0]


def _luma(colour) -> float:
  r, g, b = (float(v) for v in colour)
  return 0.299 * r + 0.587 * g + 0.114 * b


def test_palette_is_the_voc_colour_map():
  colours = visualize.palette(21)
  # Known PASCAL VOC colours: background, aeroplane, person (15), tvmonitor (20).
  assert colours[0].tolist() == [0, 0, 0]
  assert colours[1].tolist() == [128, 0, 0]
  assert colours[15].tolist() == [192, 128, 128]
  assert colours[20].tolist() == [0, 64, 128]
  assert len({tuple(c) for c in colours}) == 21


def test_class_colour_is_the_same_whatever_the_order_or_subset_of_classes():
  names = ["dog", "red-disc", "sky-other", "zorblax", "background"]
  by_name = dict(zip(names, visualize.class_colours(names).tolist(), strict=True))
  for other in (names[::-1], ["zorblax", "dog"], ["sky-other"], names[2:] + names[:2]):
    assert visualize.class_colours(other).tolist() == [by_name[n] for n in other]
  # Drawn: 'dog' is index 0 of one list and index 3 of the other, the same colour in both.
  image = np.full((20, 20, 3), 128, np.uint8)
  drawn = []
  for order in (["dog", "cat", "car", "bus"], ["bus", "car", "cat", "dog"]):
    labels = np.full((20, 20), order.index("cat"))
    labels[5:15, 5:15] = order.index("dog")
    drawn.append(visualize.overlay(image, labels, order, legend=False, region_names=False))
  assert drawn[0][10, 10].tolist() == drawn[1][10, 10].tolist() == by_name["dog"]


def test_known_datasets_keep_their_colours_and_no_two_of_their_classes_share_one():
  assert visualize.class_colour("person") == (192, 128, 128)  # VOC index 15.
  assert visualize.class_colour("background") == (0, 0, 0)
  for coco, voc in (
    ("airplane", "aeroplane"),
    ("potted plant", "potted_plant"),
    ("tvmonitor", "tv"),
  ):
    assert visualize.class_colour(coco) == visualize.class_colour(voc)
  assert visualize.class_colour(" Dining_Table") == visualize.class_colour("diningtable")
  names = set(splits.VOC_CLASS_NAMES) | set(splits.COCO_STUFF_CLASS_NAMES)
  keys = {visualize._lookup_key(n) for n in names}
  assert len({visualize.class_colour(k) for k in keys}) == len(keys)


def test_shapes_classes_take_the_hue_their_name_says():
  objects = splits.SHAPES_CLASS_NAMES[1:]
  colours = [visualize.class_colour(n) for n in objects]
  assert len(set(colours)) == len(objects)
  for name, colour in zip(objects, colours, strict=True):
    expected = NAMED_HUES[name.split("-")[0]]
    gap = abs(_hue_degrees(colour) - expected)
    assert min(gap, 360 - gap) < 15, (name, colour)
    assert max(colour) - min(colour) > 50, (name, colour)  # Saturated enough to read a hue.


def test_hashed_colours_are_stable_and_spread():
  names = [f"class {i}" for i in range(40)]
  first = visualize.class_colours(names).tolist()
  assert visualize.class_colours(names).tolist() == first
  assert len({tuple(c) for c in first}) > 25  # 96 colours: few collisions among 40 names.


def test_region_is_drawn_in_exactly_its_legend_swatch_colour(tmp_path):
  # A blue image under an orange-ish class: a blend would show neither colour.
  height, width = 48, 60
  image = np.zeros((height, width, 3), np.uint8)
  image[...] = (40, 60, 220)
  labels = np.zeros((height, width), np.int64)
  labels[10:40, 8:40] = 1  # Away from the right border: the legend starts after 2 W.
  names = ["background", "yellow-disc"]
  path = str(tmp_path / "overlay.png")
  Image.fromarray(visualize.overlay(image, labels, names)).save(path)
  with Image.open(path) as png:
    written = np.asarray(png.convert("RGB"))
  assert written[:, :width].tolist() == image.tolist()  # The image itself, beside the labels.
  panel = written[:, width + visualize.GAP_WIDTH : 2 * width + visualize.GAP_WIDTH]
  region = panel[labels == 1]
  colours, counts = np.unique(region, axis=0, return_counts=True)
  region_colour = colours[np.argmax(counts)]
  assert counts.max() > region.shape[0] / 2
  assert tuple(region_colour.tolist()) == visualize.class_colour("yellow-disc")
  legend = written[:, 2 * width + visualize.GAP_WIDTH :]
  rows, columns = np.nonzero(np.all(legend == region_colour, axis=-1))
  swatch = legend[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
  assert swatch.shape[0] >= 10 and swatch.shape[1] >= 10
  assert np.all(swatch == region_colour)  # One solid block: the swatch, nothing else.


def test_region_boundaries_are_outlined_in_a_contrasting_colour():
  image = np.full((40, 40, 3), 128, np.uint8)
  labels = np.zeros((40, 40), np.int64)
  labels[5:20, 5:35] = 1  # Light: outlined in black.
  labels[20:35, 5:35] = 2  # Dark: outlined in white.
  names = ["background", "yellow-disc", "blue-square"]
  panel = visualize.overlay(image, labels, names, legend=False, region_names=False)
  edges = visualize.region_edges(labels)
  assert edges[5, 10] and edges[19, 10] and edges[20, 10] and not edges[12, 20]
  for c, name in enumerate(names):
    fill = visualize.class_colour(name)
    outline = panel[edges & (labels == c)]
    assert len(outline) and np.all(outline == visualize.contrasting(fill))
    assert abs(_luma(visualize.contrasting(fill)) - _luma(fill)) > 100, name
    assert np.all(panel[~edges & (labels == c)] == fill)


def test_region_names_are_written_on_regions_they_fit():
  image = np.full((80, 120, 3), 128, np.uint8)
  labels = np.zeros((80, 120), np.int64)
  labels[10:70, 10:110] = 1  # Room for its name.
  labels[2:6, 112:118] = 2  # Too small for its name: left to the legend.
  names = ["background", "zorblax", "tiny"]
  named = visualize.overlay(image, labels, names, legend=False)
  plain = visualize.overlay(image, labels, names, legend=False, region_names=False)
  changed = np.any(named != plain, axis=-1)
  assert changed[labels == 1].any()
  assert not changed[:8, 108:].any()


def test_unlabelled_pixels_show_the_image_dimmed():
  image = np.full((10, 10, 3), 200, np.uint8)
  labels = np.full((10, 10), splits.IGNORE_LABEL)
  panel = visualize.overlay(image, labels, ["a"], legend=False)
  assert np.all(panel == 90)  # 0.45 * 200.


def test_legend_of_many_classes_wraps_into_columns_of_exact_swatches():
  names = [f"class {i}" for i in range(30)]
  strip = visualize.legend_strip(list(range(30)), names, 64)
  assert strip.shape[0] == 64
  pixels = {tuple(p) for p in strip.reshape(-1, 3).tolist()}
  assert all(visualize.class_colour(n) in pixels for n in names)


def test_overlay_rejects_mismatched_sizes():
  with pytest.raises(ValueError, match="differ in size"):
    visualize.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4), np.int64), ["a"])
