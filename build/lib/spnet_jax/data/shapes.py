"""The embedded 'shapes' benchmark: procedurally drawn coloured shapes as a TFDS dataset.

Classes are background plus colour x shape (4 x 4); their embeddings are attribute vectors, so a
model that learns colour and shape from the seen classes can segment unseen combinations.
Everything is generated from seeds, so no file is ever downloaded.
"""

import dataclasses
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from spnet_jax.data import splits

IMAGE_SIZE = 64
# Base RGB colour of each colour class, in [0, 1].
BASE_COLOURS = np.array(
  [
    [0.85, 0.15, 0.15],  # red
    [0.15, 0.72, 0.20],  # green
    [0.15, 0.25, 0.88],  # blue
    [0.90, 0.85, 0.15],  # yellow
  ],
  np.float32,
)
MIN_RADIUS, MAX_RADIUS = 7.0, 14.0
MAX_OBJECTS = 4
PIXEL_NOISE = 0.06
# Seeds of the splits: separate seeds give disjoint, reproducible train / validation / test sets.
SPLIT_SEEDS = {"train": 1001, "validation": 2002, "test": 3003}


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
  """Bilinearly upsampled random grid: a smooth texture whose frequency is set by `cells`."""
  grid = rng.normal(size=(cells + 1, cells + 1)).astype(np.float32)
  coords = np.linspace(0, cells, size, dtype=np.float32)
  i0 = np.minimum(np.floor(coords).astype(np.int64), cells - 1)
  frac = coords - i0
  rows = grid[i0] * (1 - frac)[:, None] + grid[i0 + 1] * frac[:, None]
  return rows[:, i0] * (1 - frac)[None, :] + rows[:, i0 + 1] * frac[None, :]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  grey = rng.uniform(0.25, 0.65)
  tint = rng.normal(0.0, 0.05, size=3)
  texture = 0.08 * _smooth_noise(rng, 3, size) + 0.04 * _smooth_noise(rng, 8, size)
  return (grey + tint[None, None, :] + texture[:, :, None]).astype(np.float32)


def shape_mask(kind: int, centre: np.ndarray, radius: float, angle: float, size: int) -> np.ndarray:
  """Boolean [size, size] mask of one shape (see splits.SHAPE_KINDS for the kinds)."""
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  dy, dx = ys - centre[0], xs - centre[1]
  # Rotate the pixel grid into the shape's frame.
  cos, sin = np.cos(angle), np.sin(angle)
  u, v = cos * dx + sin * dy, -sin * dx + cos * dy
  dist = np.sqrt(u * u + v * v)
  name = splits.SHAPE_KINDS[kind]
  if name == "disc":
    return dist <= radius
  if name == "square":
    half = radius * 0.85
    return (np.abs(u) <= half) & (np.abs(v) <= half)
  if name == "triangle":
    # Equilateral triangle with circumradius `radius`: inside all three edge half-planes.
    inside = np.ones_like(u, bool)
    for k in range(3):
      theta = 2 * np.pi * k / 3 + np.pi / 2
      inside &= u * np.cos(theta) + v * np.sin(theta) <= radius / 2
    return inside
  if name == "annulus":
    return (dist <= radius) & (dist >= 0.55 * radius)
  raise ValueError(f"unknown shape kind {kind}")


def render_example(
  rng: np.random.Generator, size: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
  """Draws one image and its label map.

  Args:
    rng: the generator that decides everything about the example.
    size: image height and width in pixels.

  Returns:
    image: float32 [size, size, 3] in [0, 1].
    label: uint8 [size, size]; 0 background, 1 + 4 * colour + kind for objects.
  """
  image = _background(rng, size)
  label = np.zeros((size, size), np.uint8)
  occupied = np.zeros((size, size), bool)
  num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  for _ in range(num_objects):
    colour, kind = int(rng.integers(4)), int(rng.integers(4))
    radius = float(rng.uniform(MIN_RADIUS, MAX_RADIUS))
    angle = float(rng.uniform(0, 2 * np.pi))
    # Objects never overlap: occluded fragments would be ambiguous shapes.
    for _attempt in range(30):
      centre = rng.uniform(radius, size - radius, size=2)
      mask = shape_mask(kind, centre, radius, angle, size)
      if not (mask & occupied).any():
        break
    else:
      continue
    occupied |= mask
    rgb = BASE_COLOURS[colour] + rng.normal(0.0, 0.06, size=3)
    rgb = rgb * rng.uniform(0.75, 1.15)
    # A linear shading gradient across the object.
    direction = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.25)
    ramp = ((xs - centre[1]) * np.cos(direction) + (ys - centre[0]) * np.sin(direction)) / radius
    shaded = rgb[None, None, :] * (1.0 + strength * ramp[:, :, None])
    image = np.where(mask[:, :, None], shaded, image)
    label[mask] = 1 + 4 * colour + kind
  image = image + rng.normal(0.0, PIXEL_NOISE, size=image.shape)
  return np.clip(image, 0.0, 1.0).astype(np.float32), label


def generate_split(split: str, count: int, size: int = IMAGE_SIZE):
  """Yields (key, example) pairs of a split; example i depends only on (split seed, i)."""
  seed = SPLIT_SEEDS[split]
  for index in range(count):
    image, label = render_example(np.random.default_rng([seed, index]), size)
    yield (
      index,
      {
        "image": np.round(image * 255).astype(np.uint8),
        "label": label[:, :, None],
        "image_id": f"{split}_{index:06d}",
      },
    )


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Size of each split of the generated dataset."""

  num_train: int = 6000
  num_validation: int = 500
  num_test: int = 1000


class SpnetShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on textured backgrounds, for zero-label segmentation on a CPU."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
  BUILDER_CONFIGS: ClassVar[list[ShapesConfig]] = [
    ShapesConfig(name="default", description="6000 train / 500 validation / 1000 test."),
    ShapesConfig(
      name="tiny", description="For tests.", num_train=48, num_validation=16, num_test=24
    ),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
          "label": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), use_colormap=False),
          "image_id": tfds.features.Text(),
        }
      ),
      description=__doc__,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: every example is drawn from a seed.
    config = self.builder_config
    return {
      "train": self._generate_examples("train", config.num_train),
      "validation": self._generate_examples("validation", config.num_validation),
      "test": self._generate_examples("test", config.num_test),
    }

  def _generate_examples(self, split: str, count: int):
    yield from generate_split(split, count)
