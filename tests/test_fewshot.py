"""Tests for spnet_jax/data/fewshot.py: class image lists, the n-shot pool, tables and stream."""

import collections
import itertools
import json
import logging
import os

import numpy as np
import pytest

from spnet_jax.data import batching, datasets, fewshot, safe_pickle, shapes, splits

IGNORE = splits.IGNORE_LABEL
LAYOUT = batching.batch_layout(4, 1, 1, 0)  # A global batch of 4 on one device.
VOC_SPLIT_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "..",
  "shared",
  "spnet_reference",
  "voc12",
  "split",
)


def tiny_builder(data_dir: str):
  return datasets.create_builder("shapes", "tiny", data_dir)


def raw_train_labels(builder) -> dict[str, np.ndarray]:
  """Label maps of the tiny train split, regenerated from their seeds (not read through TFDS)."""
  count = builder.builder_config.num_train
  return {ex["image_id"]: ex["label"][..., 0] for _, ex in shapes.generate_split("train", count)}


# ---------------------------------------------------------------------------------------------
# Class image lists.


def test_build_class_image_lists_matches_numpy(shapes_data_dir):
  builder = tiny_builder(shapes_data_dir)
  num_classes = len(splits.SHAPES_CLASS_NAMES)
  lists = fewshot.build_class_image_lists(builder, "train", num_classes)
  expected = {c: [] for c in range(num_classes)}
  for image_id, label in sorted(raw_train_labels(builder).items()):
    for c in np.unique(label):
      expected[int(c)].append(image_id)
  assert lists == expected
  assert len(lists[0]) == builder.builder_config.num_train  # Background is in every image.


def test_class_image_lists_save_load_round_trip(tmp_path):
  lists = {0: ["b", "a"], 3: [], 17: ["x_000001"]}
  path = str(tmp_path / "sub" / "lists.json")
  fewshot.save_class_image_lists(path, lists)
  assert fewshot.load_class_image_lists(path) == lists
  assert os.listdir(tmp_path / "sub") == ["lists.json"]  # No temporary file left behind.
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"0": ["a"]}))
  with pytest.raises(ValueError, match="not a class image list file"):
    fewshot.load_class_image_lists(str(bad))


def test_load_or_build_writes_beside_the_dataset(shapes_data_dir, tmp_path, monkeypatch):
  builder = tiny_builder(shapes_data_dir)
  default = fewshot.default_lists_path(builder, "train[:50%]")
  assert default.startswith(str(builder.data_dir))
  assert os.path.basename(default) == "class_image_lists.train_50_.json"
  path = str(tmp_path / "lists.json")
  built = fewshot.load_or_build_class_image_lists(builder, "train", 17, path)
  assert fewshot.load_class_image_lists(path) == built

  def fail(*args):
    raise AssertionError("rebuilt lists that were saved")

  monkeypatch.setattr(fewshot, "build_class_image_lists", fail)
  assert fewshot.load_or_build_class_image_lists(builder, "train", 17, path) == built


# ---------------------------------------------------------------------------------------------
# The pool.

# Classes 1, 2 seen, 3 val (so seen in the few-label stage), 4, 5 novel.
HAND_SPLIT = splits.ClassSplit(tuple("abcdef"), seen=(1, 2), val=(3,), unseen=(4, 5))


def hand_lists() -> dict[int, list[str]]:
  one = [f"one{i}" for i in range(45)]
  return {
    1: one,
    # Shares its first image of each block with class 1 (same tag: drawn once).
    2: ["one0", "two1"] + [f"two{i}" for i in range(2, 20)] + ["one20", "two21"],
    3: [],  # No image at all.
    # Its first image is also a seen-class image (a different tag: kept twice).
    4: ["one0", "four1", "four1"] + [f"four{i}" for i in range(3, 25)],
    5: ["five0"],  # Shorter than n = 2, and empty at offset 1.
  }


def pairs(pool: fewshot.FewShotPool) -> list[tuple[str, int]]:
  return [(e.image_id, e.tag) for e in pool.entries]


N3_OFFSET0 = [("one0", -1), ("one1", -1), ("one2", -1), ("two1", -1), ("two2", -1)]
N3_OFFSET0 += [("one0", 4), ("four1", 4), ("five0", 5)]  # four1 is listed twice: drawn once.


