"""Class colours fixed by name, label panels with outlines and region names, legends."""

import colorsys
import functools
import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from spnet_jax.data import shapes, splits

BLACK, WHITE, GREY = (0, 0, 0), (255, 255, 255), (128, 128, 128)
# Where no class is (ignore label, no prediction) the image shows through this dark, so it
# reads as unlabelled next to the solid class colours.
UNLABELLED_BRIGHTNESS = 0.45
# White columns between the image and its label panel.
GAP_WIDTH = 4
LEGEND_ROW_HEIGHT = 14
# Other spellings of VOC classes (COCO-Stuff's, VOC's older ones): they take the VOC colour, so
# a class looks the same whichever dataset names it.
VOC_SPELLINGS = {
  "airplane": "aeroplane",
  "motorcycle": "motorbike",
  "dining table": "diningtable",
  "couch": "sofa",
  "tvmonitor": "tv",
  "pottedplant": "potted plant",
}
# Each shapes kind is its colour moved this fraction towards white (+) or black (-): the four
# shapes of a colour differ in lightness and keep the hue their name says.
SHAPE_KIND_SHADES = {"disc": 0.0, "square": -0.3, "triangle": 0.3, "annulus": 0.6}
# Names of no known dataset hash into 24 hues (15 degrees apart) x 2 saturations x 2 values.
HASHED_HUES, HASHED_SATURATIONS, HASHED_VALUES = 24, (0.9, 0.55), (0.95, 0.7)


def palette(num_classes: int) -> np.ndarray:
  """The PASCAL VOC colour map: a distinct RGB colour per index (bit interleaving)."""
  colours = np.zeros((num_classes, 3), np.uint8)
  for index in range(num_classes):
    value, shift = index, 7
    r = g = b = 0
    while value:
      r |= (value & 1) << shift
      g |= ((value >> 1) & 1) << shift
      b |= ((value >> 2) & 1) << shift
      value >>= 3
      shift -= 1
    colours[index] = (r, g, b)
  return colours


def _lookup_key(name: str) -> str:
  """One key for the spellings of a name ('Potted_Plant ' and 'potted plant')."""
  key = name.strip().lower().replace("_", " ")
  return VOC_SPELLINGS.get(key, key)


@functools.cache
def _dataset_colours() -> dict[str, tuple[int, int, int]]:
  """VOC classes in their VOC colours; COCO-Stuff's other classes in the next free entries.

  One colour map for both datasets keeps every colour distinct when their names mix.
  """
  colour_map = [tuple(int(v) for v in c) for c in palette(256)]
  colours = {_lookup_key(n): colour_map[i] for i, n in enumerate(splits.VOC_CLASS_NAMES)}
  others = [k for k in map(_lookup_key, splits.COCO_STUFF_CLASS_NAMES) if k not in colours]
  for offset, key in enumerate(others):
    colours[key] = colour_map[len(splits.VOC_CLASS_NAMES) + offset]
  return colours


def _shape_colour(key: str) -> tuple[int, int, int] | None:
  """A shapes class ('red-disc') in a shade of the colour its images draw it in; else None."""
  colour, _, kind = key.partition("-")
  if colour not in splits.SHAPE_COLOURS or kind not in SHAPE_KIND_SHADES:
    return None
  base = shapes.BASE_COLOURS[splits.SHAPE_COLOURS.index(colour)].astype(np.float64)
  shade = SHAPE_KIND_SHADES[kind]
  towards = 1.0 if shade > 0 else 0.0
  rgb = base + abs(shade) * (towards - base)
  return tuple(int(v) for v in np.round(255 * rgb))


def _hashed_colour(key: str) -> tuple[int, int, int]:
  """A colour of the hashed palette picked by a hash that is the same in every process."""
  index = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
  index, hue = divmod(index, HASHED_HUES)
  index, saturation = divmod(index, len(HASHED_SATURATIONS))
  value = index % len(HASHED_VALUES)
  rgb = colorsys.hsv_to_rgb(hue / HASHED_HUES, HASHED_SATURATIONS[saturation], HASHED_VALUES[value])
  return tuple(round(255 * v) for v in rgb)


