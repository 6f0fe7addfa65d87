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
