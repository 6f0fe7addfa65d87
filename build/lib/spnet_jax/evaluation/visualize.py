"""Colour label maps and overlays with a legend of class names (predict, TensorBoard)."""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IGNORE_COLOUR = (0, 0, 0)


def palette(num_classes: int) -> np.ndarray:
  """A fixed, distinct RGB colour per class index (the PASCAL VOC bit-interleaving scheme)."""
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


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[H, W] class indices (others, e.g. 255, drawn black) -> [H, W, 3] uint8."""
  colours = np.concatenate([palette(num_classes), np.array([IGNORE_COLOUR], np.uint8)])
  index = np.where((labels >= 0) & (labels < num_classes), labels, num_classes)
  return colours[index]


def overlay(
  image: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str],
  alpha: float = 0.55,
  legend: bool = True,
) -> np.ndarray:
  """The image blended with the coloured labels, and a legend of the classes present.

  Args:
    image: [H, W, 3] uint8 RGB.
    labels: [H, W] indices into class_names.
    class_names: name of each index.
    alpha: weight of the label colours.
    legend: append a strip on the right naming each class present with its colour.

  Returns:
    [H, W (+ legend width), 3] uint8.
  """
  if image.shape[:2] != labels.shape:
    raise ValueError(f"Image {image.shape[:2]} and label map {labels.shape} differ in size.")
  colours = colorize(labels, len(class_names)).astype(np.float32)
  blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
  blended = np.clip(np.round(blended), 0, 255).astype(np.uint8)
  if not legend:
    return blended
  present = [int(c) for c in np.unique(labels) if 0 <= c < len(class_names)]
  return np.concatenate([blended, legend_strip(present, class_names, image.shape[0])], axis=1)


def legend_strip(class_ids: Sequence[int], class_names: Sequence[str], height: int) -> np.ndarray:
  """A white strip with a colour swatch and the name of each class, one per row."""
  font = ImageFont.load_default()
  row = 14
  width = 24 + max((int(font.getlength(class_names[c])) for c in class_ids), default=0) + 8
  canvas = Image.new("RGB", (width, max(height, row * len(class_ids) + 4)), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  colours = palette(len(class_names))
  for i, c in enumerate(class_ids):
    top = 2 + i * row
    draw.rectangle((4, top + 1, 16, top + 11), fill=tuple(int(v) for v in colours[c]))
    draw.text((22, top), class_names[c], fill=(0, 0, 0), font=font)
  strip = np.asarray(canvas)
  if strip.shape[0] > height:  # More classes than rows fit: keep the image height.
    strip = np.asarray(canvas.resize((width, height)))
  return strip
