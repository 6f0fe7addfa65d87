"""COCO-Stuff 164k as a TFDS dataset, read from a manual directory (nothing is downloaded).

Manual directory layout (COCO 2017 images plus the COCO-Stuff label maps):

  <manual_dir>/train2017/*.jpg                 COCO 2017 train images (train2017.zip)
  <manual_dir>/val2017/*.jpg                   COCO 2017 val images (val2017.zip)
  <manual_dir>/stuffthingmaps/train2017/*.png  label maps (stuffthingmaps_trainval2017.zip)
  <manual_dir>/stuffthingmaps/val2017/*.png    label maps (stuffthingmaps_trainval2017.zip)
  <manual_dir>/train_ids.txt                   optional: the ids of the train split
  <manual_dir>/test_ids.txt                    optional: the ids of the test split

The label maps are single-channel PNGs: value i is splits.COCO_STUFF_CLASS_NAMES[i] (0..181),
255 is unlabeled. Splits: 'train' is train2017 (118,287 images), 'test' is val2017 (5,000 images,
SPNet's test set). An id list, where present, fixes its split to exactly those ids; SPNet's
cocostuff/split/test_ids.txt lists the 5,000 val2017 ids.
"""

from typing import ClassVar

import tensorflow_datasets as tfds

from spnet_jax.data import manual_checks, splits

LAYOUT = (
  manual_checks.LayoutEntry("train2017", "COCO 2017 train images (train2017.zip)", ".jpg"),
  manual_checks.LayoutEntry("val2017", "COCO 2017 val images (val2017.zip)", ".jpg"),
  manual_checks.LayoutEntry(
    "stuffthingmaps/train2017", "label maps (stuffthingmaps_trainval2017.zip)", ".png"
  ),
  manual_checks.LayoutEntry(
    "stuffthingmaps/val2017", "label maps (stuffthingmaps_trainval2017.zip)", ".png"
  ),
  manual_checks.LayoutEntry("train_ids.txt", "ids of the train split", required=False),
  manual_checks.LayoutEntry(
    "test_ids.txt", "ids of the test split (SPNet's cocostuff/split/test_ids.txt)", required=False
  ),
)
SPLIT_SOURCES = {
  "train": manual_checks.SplitSource(
    "train2017", "stuffthingmaps/train2017", "train_ids.txt", expected_size=118_287
  ),
  "test": manual_checks.SplitSource(
    "val2017", "stuffthingmaps/val2017", "test_ids.txt", expected_size=5_000
  ),
}
NUM_CLASSES = len(splits.COCO_STUFF_CLASS_NAMES)

_CITATION = """\
@inproceedings{caesar2018cocostuff,
  title={COCO-Stuff: Thing and Stuff Classes in Context},
  author={Caesar, Holger and Uijlings, Jasper and Ferrari, Vittorio},
  booktitle={CVPR},
  year={2018}
}"""


class CocoStuff(manual_checks.ManualSegmentationBuilder):
  """COCO-Stuff 164k semantic segmentation: 182 labels (91 thing + 91 stuff), 255 unlabeled."""

  VERSION = tfds.core.Version("1.0.0")
  LAYOUT = LAYOUT
  SPLIT_SOURCES = SPLIT_SOURCES
  NUM_CLASSES = NUM_CLASSES
  HOMEPAGE = "https://github.com/nightrome/cocostuff"
  CITATION = _CITATION
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
  BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
    tfds.core.BuilderConfig(
      name="default", description="train = train2017, test = val2017 (or test_ids.txt)."
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download train2017.zip and val2017.zip (https://cocodataset.org/#download) and "
    "stuffthingmaps_trainval2017.zip (https://github.com/nightrome/cocostuff), then unpack them "
    "so that the manual directory reads:\n"
    + manual_checks.layout_text(LAYOUT)
    + f"\nSee {manual_checks.README_SECTION}."
  )