@pytest.mark.parametrize(
  ("n", "offset", "expected"),
  [
    (1, 0, [("one0", -1), ("one0", 4), ("five0", 5)]),
    (2, 0, [("one0", -1), ("one1", -1), ("two1", -1), ("one0", 4), ("four1", 4), ("five0", 5)]),
    (1, 1, [("one20", -1), ("four20", 4)]),
    (2, 1, [("one20", -1), ("one21", -1), ("two21", -1), ("four20", 4), ("four21", 4)]),
    (3, 0, N3_OFFSET0),
  ],
)
def test_build_pool_hand_lists(n, offset, expected):
  pool = fewshot.build_pool(hand_lists(), HAND_SPLIT, n=n, offset=offset)
  assert pairs(pool) == expected
  assert (pool.n, pool.offset) == (n, offset)
  assert pool.seen_classes == (1, 2, 3) and pool.novel_classes == (4, 5)
  assert pool.visible_classes == (1, 2, 3, 4, 5)
  assert [e.table_index for e in pool.entries] == [pool.tags.index(t) for _, t in expected]
  assert pool.tags == (-1, 4, 5)


def test_build_pool_warns_about_short_and_empty_classes(caplog):
  with caplog.at_level(logging.WARNING):
    fewshot.build_pool(hand_lists(), HAND_SPLIT, n=2, offset=0)
  text = caplog.text
  assert "short classes ['5 (1)']" in text
  assert "no images for classes [3]" in text


def test_build_pool_explicit_classes_and_errors():
  pool = fewshot.build_pool(hand_lists(), HAND_SPLIT, n=1, novel_classes=(5,), seen_classes=(2,))
  assert pairs(pool) == [("one0", -1), ("five0", 5)]
  assert pool.visible_classes == (2, 5)
  with pytest.raises(ValueError, match=r"1\.\.20"):
    fewshot.build_pool(hand_lists(), HAND_SPLIT, n=21)
  with pytest.raises(ValueError, match="offset"):
    fewshot.build_pool(hand_lists(), HAND_SPLIT, n=1, offset=-1)
  with pytest.raises(ValueError, match="distinct"):
    fewshot.build_pool(hand_lists(), HAND_SPLIT, n=1, seen_classes=(1, 4))


def test_pool_label_tables_hand_case():
  pool = fewshot.build_pool(hand_lists(), HAND_SPLIT, n=1)
  tables = fewshot.pool_label_tables(pool)
  assert tables.shape == (3, 256) and tables.dtype == np.int32
  label = np.array([[0, 1, 2, 3], [4, 5, 255, 6]])
  # Visible index: 1 -> 0, 2 -> 1, 3 -> 2, 4 -> 3, 5 -> 4; class 0 and 6+ are in no list.
  np.testing.assert_array_equal(tables[0][label], [[IGNORE, 0, 1, 2], [IGNORE] * 4])
  np.testing.assert_array_equal(tables[1][label], [[IGNORE, 0, 1, 2], [3, IGNORE, IGNORE, IGNORE]])
  np.testing.assert_array_equal(tables[2][label], [[IGNORE, 0, 1, 2], [IGNORE, 4, IGNORE, IGNORE]])
  # Every value outside the visible classes is ignored in every table.
  others = [v for v in range(256) if v not in (1, 2, 3, 4, 5)]
  assert (tables[:, others] == IGNORE).all()


# ---------------------------------------------------------------------------------------------
# The stream.


@pytest.fixture(scope="module")
def shapes_pool(shapes_data_dir):
  builder = tiny_builder(shapes_data_dir)
  lists = fewshot.build_class_image_lists(builder, "train", len(splits.SHAPES_CLASS_NAMES))
  split = splits.get_split("shapes", "default")
  pool = fewshot.build_pool(lists, split, n=2, offset=0)
  assert {e.tag for e in pool.entries} == {-1, *split.unseen}
  return builder, pool


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return list(itertools.islice(iterator, count))


