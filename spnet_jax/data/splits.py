"""Class lists and seen / val / unseen splits, and the label remap tables built from them."""

import dataclasses

import numpy as np

from spnet_jax.errors import UserError

IGNORE_LABEL = 255

SHAPE_COLOURS = ("red", "green", "blue", "yellow")
SHAPE_KINDS = ("disc", "square", "triangle", "annulus")
# Index 0 is the background; object class 1 + 4 * colour + kind.
SHAPES_CLASS_NAMES = (
  "background",
  *(f"{colour}-{kind}" for colour in SHAPE_COLOURS for kind in SHAPE_KINDS),
)


@dataclasses.dataclass(frozen=True)
class ClassSplit:
  """Which label values of a dataset are seen, held-out (val) and unseen at training time.

  Attributes:
    class_names: name of every label value 0..num_classes-1 of the dataset.
    seen: label values trained with labels in the zero-label stage.
    val: held-out classes used to tune calibration; trained as seen in the final model.
    unseen: the novel classes, ignored during zero-label training.
  """

  class_names: tuple[str, ...]
  seen: tuple[int, ...]
  val: tuple[int, ...]
  unseen: tuple[int, ...]

  def __post_init__(self):
    groups = {"seen": self.seen, "val": self.val, "unseen": self.unseen}
    everything = [c for ids in groups.values() for c in ids]
    if len(set(everything)) != len(everything):
      raise ValueError(f"Class split overlaps itself: seen/val/unseen share ids ({groups}).")
    bad = [c for c in everything if not 0 <= c < len(self.class_names)]
    if bad:
      raise ValueError(f"Class ids {bad} are outside 0..{len(self.class_names) - 1}.")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def train_classes(self) -> tuple[int, ...]:
    """Classes with labels in the final zero-label model: seen plus val, in id order."""
    return tuple(sorted(self.seen + self.val))

  @property
  def eval_classes(self) -> tuple[int, ...]:
    """Every class that takes part in evaluation (seen, val and unseen), in id order."""
    return tuple(sorted(self.seen + self.val + self.unseen))

  def names(self, ids: tuple[int, ...]) -> list[str]:
    return [self.class_names[i] for i in ids]

  def holding_out_val(self) -> "ClassSplit":
    """The split of a calibration run: train on seen only, treat val as the unseen classes.

    The real unseen classes leave the split altogether (ignored in training and evaluation), so
    a calibration factor tuned on this split never sees the test classes.
    """
    if not self.val:
      raise UserError("This class split has no val classes to hold out for calibration.")
    return ClassSplit(self.class_names, seen=self.seen, val=(), unseen=self.val)

  def excluding_val(self) -> "ClassSplit":
    """SPNet's --excludeval: the val classes leave the split (ignored in training and scoring).

    Training sees the seen classes only; evaluation still scores seen against unseen.
    """
    if not self.val:
      raise UserError("This class split has no val classes to exclude.")
    return ClassSplit(self.class_names, seen=self.seen, val=(), unseen=self.unseen)


def _shape_id(name: str) -> int:
  return SHAPES_CLASS_NAMES.index(name)


def _shape_ids(*names: str) -> tuple[int, ...]:
  return tuple(sorted(_shape_id(n) for n in names))


def _shapes_split(unseen: tuple[int, ...], val: tuple[int, ...]) -> ClassSplit:
  seen = tuple(c for c in range(len(SHAPES_CLASS_NAMES)) if c not in unseen + val)
  return ClassSplit(SHAPES_CLASS_NAMES, seen=seen, val=val, unseen=unseen)


# Every colour and every shape still appears among the seen classes of each split.
SPLITS: dict[str, ClassSplit] = {
  # One unseen class per colour and per shape: colour alone already separates them.
  "shapes/default": _shapes_split(
    unseen=_shape_ids("red-disc", "green-square", "blue-triangle", "yellow-annulus"),
    val=_shape_ids("red-square", "green-triangle", "blue-annulus", "yellow-disc"),
  ),
  # Unseen classes share colours and shapes with each other: ZLSS needs shape as well.
  "shapes/block": _shapes_split(
    unseen=_shape_ids("red-disc", "red-square", "green-disc", "green-square"),
    val=_shape_ids("blue-triangle", "blue-annulus", "yellow-triangle", "yellow-annulus"),
  ),
}


