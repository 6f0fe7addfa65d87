"""Fake manual directories of COCO-Stuff and VOC+SBD in the real file formats, for tests.

`write_fake_manual_dir` lays out JPEG images and label PNGs exactly as the CocoStuff and VocSbd
builders expect them (see coco_stuff.py and voc_sbd.py), so that tests and benchmarks can prepare
the real builders without the real data. Label maps use real label values: unseen classes (COCO
cow 20 and wall-concrete 171, VOC 16..20) and the ignore label 255 appear in every split.
"""

import dataclasses
import os

import numpy as np
from PIL import Image

from spnet_jax.data import splits

DATASETS = ("coco_stuff", "voc_sbd")
SMALL_SIZE = (48, 64)
# (H, W) of typical COCO photos; realistic data cycles through them.
REALISTIC_SIZES = ((480, 640), (640, 480), (427, 640))
# COCO thing ids (0-based) that have no pixels in COCO-Stuff (e.g. 11 street sign).
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_COW = splits.COCO_STUFF_CLASS_NAMES.index("cow")
COCO_WALL_CONCRETE = splits.COCO_STUFF_CLASS_NAMES.index("wall-concrete")
VOC_UNSEEN = (16, 17, 18, 19, 20)
_IGNORE = splits.IGNORE_LABEL


@dataclasses.dataclass(frozen=True)
class FakeManualDir:
  """What `write_fake_manual_dir` wrote.

  Attributes:
    manual_dir: the folder to pass as the builder's manual directory.
    dataset: 'coco_stuff' or 'voc_sbd'.
    train_ids: image ids of the train split, in id-list order.
    test_ids: image ids of the test split, in id-list order.
    unlisted_ids: images with labels that belong to no split (listed in no id list).
  """

  manual_dir: str
  dataset: str
  train_ids: tuple[str, ...]
  test_ids: tuple[str, ...]
  unlisted_ids: tuple[str, ...] = ()

  def image_path(self, split: str, image_id: str) -> str:
    """Path of the image of `image_id`; `split` is 'train' or 'test' (unlisted: 'test')."""
    if self.dataset == "coco_stuff":
      return os.path.join(self.manual_dir, _COCO_FOLDERS[split], f"{image_id}.jpg")
    return os.path.join(self.manual_dir, "JPEGImages", f"{image_id}.jpg")

  def label_path(self, split: str, image_id: str) -> str:
    """Path of the label PNG of `image_id`; `split` is 'train' or 'test' (unlisted: 'test')."""
    if self.dataset == "coco_stuff":
      return os.path.join(
        self.manual_dir, "stuffthingmaps", _COCO_FOLDERS[split], f"{image_id}.png"
      )
    return os.path.join(self.manual_dir, "SegmentationClassAug", f"{image_id}.png")


_COCO_FOLDERS = {"train": "train2017", "test": "val2017"}


def voc_palette() -> np.ndarray:
  """The PASCAL VOC colour map, uint8 [256, 3]: bits of the index spread over R, G and B."""
  palette = np.zeros((256, 3), np.uint8)
  for index in range(256):
    value, red, green, blue = index, 0, 0, 0
    for bit in range(7, -1, -1):
      red |= (value & 1) << bit
      green |= ((value >> 1) & 1) << bit
      blue |= ((value >> 2) & 1) << bit
      value >>= 3
    palette[index] = red, green, blue
  return palette


def _smooth(rng: np.random.Generator, cells: int, size: tuple[int, int]) -> np.ndarray:
  """Smooth noise in about [-1, 1]: a random grid bilinearly upsampled to `size`."""
  grid = rng.normal(size=(cells + 1, cells + 1)).astype(np.float32)
  resized = Image.fromarray(grid).resize((size[1], size[0]), Image.Resampling.BILINEAR)
  return np.asarray(resized)


def _ellipses(rng: np.random.Generator, size: tuple[int, int], count: int) -> list[np.ndarray]:
  """Normalised radius maps of `count` random ellipses (< 1 inside, 1 on the outline)."""
  height, width = size
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  shapes = []
  for _ in range(count):
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
    shapes.append(np.sqrt(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2))
  return shapes