def test_fewshot_iterator_labels(fast_config, shapes_pool):
  builder, pool = shapes_pool
  batches = take(
    fewshot.create_fewshot_iterator(
      fast_config.data, builder, pool, LAYOUT, seed=3, include_tag=True
    ),
    6,
  )
  tables = fewshot.pool_label_tables(pool)
  raw = raw_train_labels(builder)
  visible = pool.visible_classes
  novel_index = {k: visible.index(k) for k in pool.novel_classes}
  for batch in batches:
    assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 64, 64) and batch["label"].dtype == np.int32
    for label, tag in zip(batch["label"], batch["tag"], strict=True):
      values = set(np.unique(label).tolist())
      assert values <= set(range(len(visible))) | {IGNORE}
      allowed_novel = {novel_index[tag]} if tag != -1 else set()
      assert values & set(novel_index.values()) <= allowed_novel
      # No crop in this config: the image drawn for novel class k shows k.
      if tag != -1:
        assert novel_index[tag] in values
      # The label is the table of its tag applied to a pool image of that tag (maybe flipped).
      table = tables[pool.table_index(int(tag))]
      candidates = [table[raw[e.image_id]] for e in pool.entries if e.tag == tag]
      assert any(np.array_equal(label, c) or np.array_equal(label, c[:, ::-1]) for c in candidates)


def test_fewshot_iterator_covers_the_pool_each_epoch(fast_config, shapes_pool):
  builder, pool = shapes_pool
  size = len(pool.entries)
  batches = take(
    fewshot.create_fewshot_iterator(
      fast_config.data, builder, pool, LAYOUT, seed=0, include_tag=True
    ),
    -(-2 * size // 4),
  )
  tags = np.concatenate([b["tag"] for b in batches])
  expected = collections.Counter(e.tag for e in pool.entries)
  assert collections.Counter(tags[:size].tolist()) == expected
  assert collections.Counter(tags[size : 2 * size].tolist()) == expected
  assert not np.array_equal(tags[:size], tags[size : 2 * size])  # Reshuffled per epoch.


def test_fewshot_iterator_resume_and_process_slices(fast_config, shapes_pool, monkeypatch):
  builder, pool = shapes_pool

  def make(layout=LAYOUT, **kw):
    return fewshot.create_fewshot_iterator(fast_config.data, builder, pool, layout, 7, **kw)

  full = take(make(), 5)
  resumed = take(make(start_step=3), 2)
  for a, b in zip(full[3:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # Two processes: each takes its half of every global batch.
  halves = []
  for p in range(2):
    halves.append(take(make(batching.batch_layout(4, 2, 2, p), start_step=1), 2))
  for t in range(2):
    for key in ("image", "label"):
      joined = np.concatenate([halves[0][t][key], halves[1][t][key]])
      np.testing.assert_array_equal(joined, full[1 + t][key])


def test_fewshot_iterator_missing_image(fast_config, shapes_pool):
  builder, pool = shapes_pool
  bad = fewshot.FewShotPool(
    (fewshot.PoolEntry("nope", -1, 0),), 1, 0, pool.seen_classes, pool.novel_classes
  )
  with pytest.raises(ValueError, match="not in split"):
    fewshot.create_fewshot_iterator(fast_config.data, builder, bad, LAYOUT, seed=0)


# ---------------------------------------------------------------------------------------------
# SPNet's own VOC lists.


def test_lists_from_spnet_pickle():
  pkl = os.path.join(VOC_SPLIT_DIR, "inverse_dict_train.pkl")
  ids_path = os.path.join(VOC_SPLIT_DIR, "train_ids.txt")
  if not (os.path.exists(pkl) and os.path.exists(ids_path)):
    pytest.skip(f"SPNet reference files absent ({VOC_SPLIT_DIR}).")
  lists = fewshot.lists_from_spnet_pickle(pkl, ids_path)
  positions = safe_pickle.load_pickle(pkl)
  with open(ids_path) as file:
    ids = [line.strip() for line in file if line.strip()]
  assert sorted(lists) == sorted(int(k) for k in positions)
  for c in range(1, 21):
    assert len(lists[c]) >= 20, c
    for offset in range(len(lists[c]) // 20):
      for n in (1, 2, 5, 10, 20):
        got = lists[c][offset * 20 : offset * 20 + n]
        assert got == [ids[p] for p in positions[c][offset * 20 : offset * 20 + n]]
  pool = fewshot.build_pool(lists, splits.get_split("voc_sbd", "spnet"), n=1, offset=1)
  first = {e.tag: e.image_id for e in pool.entries if e.tag != -1}
  assert first == {k: ids[positions[k][20]] for k in (16, 17, 18, 19, 20)}