# COCO-Stuff 164k: label value i of the stuffthingmaps PNGs is COCO_STUFF_CLASS_NAMES[i] (255 is
# unlabeled). 11 thing ids (e.g. 11 street sign) have no pixels in the data but keep their slot.
COCO_STUFF_CLASS_NAMES = (
  "person",
  "bicycle",
  "car",
  "motorcycle",
  "airplane",
  "bus",
  "train",
  "truck",
  "boat",
  "traffic light",
  "fire hydrant",
  "street sign",
  "stop sign",
  "parking meter",
  "bench",
  "bird",
  "cat",
  "dog",
  "horse",
  "sheep",
  "cow",
  "elephant",
  "bear",
  "zebra",
  "giraffe",
  "hat",
  "backpack",
  "umbrella",
  "shoe",
  "eye glasses",
  "handbag",
  "tie",
  "suitcase",
  "frisbee",
  "skis",
  "snowboard",
  "sports ball",
  "kite",
  "baseball bat",
  "baseball glove",
  "skateboard",
  "surfboard",
  "tennis racket",
  "bottle",
  "plate",
  "wine glass",
  "cup",
  "fork",
  "knife",
  "spoon",
  "bowl",
  "banana",
  "apple",
  "sandwich",
  "orange",
  "broccoli",
  "carrot",
  "hot dog",
  "pizza",
  "donut",
  "cake",
  "chair",
  "couch",
  "potted plant",
  "bed",
  "mirror",
  "dining table",
  "window",
  "desk",
  "toilet",
  "door",
  "tv",
  "laptop",
  "mouse",
  "remote",
  "keyboard",
  "cell phone",
  "microwave",
  "oven",
  "toaster",
  "sink",
  "refrigerator",
  "blender",
  "book",
  "clock",
  "vase",
  "scissors",
  "teddy bear",
  "hair drier",
  "toothbrush",
  "hair brush",
  "banner",
  "blanket",
  "branch",
  "bridge",
  "building-other",
  "bush",
  "cabinet",
  "cage",
  "cardboard",
  "carpet",
  "ceiling-other",
  "ceiling-tile",
  "cloth",
  "clothes",
  "clouds",
  "counter",
  "cupboard",
  "curtain",
  "desk-stuff",
  "dirt",
  "door-stuff",
  "fence",
  "floor-marble",
  "floor-other",
  "floor-stone",
  "floor-tile",
  "floor-wood",
  "flower",
  "fog",
  "food-other",
  "fruit",
  "furniture-other",
  "grass",
  "gravel",
  "ground-other",
  "hill",
  "house",
  "leaves",
  "light",
  "mat",
  "metal",
  "mirror-stuff",
  "moss",
  "mountain",
  "mud",
  "napkin",
  "net",
  "paper",
  "pavement",
  "pillow",
  "plant-other",
  "plastic",
  "platform",
  "playingfield",
  "railing",
  "railroad",
  "river",
  "road",
  "rock",
  "roof",
  "rug",
  "salad",
  "sand",
  "sea",
  "shelf",
  "sky-other",
  "skyscraper",
  "snow",
  "solid-other",
  "stairs",
  "stone",
  "straw",
  "structural-other",
  "table",
  "tent",
  "textile-other",
  "towel",
  "tree",
  "vegetable",
  "wall-brick",
  "wall-concrete",
  "wall-other",
  "wall-panel",
  "wall-stone",
  "wall-tile",
  "wall-wood",
  "water-other",
  "waterdrops",
  "window-blind",
  "window-other",
  "wood",
)
# PASCAL VOC 2012: 0 is background, which SPNet ignores everywhere (it is in no split).
VOC_CLASS_NAMES = (
  "background",
  "aeroplane",
  "bicycle",
  "bird",
  "boat",
  "bottle",
  "bus",
  "car",
  "cat",
  "chair",
  "cow",
  "diningtable",
  "dog",
  "horse",
  "motorbike",
  "person",
  "potted_plant",
  "sheep",
  "sofa",
  "train",
  "tv",
)

# SPNet's splits (official code, data/datasets/*/split/*_cls.npy).
_COCO_STUFF_UNSEEN = (
  20,
  24,
  32,
  33,
  40,
  56,
  86,
  99,
  105,
  123,
  144,
  147,
  148,
  168,
  171,
)
_COCO_STUFF_VAL = (
  3,
  21,
  38,
  45,
  51,
  61,
  75,
  81,
  93,
  129,
  136,
  139,
)

SPLITS["coco_stuff/spnet"] = ClassSplit(
  COCO_STUFF_CLASS_NAMES,
  seen=tuple(c for c in range(182) if c not in _COCO_STUFF_UNSEEN + _COCO_STUFF_VAL),
  val=_COCO_STUFF_VAL,
  unseen=_COCO_STUFF_UNSEEN,
)
SPLITS["voc_sbd/spnet"] = ClassSplit(
  VOC_CLASS_NAMES, seen=tuple(range(1, 13)), val=(13, 14, 15), unseen=(16, 17, 18, 19, 20)
)


def get_split(dataset: str, split: str) -> ClassSplit:
  """Returns the class split `split` of `dataset` (e.g. 'shapes', 'default')."""
  key = f"{dataset}/{split}"
  if key not in SPLITS:
    valid = sorted(SPLITS)
    raise UserError(
      f"Unknown class split {key!r} (config.data.name / config.data.split); valid: {valid}."
    )
  return SPLITS[key]


def remap_table(class_ids: tuple[int, ...], table_size: int = 256) -> np.ndarray:
  """A lookup table mapping label value class_ids[i] -> i and everything else -> ignore.

  Training uses it with the train classes (so unseen pixels become ignore); the 256 entries
  cover every uint8 label value, including the dataset's own 255.
  """
  table = np.full((table_size,), IGNORE_LABEL, np.int32)
  table[np.asarray(class_ids, np.int64)] = np.arange(len(class_ids), dtype=np.int32)
  return table


def eval_label_table(split: ClassSplit, table_size: int = 256) -> np.ndarray:
  """Keeps label values of evaluated classes and maps every other value to ignore.

  Evaluation works in dataset label ids (0..num_classes-1); a class outside every split (VOC's
  background) is ignored, exactly as SPNet's protocol does.
  """
  table = np.full((table_size,), IGNORE_LABEL, np.int32)
  ids = np.asarray(split.eval_classes, np.int64)
  table[ids] = ids
  return table