def render_label(
  rng: np.random.Generator, dataset: str, index: int, size: tuple[int, int]
) -> np.ndarray:
  """A label map with real label values, uint8 [H, W].

  COCO-Stuff: two stuff regions, thing ellipses and an unlabeled (255) patch; even indices hold
  wall-concrete (171), odd ones a cow (20). VOC: background 0, object ellipses with 255
  boundaries like the SBD labels; the first object is an unseen class (16..20).
  """
  height, width = size
  objects = _ellipses(rng, size, int(rng.integers(1, 4)))
  if dataset == "coco_stuff":
    stuff = rng.choice(np.arange(91, len(splits.COCO_STUFF_CLASS_NAMES)), size=2, replace=False)
    if index % 2 == 0:
      stuff[0] = COCO_WALL_CONCRETE
    horizon = (rng.uniform(0.3, 0.7) + 0.05 * _smooth(rng, 3, size)) * height
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    label = np.where(ys < horizon, stuff[0], stuff[1]).astype(np.uint8)
    things = np.setdiff1d(np.arange(91), COCO_UNUSED_IDS)
    for k, radius in enumerate(objects):
      thing = COCO_COW if (k == 0 and index % 2 == 1) else int(rng.choice(things))
      label[radius < 1] = thing
    top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    label[top : top + max(2, height // 8), left : left + max(2, width // 8)] = _IGNORE
    return label
  if dataset == "voc_sbd":
    label = np.zeros(size, np.uint8)
    boundary = np.zeros(size, bool)
    # About 5 px boundaries on a 500 px image, at least 1 px on small ones.
    thickness = max(1.0, 0.01 * max(height, width))
    for k, radius in enumerate(objects):
      cls = VOC_UNSEEN[index % len(VOC_UNSEEN)] if k == 0 else int(rng.integers(1, 21))
      label[radius < 1] = cls
      extent = thickness / (0.2 * min(height, width))
      boundary |= (radius >= 1 - extent) & (radius < 1 + extent)
    label[boundary] = _IGNORE
    return label
  raise ValueError(f"Unknown dataset {dataset!r}; valid: {list(DATASETS)}.")


def render_image(rng: np.random.Generator, label: np.ndarray, realistic: bool) -> np.ndarray:
  """A photo-like uint8 [H, W, 3] image whose colours follow the label map."""
  colours = np.random.default_rng(1234).uniform(30, 225, size=(256, 3)).astype(np.float32)
  image = colours[label]
  size = label.shape
  image += 25 * _smooth(rng, 4, size)[..., None] + 10 * _smooth(rng, 16, size)[..., None]
  if realistic:
    # Fine texture and sensor-like noise give JPEG sizes close to real photos.
    image += 12 * _smooth(rng, max(8, size[1] // 8), size)[..., None]
    image += rng.normal(0.0, 9.0, size=image.shape)
  else:
    image += rng.normal(0.0, 3.0, size=image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _write_pair(
  image_path: str,
  label_path: str,
  rng: np.random.Generator,
  dataset: str,
  index: int,
  size: tuple[int, int],
  realistic: bool,
  palette_labels: bool,
) -> None:
  label = render_label(rng, dataset, index, size)
  Image.fromarray(render_image(rng, label, realistic)).save(
    image_path, format="JPEG", quality=90 if realistic else 95
  )
  if palette_labels:
    png = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    png.putpalette(voc_palette().ravel().tolist())
  else:
    png = Image.fromarray(label)
  png.save(label_path, format="PNG")


def write_fake_manual_dir(
  path: str | os.PathLike,
  dataset: str,
  num_train: int,
  num_test: int,
  size: tuple[int, int] | None = None,
  *,
  realistic: bool = False,
  palette_labels: bool = False,
  id_lists: bool | None = None,
  num_unlisted: int = 0,
  seed: int = 0,
) -> FakeManualDir:
  """Writes a manual directory of `dataset` in the real layout and file formats.

  Args:
    path: the manual directory (created if needed).
    dataset: 'coco_stuff' or 'voc_sbd'.
    num_train: images in the train split.
    num_test: images in the test split.
    size: (H, W) of every image; default SMALL_SIZE, or with `realistic` the common COCO
      sizes in turn (640x480, 480x640, 640x427 as WxH).
    realistic: photo-like texture and noise, JPEG quality 90: file sizes and decoding costs
      close to the real data, for benchmarks.
    palette_labels: write labels as VOC-coloured palette PNGs (like VOC's SegmentationClass)
      instead of greyscale ones.
    id_lists: write train_ids.txt and test_ids.txt. Default: only for 'voc_sbd', which needs
      them; COCO-Stuff then takes every image of train2017 and val2017.
    num_unlisted: extra image/label pairs that no id list names (in val2017 for COCO-Stuff);
      the builder must leave them out. Needs id lists.
    seed: everything written depends only on it and the arguments.

  Returns:
    The paths and ids written.
  """
  if dataset not in DATASETS:
    raise ValueError(f"Unknown dataset {dataset!r}; valid: {list(DATASETS)}.")
  if id_lists is None:
    id_lists = dataset == "voc_sbd"
  if dataset == "voc_sbd" and not id_lists:
    raise ValueError("voc_sbd needs its id lists: leave id_lists at None or True.")
  if num_unlisted and not id_lists:
    raise ValueError("num_unlisted needs id_lists=True: without id lists every image is used.")
  if dataset == "coco_stuff":
    train_ids = tuple(f"{9 * i + 9:012d}" for i in range(num_train))
    test_ids = tuple(f"{9 * i + 4:012d}" for i in range(num_test))
    unlisted = tuple(f"{9 * i + 7:012d}" for i in range(num_unlisted))
  else:
    train_ids = tuple(f"{2007 + i % 5}_{2 * i:06d}" for i in range(num_train))
    test_ids = tuple(f"{2007 + i % 5}_{2 * i + 1:06d}" for i in range(num_test))
    unlisted = tuple(f"2012_{i:06d}" for i in range(num_unlisted))
  fake = FakeManualDir(os.fspath(path), dataset, train_ids, test_ids, unlisted)
  if dataset == "coco_stuff":
    for folder in _COCO_FOLDERS.values():
      os.makedirs(os.path.join(fake.manual_dir, folder), exist_ok=True)
      os.makedirs(os.path.join(fake.manual_dir, "stuffthingmaps", folder), exist_ok=True)
  else:
    os.makedirs(os.path.join(fake.manual_dir, "JPEGImages"), exist_ok=True)
    os.makedirs(os.path.join(fake.manual_dir, "SegmentationClassAug"), exist_ok=True)
  work = [("train", i) for i in train_ids] + [("test", i) for i in test_ids + unlisted]
  for index, (split, image_id) in enumerate(work):
    if size is not None:
      shape = size
    elif realistic:
      shape = REALISTIC_SIZES[index % len(REALISTIC_SIZES)]
    else:
      shape = SMALL_SIZE
    _write_pair(
      fake.image_path(split, image_id),
      fake.label_path(split, image_id),
      np.random.default_rng([seed, index]),
      dataset,
      index,
      shape,
      realistic,
      palette_labels,
    )
  if id_lists:
    for name, ids in (("train_ids.txt", train_ids), ("test_ids.txt", test_ids)):
      with open(os.path.join(fake.manual_dir, name), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
  return fake
