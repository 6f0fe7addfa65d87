"""PASCAL VOC 2012 with the SBD augmented labels as a TFDS dataset, read from a manual directory.

Manual directory layout (nothing is downloaded):

  <manual_dir>/JPEGImages/*.jpg            VOC 2012 images (VOCtrainval_11-May-2012.tar)
  <manual_dir>/SegmentationClassAug/*.png  SBD-augmented label maps (SegmentationClassAug.zip)
  <manual_dir>/train_ids.txt               the train split, 10,582 ids (SPNet's voc12/split)
  <manual_dir>/test_ids.txt                the test split, 1,449 VOC 2012 val ids (same source)

The label maps are single-channel PNGs: value i is splits.VOC_CLASS_NAMES[i] (0..20), 255 marks
object boundaries and is ignored. Palette PNGs (VOC's own SegmentationClass) are read as their
palette indices, which are the labels, so they may stand in for the augmented ones.
"""

from typing import ClassVar

import tensorflow_datasets as tfds

from spnet_jax.data import manual_checks, splits

LAYOUT = (
  manual_checks.LayoutEntry(
    "JPEGImages", "VOC 2012 images (VOCtrainval_11-May-2012.tar: VOC2012/JPEGImages)", ".jpg"
  ),
  manual_checks.LayoutEntry(
    "SegmentationClassAug", "SBD-augmented label maps (SegmentationClassAug.zip)", ".png"
  ),
  manual_checks.LayoutEntry("train_ids.txt", "10,582 train ids (SPNet's voc12/split/)"),
  manual_checks.LayoutEntry("test_ids.txt", "1,449 VOC 2012 val ids (SPNet's voc12/split/)"),
)
SPLIT_SOURCES = {
  "train": manual_checks.SplitSource(
    "JPEGImages", "SegmentationClassAug", "train_ids.txt", True, expected_size=10_582
  ),
  "test": manual_checks.SplitSource(
    "JPEGImages", "SegmentationClassAug", "test_ids.txt", True, expected_size=1_449
  ),
}
NUM_CLASSES = len(splits.VOC_CLASS_NAMES)

_CITATION = """\
@article{everingham2010pascal,
  title={The PASCAL Visual Object Classes (VOC) Challenge},
  author={Everingham, Mark and Van Gool, Luc and Williams, Christopher K. I. and Winn, John and
          Zisserman, Andrew},
  journal={IJCV},
  year={2010}
}
@inproceedings{hariharan2011semantic,
  title={Semantic Contours from Inverse Detectors},
  author={Hariharan, Bharath and Arbel{\\'a}ez, Pablo and Bourdev, Lubomir and Maji, Subhransu and
          Malik, Jitendra},
  booktitle={ICCV},
  year={2011}
}"""


class VocSbd(manual_checks.ManualSegmentationBuilder):
  """PASCAL VOC 2012 + SBD semantic segmentation: 21 labels (0 background), 255 ignored."""

  VERSION = tfds.core.Version("1.0.0")
  LAYOUT = LAYOUT
  SPLIT_SOURCES = SPLIT_SOURCES
  NUM_CLASSES = NUM_CLASSES
  HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
  CITATION = _CITATION
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
  BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
    tfds.core.BuilderConfig(
      name="default", description="train = train_ids.txt (SBD aug), test = test_ids.txt (val)."
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download VOCtrainval_11-May-2012.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/), "
    "the SBD-augmented labels SegmentationClassAug.zip, and SPNet's split files "
    "(data/datasets/voc12/split/ of github.com/subhc/SPNet), then arrange them so that the "
    "manual directory reads:\n"
    + manual_checks.layout_text(LAYOUT)
    + f"\nSee {manual_checks.README_SECTION}."
  )
