"""Tests for coco_stuff.py and voc_sbd.py: fake manual directories in the real file formats."""

import io
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from spnet_jax.data import coco_stuff, manual_checks, voc_sbd
from spnet_jax.testing import fake_data

BUILDERS = {"coco_stuff": coco_stuff.CocoStuff, "voc_sbd": voc_sbd.VocSbd}
README = "README.md, section 'Datasets'"


def prepare(dataset: str, manual_dir: str | None, data_dir: str) -> tfds.core.DatasetBuilder:
  builder = BUILDERS[dataset](data_dir=data_dir)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=config)
  return builder


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, dict]:
  """{image id: example}, with the image also as its stored bytes."""
  decoders = {"image": tfds.decode.SkipDecoding()}
  raw = {
    ex["image_id"].decode(): ex["image"]
    for ex in tfds.as_numpy(builder.as_dataset(split, decoders=decoders))
  }
  examples = {}
  for ex in tfds.as_numpy(builder.as_dataset(split)):
    image_id = ex["image_id"].decode()
    examples[image_id] = {**ex, "image_bytes": raw[image_id]}
  return examples


def check_split(fake: fake_data.FakeManualDir, examples: dict, split: str, ids: tuple) -> None:
  """Images are the original JPEG bytes, labels the exact label indices of the PNGs."""
  assert sorted(examples) == sorted(ids)
  for image_id, ex in examples.items():
    with open(fake.image_path(split, image_id), "rb") as f:
      jpeg = f.read()
    assert ex["image_bytes"] == jpeg
    np.testing.assert_array_equal(ex["image"], tf.io.decode_jpeg(jpeg, channels=3).numpy())
    with Image.open(fake.label_path(split, image_id)) as png:
      # For a palette PNG np.asarray gives the palette indices: the labels.
      expected = np.asarray(png)
    assert ex["label"].shape == (*expected.shape, 1)
    assert ex["label"].dtype == np.uint8
    np.testing.assert_array_equal(ex["label"][..., 0], expected)


def label_values(examples: dict) -> set[int]:
  return set(np.unique(np.concatenate([ex["label"].ravel() for ex in examples.values()])).tolist())


def test_coco_stuff_prepares_every_image(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "coco_stuff", 4, 3)
  builder = prepare("coco_stuff", fake.manual_dir, str(tmp_path / "tfds"))
  assert builder.info.splits["train"].num_examples == 4
  assert builder.info.splits["test"].num_examples == 3
  train, test = read_split(builder, "train"), read_split(builder, "test")
  check_split(fake, train, "train", fake.train_ids)
  check_split(fake, test, "test", fake.test_ids)
  assert "000000000009" in train
  # Unseen classes (cow, wall-concrete) and unlabeled pixels survive as they are.
  values = label_values(train) | label_values(test)
  assert {fake_data.COCO_COW, fake_data.COCO_WALL_CONCRETE, 255} <= values
  assert max(values - {255}) <= 181


def test_coco_stuff_id_lists_fix_the_splits(tmp_path):
  fake = fake_data.write_fake_manual_dir(
    tmp_path / "manual", "coco_stuff", 2, 2, id_lists=True, num_unlisted=2
  )
  builder = prepare("coco_stuff", fake.manual_dir, str(tmp_path / "tfds"))
  assert builder.info.splits["test"].num_examples == 2
  check_split(fake, read_split(builder, "test"), "test", fake.test_ids)
  check_split(fake, read_split(builder, "train"), "train", fake.train_ids)


def test_voc_sbd_reads_palette_labels_as_indices(tmp_path):
  fake = fake_data.write_fake_manual_dir(
    tmp_path / "manual", "voc_sbd", 5, 3, palette_labels=True, num_unlisted=1
  )
  with Image.open(fake.label_path("train", fake.train_ids[0])) as png:
    assert png.mode == "P"
  builder = prepare("voc_sbd", fake.manual_dir, str(tmp_path / "tfds"))
  assert builder.info.splits["train"].num_examples == 5
  assert builder.info.splits["test"].num_examples == 3
  train, test = read_split(builder, "train"), read_split(builder, "test")
  check_split(fake, train, "train", fake.train_ids)
  check_split(fake, test, "test", fake.test_ids)
  values = label_values(train) | label_values(test)
  assert {0, 16, 17, 18, 19, 20, 255} <= values
  assert values <= set(range(21)) | {255}


