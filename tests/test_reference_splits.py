"""The class names and splits written in splits.py agree with SPNet's official files.

Reads ../shared/spnet_reference (see its README); skips when that folder is absent.
"""

import os

import numpy as np
import pytest

from spnet_jax.data import splits

from .conftest import SHARED

REFERENCE = os.path.join(SHARED, "spnet_reference")
pytestmark = pytest.mark.skipif(
  not os.path.isdir(REFERENCE), reason=f"SPNet reference files not found at {REFERENCE}"
)


def _labels(path: str) -> list[str]:
  rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
  assert [int(i) for i, _ in rows] == list(range(len(rows)))
  return [name for _, name in rows]


@pytest.mark.parametrize(
  ("folder", "key", "names"),
  [
    ("cocostuff", "coco_stuff/spnet", splits.COCO_STUFF_CLASS_NAMES),
    ("voc12", "voc_sbd/spnet", splits.VOC_CLASS_NAMES),
  ],
)
def test_names_and_splits_match_reference(folder, key, names):
  assert list(names) == _labels(os.path.join(REFERENCE, folder, "labels.txt"))
  split = splits.SPLITS[key]
  assert split.class_names == names
  for ours, theirs in (("seen", "seen"), ("val", "val"), ("unseen", "novel")):
    expected = np.load(os.path.join(REFERENCE, folder, "split", f"{theirs}_cls.npy"))
    assert sorted(getattr(split, ours)) == sorted(expected.tolist()), ours


def test_split_sizes_and_voc_background_in_no_split():
  coco = splits.SPLITS["coco_stuff/spnet"]
  assert (len(coco.seen), len(coco.val), len(coco.unseen)) == (155, 12, 15)
  voc = splits.SPLITS["voc_sbd/spnet"]
  assert (len(voc.seen), len(voc.val), len(voc.unseen)) == (12, 3, 5)
  assert 0 not in voc.seen + voc.val + voc.unseen
  assert splits.eval_label_table(voc)[0] == splits.IGNORE_LABEL
  assert splits.remap_table(voc.train_classes)[0] == splits.IGNORE_LABEL


def test_coco_remap_tables_on_real_label_values():
  coco = splits.SPLITS["coco_stuff/spnet"]
  table = splits.remap_table(coco.seen)
  # Zero-label training: seen -> 0..154 in id order; val, unseen and 255 -> ignore.
  assert table[0] == 0 and table[1] == 1 and table[4] == 3  # 3 (motorcycle) is a val class.
  assert table[181] == 154
  for value in (3, 20, 171, 255):  # motorcycle (val), cow and wall-concrete (unseen), unlabeled.
    assert table[value] == splits.IGNORE_LABEL
  final = splits.remap_table(coco.train_classes)  # The final model trains val as seen.
  assert final[3] == 3 and final[20] == splits.IGNORE_LABEL
  assert sorted(final[final != splits.IGNORE_LABEL].tolist()) == list(range(167))
  evaluation = splits.eval_label_table(coco)
  assert evaluation[20] == 20 and evaluation[171] == 171 and evaluation[255] == 255
