"""Padded batches for any device count, epoch orders, and per-process, resumable record reads."""

import numpy as np
import pytest

from spnet_jax.data import batching, datasets, pipeline, records, splits

IGNORE = splits.IGNORE_LABEL


@pytest.mark.parametrize(
  "batch, devices, accumulation, padded",
  [
    (10, 1, 1, 10),
    (10, 8, 1, 16),  # the paper's batch on a v5e-8 / v4-8 host: 6 padding rows
    (10, 4, 1, 12),
    (10, 3, 1, 12),
    (10, 5, 1, 10),
    (10, 8, 2, 16),  # COCO: 2 micro-batches of 5, each padded to 8
    (10, 3, 2, 12),  # 2 micro-batches of 5, each padded to 6
    (16, 8, 1, 16),
  ],
)
def test_padded_batch_size(batch, devices, accumulation, padded):
  assert batching.padded_batch_size(batch, devices, accumulation) == padded
  micro = padded // accumulation
  assert micro % devices == 0 and micro >= batch // accumulation


def test_padding_keeps_each_micro_batch():
  # Micro-batch j takes rows j, j + k, ... (train/step.py): the real images it holds must be
  # those of the unpadded batch, so padding goes after the B real rows.
  batch, k = 10, 2
  padded = batching.padded_batch_size(batch, 8, k)
  rows = np.arange(padded)
  for j in range(k):
    real = [r for r in rows[j::k] if r < batch]
    assert real == list(range(batch)[j::k])


def test_layout_rows_over_processes():
  layouts = [batching.batch_layout(10, 8, 4, p) for p in range(4)]  # 16 rows, 4 per process
  assert [lay.local_size for lay in layouts] == [4, 4, 4, 4]
  assert [list(lay.real_rows) for lay in layouts] == [
    [0, 1, 2, 3],
    [4, 5, 6, 7],
    [8, 9],
    [],
  ]
  with pytest.raises(ValueError, match="accumulation_steps"):
    batching.padded_batch_size(10, 2, 3)


def test_epoch_order_is_a_new_permutation_every_epoch():
  order = records.EpochOrder(7, seed=3)
  stream = order.records(np.arange(21))
  epochs = stream.reshape(3, 7)
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(7))
  assert len({tuple(e) for e in epochs}) == 3
  # A function of (seed, k) only: any slice, in any order, gives the same records.
  np.testing.assert_array_equal(order.records(np.arange(20, 5, -1)), stream[20:5:-1])
  np.testing.assert_array_equal(records.EpochOrder(7, seed=3).records(np.arange(21)), stream)
  assert not np.array_equal(records.EpochOrder(7, seed=4).records(np.arange(21)), stream)


def test_process_parts_cover_the_split_once():
  for count, processes in [(24, 1), (24, 5), (3, 4), (101, 8)]:
    parts = [records.process_part(count, processes, p) for p in range(processes)]
    assert [i for part in parts for i in part] == list(range(count))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


class _ReadLog:
  """Records the stream positions whose records are read, and how many records are read."""

  def __init__(self, monkeypatch):
    self.examples, self.records = [], 0
    records_of, read_storage = records.EpochOrder.records, records.SplitRecords._read_storage

    def logged_examples(order, examples):
      self.examples.extend(np.asarray(examples).tolist())
      return records_of(order, examples)

    def logged_reads(split, indices):
      self.records += len(indices)
      return read_storage(split, indices)

    monkeypatch.setattr(records.EpochOrder, "records", logged_examples)
    monkeypatch.setattr(records.SplitRecords, "_read_storage", logged_reads)


def _stream(config, builder, layout, start_step=0):
  classes = splits.get_split("shapes", "default").train_classes
  return pipeline.create_train_iterator(config.data, builder, classes, layout, 5, start_step)


def test_padded_stream_holds_the_unpadded_batch(fast_config):
  fast_config.data.cache = False
  builder = datasets.get_builder(fast_config)
  plain = _stream(fast_config, builder, batching.batch_layout(5, 1, 1, 0))
  padded = _stream(fast_config, builder, batching.batch_layout(5, 4, 1, 0))
  for _ in range(3):
    a, b = next(plain), next(padded)
    assert b["image"].shape[0] == 8 and b["mask"].tolist() == [True] * 5 + [False] * 3
    np.testing.assert_array_equal(b["image"][:5], a["image"])
    np.testing.assert_array_equal(b["label"][:5], a["label"])
    assert np.all(b["label"][5:] == IGNORE) and np.all(b["image"][5:] == 0)


def test_each_process_reads_only_its_rows(fast_config, monkeypatch):
  fast_config.data.cache = False
  builder = datasets.get_builder(fast_config)
  steps = 6
  whole = _stream(fast_config, builder, batching.batch_layout(8, 1, 1, 0))
  reference = [next(whole) for _ in range(steps)]
  del whole  # stops its read-ahead
  for processes in (2, 4):
    rows = 8 // processes
    for p in range(processes):
      log = _ReadLog(monkeypatch)
      stream = _stream(fast_config, builder, batching.batch_layout(8, processes, processes, p))
      share = [next(stream) for _ in range(steps)]
      del stream
      for t in range(steps):
        np.testing.assert_array_equal(
          share[t]["image"], reference[t]["image"][p * rows : (p + 1) * rows]
        )
      # Only the records of its own rows (k = 8 t + r, r in its rows), one read per position;
      # tf.data reads a bounded number of steps ahead (its parallel maps and prefetch buffers).
      assert all(p * rows <= k % 8 < (p + 1) * rows for k in log.examples)
      assert len(set(log.examples)) == len(log.examples) == log.records
      assert steps * rows <= log.records <= rows * (steps + 64)
      monkeypatch.undo()


def test_resume_reads_no_record_of_earlier_steps(fast_config, monkeypatch):
  fast_config.data.cache = False
  builder = datasets.get_builder(fast_config)
  log = _ReadLog(monkeypatch)
  stream = _stream(fast_config, builder, batching.batch_layout(4, 1, 1, 0), start_step=1000)
  next(stream)
  del stream
  assert min(log.examples) == 1000 * 4
  assert log.records == len(log.examples) <= 4 * 64  # the first step and the read-ahead


def test_tfrecord_dataset_is_refused_with_the_conversion_command(tmp_path):
  builder = datasets.create_builder("shapes", "tiny", str(tmp_path))
  builder.download_and_prepare(file_format="tfrecord")
  with pytest.raises(ValueError, match="--convert --dataset_dir"):
    records.SplitRecords(builder, "train")
  datasets.convert_to_random_access(str(builder.data_dir))
  converted = datasets.create_builder("shapes", "tiny", str(tmp_path))
  split = records.SplitRecords(converted, "train")
  assert len(split) == converted.info.splits["train"].num_examples
  assert split.read([0])[0]