def test_voc_sbd_greyscale_labels(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "voc_sbd", 1, 1)
  builder = prepare("voc_sbd", fake.manual_dir, str(tmp_path / "tfds"))
  check_split(fake, read_split(builder, "test"), "test", fake.test_ids)


def test_realistic_fake_images(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path, "coco_stuff", 1, 1, realistic=True)
  path = fake.image_path("train", fake.train_ids[0])
  with Image.open(path) as image:
    assert (image.format, image.size) == ("JPEG", (640, 480))
  # Photo-like content compresses like a photo (about 100 kB here; COCO averages 160 kB).
  assert os.path.getsize(path) > 40_000


# Error cases: each message names the file or folder at fault.


def expect_error(dataset: str, manual_dir: str | None, data_dir: str, *fragments: str) -> str:
  with pytest.raises(manual_checks.ManualDataError) as info:
    prepare(dataset, manual_dir, data_dir)
  message = str(info.value)
  for fragment in fragments:
    assert fragment in message, f"{fragment!r} not in:\n{message}"
  return message


@pytest.mark.parametrize("dataset", sorted(BUILDERS))
def test_missing_manual_dir(tmp_path, dataset):
  missing = str(tmp_path / "nowhere")
  layout = "train2017/*.jpg" if dataset == "coco_stuff" else "SegmentationClassAug/*.png"
  message = expect_error(dataset, missing, str(tmp_path / "tfds"), missing, README, layout)
  assert "the manual directory itself" in message
  # Raised before anything was generated.
  assert not list((tmp_path / "tfds").rglob("*.tfrecord*"))


def test_no_manual_dir_given(tmp_path):
  expect_error("voc_sbd", None, str(tmp_path / "tfds"), "manual", README, "--manual_dir")


def test_empty_manual_dir(tmp_path):
  (tmp_path / "manual").mkdir()
  expect_error("coco_stuff", str(tmp_path / "manual"), str(tmp_path / "tfds"), README)


def test_incomplete_coco_stuff(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "coco_stuff", 1, 1)
  shutil.rmtree(os.path.join(fake.manual_dir, "stuffthingmaps", "val2017"))
  os.remove(fake.image_path("train", fake.train_ids[0]))
  message = expect_error(
    "coco_stuff",
    fake.manual_dir,
    str(tmp_path / "tfds"),
    "stuffthingmaps/val2017/ (folder not found)",
    "train2017/ (holds no *.jpg files)",
    README,
  )
  assert "  - val2017/" not in message


def test_incomplete_voc_sbd(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "voc_sbd", 1, 1)
  os.remove(os.path.join(fake.manual_dir, "test_ids.txt"))
  expect_error(
    "voc_sbd", fake.manual_dir, str(tmp_path / "tfds"), "test_ids.txt (file not found)", README
  )


def test_label_size_differs_from_image(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "coco_stuff", 1, 1, size=(48, 64))
  label_path = fake.label_path("test", fake.test_ids[0])
  Image.fromarray(np.zeros((40, 64), np.uint8)).save(label_path)
  expect_error(
    "coco_stuff",
    fake.manual_dir,
    str(tmp_path / "tfds"),
    label_path,
    fake.image_path("test", fake.test_ids[0]),
    "40x64",
    "48x64",
  )


@pytest.mark.parametrize(("dataset", "bad"), [("coco_stuff", 200), ("voc_sbd", 21)])
def test_label_values_outside_label_set(tmp_path, dataset, bad):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", dataset, 1, 1)
  label_path = fake.label_path("train", fake.train_ids[0])
  label = np.asarray(Image.open(label_path)).copy()
  label[0, :3] = bad
  Image.fromarray(label).save(label_path)
  expect_error(dataset, fake.manual_dir, str(tmp_path / "tfds"), label_path, str(bad))