def class_colour(name: str) -> tuple[int, int, int]:
  """The RGB colour of a class, a function of its name alone (see the README's colour rule)."""
  key = _lookup_key(name)
  return _shape_colour(key) or _dataset_colours().get(key) or _hashed_colour(key)


def class_colours(class_names: Sequence[str]) -> np.ndarray:
  """[C, 3] uint8: the colour of each name, whatever the order or subset of names."""
  return np.array([class_colour(n) for n in class_names], np.uint8).reshape(-1, 3)


def contrasting(colour) -> tuple[int, int, int]:
  """Black on light colours, white on dark ones (by luma)."""
  r, g, b = (float(v) for v in colour)
  return BLACK if 0.299 * r + 0.587 * g + 0.114 * b > 128 else WHITE


def region_edges(labels: np.ndarray) -> np.ndarray:
  """[H, W] bool: pixels with a 4-neighbour of another label (both sides of each boundary)."""
  edges = np.zeros(labels.shape, bool)
  vertical = labels[1:] != labels[:-1]
  edges[1:] |= vertical
  edges[:-1] |= vertical
  horizontal = labels[:, 1:] != labels[:, :-1]
  edges[:, 1:] |= horizontal
  edges[:, :-1] |= horizontal
  return edges


def label_panel(
  image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], region_names: bool = True
) -> np.ndarray:
  """Labels in solid class colours with contrasting outlines, over the image where no class is.

  Solid colours make each region exactly its legend swatch's colour; a blend would mix in the
  image's own colour (a blue object under an orange class shows pink).

  Args:
    image: [H, W, 3] uint8 RGB, shown dimmed where a label is outside class_names.
    labels: [H, W] indices into class_names.
    class_names: name of each index.
    region_names: write each class's name on its largest region.

  Returns:
    [H, W, 3] uint8.
  """
  inside = (labels >= 0) & (labels < len(class_names))
  index = np.where(inside, labels, 0)
  colours = class_colours(class_names)
  unlabelled = np.round(UNLABELLED_BRIGHTNESS * image.astype(np.float32)).astype(np.uint8)
  panel = np.where(inside[..., None], colours[index], unlabelled)
  outlines = np.array([contrasting(c) for c in colours], np.uint8).reshape(-1, 3)
  edges = region_edges(labels) & inside
  panel[edges] = outlines[index[edges]]
  if region_names:
    panel = name_regions(panel, labels, class_names)
  return panel


