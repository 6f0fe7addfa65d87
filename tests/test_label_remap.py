"""Label remap tables on the real label values of COCO-Stuff and VOC (no reference files)."""

from spnet_jax.data import splits


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
  # motorcycle (val), cow and wall-concrete (unseen), values outside the label set, unlabeled.
  for value in (3, 20, 171, 182, 200, 254, 255):
    assert table[value] == splits.IGNORE_LABEL
  final = splits.remap_table(coco.train_classes)  # The final model trains val as seen.
  assert final[3] == 3 and final[20] == splits.IGNORE_LABEL
  assert sorted(final[final != splits.IGNORE_LABEL].tolist()) == list(range(167))
  evaluation = splits.eval_label_table(coco)
  assert evaluation[20] == 20 and evaluation[171] == 171 and evaluation[255] == 255
  # Evaluation keeps dataset ids; ZLSS then scores only the unseen ones (evaluation/eval_step.py).
  assert evaluation[200] == splits.IGNORE_LABEL
  assert sorted(evaluation[evaluation != splits.IGNORE_LABEL].tolist()) == list(range(182))