def test_rgb_label_rejected(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "voc_sbd", 1, 1, palette_labels=True)
  label_path = fake.label_path("test", fake.test_ids[0])
  with Image.open(label_path) as png:
    png.convert("RGB").save(label_path)
  expect_error("voc_sbd", fake.manual_dir, str(tmp_path / "tfds"), label_path, "RGB colour")


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_undecodable_image(tmp_path, damage):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "coco_stuff", 1, 1)
  image_path = fake.image_path("train", fake.train_ids[0])
  with open(image_path, "rb") as f:
    jpeg = f.read()
  with open(image_path, "wb") as f:
    f.write(b"not a JPEG, just text\n" if damage == "text" else jpeg[: len(jpeg) // 2])
  expect_error("coco_stuff", fake.manual_dir, str(tmp_path / "tfds"), image_path, "Cannot decode")


def test_undecodable_label(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "voc_sbd", 1, 1)
  label_path = fake.label_path("train", fake.train_ids[0])
  with open(label_path, "rb") as f:
    png = f.read()
  with open(label_path, "wb") as f:
    f.write(png[: len(png) // 2])
  expect_error("voc_sbd", fake.manual_dir, str(tmp_path / "tfds"), label_path, "Cannot decode")


@pytest.mark.parametrize("missing", ["image", "label"])
def test_listed_id_without_files(tmp_path, missing):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "voc_sbd", 2, 1)
  image_id = fake.train_ids[1]
  path = (fake.image_path if missing == "image" else fake.label_path)("train", image_id)
  os.remove(path)
  expect_error(
    "voc_sbd",
    fake.manual_dir,
    str(tmp_path / "tfds"),
    f"id {image_id}",
    f"{missing} {path}",
    os.path.join(fake.manual_dir, "train_ids.txt"),
  )
  assert not list((tmp_path / "tfds").rglob("*.tfrecord*"))


def test_coco_stuff_test_id_without_files(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "coco_stuff", 1, 1, id_lists=True)
  with open(os.path.join(fake.manual_dir, "test_ids.txt"), "a") as f:
    f.write("000000999999\n")
  expect_error(
    "coco_stuff",
    fake.manual_dir,
    str(tmp_path / "tfds"),
    "id 000000999999",
    os.path.join(fake.manual_dir, "val2017", "000000999999.jpg"),
    os.path.join(fake.manual_dir, "stuffthingmaps", "val2017", "000000999999.png"),
  )


def test_coco_stuff_image_without_label(tmp_path):
  fake = fake_data.write_fake_manual_dir(tmp_path / "manual", "coco_stuff", 2, 1)
  label_path = fake.label_path("train", fake.train_ids[0])
  os.remove(label_path)
  expect_error("coco_stuff", fake.manual_dir, str(tmp_path / "tfds"), fake.train_ids[0], label_path)


def test_read_label_accepts_grey_rgb_and_16_bit(tmp_path):
  labels = np.array([[0, 20, 255], [181, 3, 0]], np.uint8)
  for name, image in [
    ("rgb.png", Image.fromarray(np.repeat(labels[..., None], 3, axis=-1))),
    ("wide.png", Image.fromarray(labels.astype(np.uint16))),
  ]:
    image.save(tmp_path / name)
    data, decoded = manual_checks.read_label(tmp_path / name, coco_stuff.NUM_CLASSES)
    np.testing.assert_array_equal(decoded, labels)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), labels)


REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "spnet_reference")


@pytest.mark.parametrize(
  ("path", "count"),
  [
    ("cocostuff/split/test_ids.txt", 5000),
    ("voc12/split/train_ids.txt", 10582),
    ("voc12/split/test_ids.txt", 1449),
  ],
)
def test_reads_spnet_id_lists(path, count):
  full = os.path.join(REFERENCE, path)
  if not os.path.exists(full):
    pytest.skip(f"SPNet reference files not found at {REFERENCE}")
  assert len(manual_checks.read_id_list(epath.Path(full))) == count