def overlay(
  image: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str],
  legend: bool = True,
  region_names: bool = True,
) -> np.ndarray:
  """The image, its label panel and a legend of the classes present, side by side.

  Args:
    image: [H, W, 3] uint8 RGB.
    labels: [H, W] indices into class_names.
    class_names: name of each index.
    legend: False gives the label panel alone (see label_panel), for callers that lay out
      their own figure (eval_panels).
    region_names: write each class's name on its largest region.

  Returns:
    [H, 2 W + GAP_WIDTH + legend width, 3] uint8, or [H, W, 3] without the legend.
  """
  if image.shape[:2] != labels.shape:
    raise ValueError(f"Image {image.shape[:2]} and label map {labels.shape} differ in size.")
  panel = label_panel(image, labels, class_names, region_names)
  if not legend:
    return panel
  present = [int(c) for c in np.unique(labels) if 0 <= c < len(class_names)]
  gap = np.full((image.shape[0], GAP_WIDTH, 3), 255, np.uint8)
  strip = legend_strip(present, class_names, image.shape[0])
  return np.concatenate([image, gap, panel, strip], axis=1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
  components, count = ndimage.label(mask)
  sizes = np.bincount(components.ravel(), minlength=count + 1)
  sizes[0] = 0
  return components == np.argmax(sizes)


def _innermost_pixel(mask: np.ndarray) -> tuple[int, int]:
  """(row, column) farthest from the region's edge: inside it even for a ring."""
  # Padding makes the image border count as an edge.
  distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
  row, column = np.unravel_index(np.argmax(distance), mask.shape)
  return int(row), int(column)


def _overlaps(box, others) -> bool:
  return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def name_regions(panel: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
  """Writes each class's name at the innermost pixel of its largest region.

  Larger regions are named first. A name longer or taller than its region's bounding box, or
  one that would cover another name, is left out (the legend still lists the class): on small
  images names would hide the regions they name.
  """
  font = ImageFont.load_default()
  height, width = labels.shape
  regions = []
  for c in np.unique(labels):
    if 0 <= c < len(class_names):
      region = _largest_component(labels == c)
      rows, columns = np.nonzero(region)
      extent = (int(np.ptp(columns)) + 1, int(np.ptp(rows)) + 1)
      regions.append((int(region.sum()), int(c), _innermost_pixel(region), extent))
  canvas = Image.fromarray(panel)
  draw = ImageDraw.Draw(canvas)
  placed = []
  for _size, c, (row, column), (region_width, region_height) in sorted(regions, reverse=True):
    left, top, right, bottom = draw.textbbox((0, 0), class_names[c], font=font)
    text_width, text_height = right - left, bottom - top
    if text_width > region_width or text_height > region_height:
      continue
    x = min(max(column - text_width // 2, 1), width - text_width - 1)
    y = min(max(row - text_height // 2, 1), height - text_height - 1)
    box = (x - 1, y - 1, x + text_width + 1, y + text_height + 1)
    if x < 1 or y < 1 or _overlaps(box, placed):
      continue
    placed.append(box)
    _draw_with_halo(draw, (x - left, y - top), class_names[c], class_colour(class_names[c]), font)
  return np.asarray(canvas)


def _draw_with_halo(draw: ImageDraw.ImageDraw, origin, text: str, background, font) -> None:
  """Text in the colour contrasting with the region, ringed by the opposite colour."""
  fill = contrasting(background)
  halo = WHITE if fill == BLACK else BLACK
  x, y = origin
  # Offsets, not stroke_width: Pillow's bitmap fallback font has no strokes.
  for dx in (-1, 0, 1):
    for dy in (-1, 0, 1):
      if dx or dy:
        draw.text((x + dx, y + dy), text, fill=halo, font=font)
  draw.text((x, y), text, fill=fill, font=font)


def legend_strip(class_ids: Sequence[int], class_names: Sequence[str], height: int) -> np.ndarray:
  """A white strip of rows, each a swatch in the class's exact colour and the class's name.

  Rows that do not fit the height go into further columns, so no swatch is ever resampled.
  """
  font = ImageFont.load_default()
  rows_per_column = max(1, (height - 4) // LEGEND_ROW_HEIGHT)
  columns = max(1, -(-len(class_ids) // rows_per_column))
  text_width = max((int(font.getlength(class_names[c])) for c in class_ids), default=0)
  column_width = 24 + text_width + 8
  # An image under one row high (18 pixels) clips its legend's rows.
  canvas = Image.new("RGB", (columns * column_width, height), WHITE)
  draw = ImageDraw.Draw(canvas)
  for i, c in enumerate(class_ids):
    column, row = divmod(i, rows_per_column)
    left, top = column * column_width, 2 + row * LEGEND_ROW_HEIGHT
    # A grey frame shows white and black swatches on the white strip.
    draw.rectangle((left + 3, top, left + 17, top + 12), outline=GREY)
    draw.rectangle((left + 4, top + 1, left + 16, top + 11), fill=class_colour(class_names[c]))
    draw.text((left + 22, top), class_names[c], fill=BLACK, font=font)
  return np.asarray(canvas)
