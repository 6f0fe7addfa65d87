"""Tests for spnet_jax/data/splits.py: class splits and label remap tables."""

import numpy as np
import pytest

from spnet_jax.data import splits

IGNORE = 255


def test_remap_table_hand_case():
  table = splits.remap_table((2, 5, 7))
  assert table.shape == (256,)
  assert table[2] == 0 and table[5] == 1 and table[7] == 2
  others = np.delete(np.arange(256), [2, 5, 7])
  assert np.all(table[others] == IGNORE)
  assert table[255] == IGNORE


def test_remap_table_matches_loop():
  ids = (0, 3, 4, 9, 17, 100, 181)
  table = splits.remap_table(ids)
  for value in range(256):
    expected = ids.index(value) if value in ids else IGNORE
    assert table[value] == expected, value


def test_eval_label_table():
  split = splits.ClassSplit(tuple("abcdef"), seen=(1, 2), val=(5,), unseen=(3,))
  table = splits.eval_label_table(split)
  assert table.shape == (256,)
  # Evaluated classes keep their ids; class 0 and 4 (in no split) and everything else: ignore.
  expected = np.full(256, IGNORE)
  expected[[1, 2, 3, 5]] = [1, 2, 3, 5]
  np.testing.assert_array_equal(table, expected)


def test_class_split_properties():
  split = splits.ClassSplit(tuple("abcdefg"), seen=(6, 0, 2), val=(4, 1), unseen=(3,))
  assert split.num_classes == 7
  assert split.train_classes == (0, 1, 2, 4, 6)
  assert split.eval_classes == (0, 1, 2, 3, 4, 6)
  assert split.names((3, 0)) == ["d", "a"]


@pytest.mark.parametrize(
  ("seen", "val", "unseen"),
  [((0, 1), (1,), (2,)), ((0, 1), (), (1,)), ((0,), (2,), (2, 3)), ((0, 0), (), ())],
)
def test_class_split_overlap_raises(seen, val, unseen):
  with pytest.raises(ValueError, match="overlap"):
    splits.ClassSplit(tuple("abcd"), seen=seen, val=val, unseen=unseen)


@pytest.mark.parametrize(
  ("seen", "val", "unseen", "bad"),
  [((0, 4), (), (1,), "4"), ((0,), (-1,), (1,), "-1"), ((0,), (), (7,), "7")],
)
def test_class_split_out_of_range_raises(seen, val, unseen, bad):
  with pytest.raises(ValueError, match=rf"\[{bad}\].*0\.\.3"):
    splits.ClassSplit(tuple("abcd"), seen=seen, val=val, unseen=unseen)


def _ids(*names: str) -> set[int]:
  return {splits.SHAPES_CLASS_NAMES.index(n) for n in names}


def test_shapes_class_names():
  names = splits.SHAPES_CLASS_NAMES
  assert len(names) == 17
  assert names[0] == "background"
  # Hand-computed ids: 1 + 4 * colour + kind.
  assert names[1] == "red-disc"
  assert names[6] == "green-square"
  assert names[11] == "blue-triangle"
  assert names[16] == "yellow-annulus"
  assert len(set(names)) == 17


@pytest.mark.parametrize(
  ("name", "unseen", "unseen_ids"),
  [
    ("default", ("red-disc", "green-square", "blue-triangle", "yellow-annulus"), (1, 6, 11, 16)),
    ("block", ("red-disc", "red-square", "green-disc", "green-square"), (1, 2, 5, 6)),
  ],
)
def test_shapes_splits(name, unseen, unseen_ids):
  split = splits.get_split("shapes", name)
  assert split.num_classes == 17
  assert set(split.unseen) == _ids(*unseen)
  assert tuple(sorted(split.unseen)) == unseen_ids
  assert 0 in split.seen
  assert len(split.val) == 4
  # seen / val / unseen partition all 17 classes.
  assert sorted(split.seen + split.val + split.unseen) == list(range(17))
  seen_names = [splits.SHAPES_CLASS_NAMES[c] for c in split.seen if c != 0]
  assert {n.split("-")[0] for n in seen_names} == set(splits.SHAPE_COLOURS)
  assert {n.split("-")[1] for n in seen_names} == set(splits.SHAPE_KINDS)


def test_shapes_default_seen_hand_list():
  split = splits.get_split("shapes", "default")
  assert tuple(sorted(split.seen)) == (0, 3, 4, 5, 8, 9, 10, 14, 15)
  assert tuple(sorted(split.val)) == (2, 7, 12, 13)
  table = splits.remap_table(split.train_classes)
  assert (
    table[0] == 0
    and table[2] == 1
    and table[15] == 12
    and table[16] == IGNORE
    and table[1] == IGNORE
  )


def test_get_split_unknown_name():
  with pytest.raises(ValueError, match="shapes/nope") as info:
    splits.get_split("shapes", "nope")
  assert "shapes/default" in str(info.value)
  assert "config.data.split" in str(info.value)
  with pytest.raises(ValueError, match="voc/default"):
    splits.get_split("voc", "default")
