"""Tests for spnet_jax/embeddings/class_embeddings.py: .npy / .pkl, normalisation, attributes."""

import math
import os
import pickle

import ml_collections
import numpy as np
import pytest

from spnet_jax.data import splits
from spnet_jax.embeddings import class_embeddings as embeddings

from .conftest import SHARED


def _config(source: str, paths: str = "", data_name: str = "voc") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict({"name": data_name})
  config.embeddings = ml_collections.ConfigDict(
    {"source": source, "paths": paths, "extra_dim": 0, "seed": 0}
  )
  return config


def _split(num_classes: int) -> splits.ClassSplit:
  names = tuple(f"c{i}" for i in range(num_classes))
  return splits.ClassSplit(names, seen=(0, 1), val=(), unseen=(2,))


# ---------------------------------------------------------------------------------------------
# load_npy.


def test_load_npy_reads_float64(tmp_path):
  path = tmp_path / "w.npy"
  matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
  np.save(path, matrix)
  got = embeddings.load_npy(str(path), 3)
  assert got.dtype == np.float64
  np.testing.assert_array_equal(got, matrix)


def test_load_npy_missing_file(tmp_path):
  path = tmp_path / "absent.npy"
  with pytest.raises(ValueError, match="does not exist") as info:
    embeddings.load_npy(str(path), 3)
  assert str(path) in str(info.value)


def test_load_npy_wrong_row_count(tmp_path):
  path = tmp_path / "rows.npy"
  np.save(path, np.ones((4, 5)))
  with pytest.raises(ValueError) as info:
    embeddings.load_npy(str(path), 7)
  message = str(info.value)
  assert str(path) in message
  assert "4 rows" in message and "7 classes" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_load_npy_non_finite(tmp_path, bad):
  path = tmp_path / "nan.npy"
  matrix = np.ones((3, 2))
  matrix[1, 0] = bad
  np.save(path, matrix)
  with pytest.raises(ValueError, match="NaN or infinite"):
    embeddings.load_npy(str(path), 3)


@pytest.mark.parametrize("shape", [(3,), (3, 2, 1)])
def test_load_npy_not_2d(tmp_path, shape):
  path = tmp_path / "dims.npy"
  np.save(path, np.ones(shape))
  with pytest.raises(ValueError, match=r"expected \[num_classes, dim\]") as info:
    embeddings.load_npy(str(path), 3)
  assert str(shape) in str(info.value)


# ---------------------------------------------------------------------------------------------
# l2_normalize.


def test_l2_normalize_hand_case():
  got = embeddings.l2_normalize(np.array([[3.0, 4.0], [0.0, -2.0], [1.0, 1.0]]))
  expected = np.array([[0.6, 0.8], [0.0, -1.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_l2_normalize_zero_row_raises():
  with pytest.raises(ValueError, match=r"\[1, 3\]"):
    embeddings.l2_normalize(np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0]]))


# ---------------------------------------------------------------------------------------------
# Attribute embeddings.


def test_attribute_embeddings_hand_rows():
  names = ("background", "red-disc", "green-triangle", "yellow-annulus")
  got = embeddings.attribute_embeddings(names)
  expected = np.array(
    [
      # red green blue yellow | disc square triangle annulus | background
      [0, 0, 0, 0, 0, 0, 0, 0, 1],
      [1, 0, 0, 0, 1, 0, 0, 0, 0],
      [0, 1, 0, 0, 0, 0, 1, 0, 0],
      [0, 0, 0, 1, 0, 0, 0, 1, 0],
    ],
    np.float64,
  )
  np.testing.assert_array_equal(got, expected)


def test_attribute_embeddings_all_shapes_classes_distinct():
  got = embeddings.attribute_embeddings(splits.SHAPES_CLASS_NAMES)
  assert got.shape == (17, 9)
  assert len({tuple(row) for row in got}) == 17
  np.testing.assert_array_equal(got[1:, :4].sum(1), 1)
  np.testing.assert_array_equal(got[1:, 4:8].sum(1), 1)


def test_attribute_embeddings_extra_dim():
  names = splits.SHAPES_CLASS_NAMES
  base = embeddings.attribute_embeddings(names)
  wide = embeddings.attribute_embeddings(names, extra_dim=5, seed=3)
  assert wide.shape == (17, 14)
  np.testing.assert_array_equal(wide[:, :9], base)
  # The extra columns are a fixed linear function of the attribute columns.
  solution, *_ = np.linalg.lstsq(base, wide[:, 9:], rcond=None)
  np.testing.assert_allclose(base @ solution, wide[:, 9:], atol=1e-10)
  np.testing.assert_array_equal(wide, embeddings.attribute_embeddings(names, 5, seed=3))
  assert not np.allclose(wide, embeddings.attribute_embeddings(names, 5, seed=4))


# ---------------------------------------------------------------------------------------------
# load_class_embeddings.


def test_load_class_embeddings_two_files(tmp_path):
  rng = np.random.default_rng(0)
  first = rng.normal(size=(3, 4)) * np.array([[1.0], [10.0], [0.1]])
  second = rng.normal(size=(3, 2)) * 7.0
  np.save(tmp_path / "ft.npy", first)
  np.save(tmp_path / "w2v.npy", second)
  paths = f"{tmp_path / 'ft.npy'}, {tmp_path / 'w2v.npy'}"
  got = embeddings.load_class_embeddings(_config("npy", paths), _split(3))
  assert got.dtype == np.float32 and got.shape == (3, 6)
  expected = np.zeros((3, 6))
  for row in range(3):
    a = first[row] / math.sqrt(sum(v * v for v in first[row]))
    b = second[row] / math.sqrt(sum(v * v for v in second[row]))
    both = np.concatenate([a, b])
    expected[row] = both / math.sqrt(sum(v * v for v in both))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
  # Each half carries exactly half of the squared norm.
  np.testing.assert_allclose(np.sum(got[:, :4] ** 2, axis=1), 0.5, rtol=1e-6)


def test_load_class_embeddings_hand_case(tmp_path):
  np.save(tmp_path / "a.npy", np.array([[3.0, 4.0], [0.0, 5.0], [1.0, 0.0]]))
  np.save(tmp_path / "b.npy", np.array([[2.0], [-1.0], [0.5]]))
  paths = f"{tmp_path / 'a.npy'},{tmp_path / 'b.npy'}"
  got = embeddings.load_class_embeddings(_config("npy", paths), _split(3))
  s = 1 / math.sqrt(2)
  expected = np.array([[0.6 * s, 0.8 * s, s], [0.0, s, -s], [s, 0.0, s]])
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_load_class_embeddings_attributes_are_unit_norm():
  config = _config("attributes", data_name="shapes")
  split = splits.get_split("shapes", "default")
  got = embeddings.load_class_embeddings(config, split)
  assert got.shape == (17, 9) and got.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
  # red-disc: colour and shape one-hots, each 1 / sqrt(2).
  np.testing.assert_allclose(got[1, [0, 4]], [1 / math.sqrt(2)] * 2, rtol=1e-6)


@pytest.mark.parametrize(
  ("config", "match"),
  [
    (_config("attributes", data_name="voc"), "only for the shapes"),
    (_config("npy", paths=""), "config.embeddings.paths"),
    (_config("glove"), "config.embeddings.source"),
  ],
)
def test_load_class_embeddings_config_errors(config, match):
  with pytest.raises(ValueError, match=match):
    embeddings.load_class_embeddings(config, _split(3))


def test_load_class_embeddings_zero_row_raises(tmp_path):
  np.save(tmp_path / "z.npy", np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
  with pytest.raises(ValueError, match="all zeros"):
    embeddings.load_class_embeddings(_config("npy", str(tmp_path / "z.npy")), _split(3))


# ---------------------------------------------------------------------------------------------
# .pkl files and the 'files' source.


def _pickle(path, value) -> str:
  path.write_bytes(pickle.dumps(value, protocol=3))
  return str(path)


def test_load_pkl_reads_float64(tmp_path):
  matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
  got = embeddings.load_pkl(_pickle(tmp_path / "w.pkl", matrix), 3)
  assert got.dtype == np.float64
  np.testing.assert_array_equal(got, matrix)


def test_load_pkl_wrong_row_count(tmp_path):
  path = _pickle(tmp_path / "rows.pkl", np.ones((5, 8)))
  with pytest.raises(ValueError, match="has 5 rows but the dataset has 17 classes") as info:
    embeddings.load_pkl(path, 17)
  assert path in str(info.value)


@pytest.mark.parametrize(
  ("value", "match"),
  [
    ({"w": np.ones((3, 2))}, "holds a dict of arrays"),
    (np.ones((3, 2), np.complex64), "complex64 values"),
    (np.ones((3, 2), bool), "bool values"),
    (np.ones(3), r"expected \[num_classes, dim\]"),
  ],
)
def test_load_pkl_not_a_matrix(tmp_path, value, match):
  path = _pickle(tmp_path / "odd.pkl", value)
  with pytest.raises(ValueError, match=match) as info:
    embeddings.load_pkl(path, 3)
  assert path in str(info.value)


class _Marker:
  def __init__(self, path: str):
    self.path = path

  def __reduce__(self):
    return (np.save, (self.path, np.zeros(1)))


def test_load_class_embeddings_refuses_code_in_a_pkl(tmp_path):
  marker = str(tmp_path / "marker.npy")
  path = _pickle(tmp_path / "evil.pkl", _Marker(marker))
  with pytest.raises(pickle.UnpicklingError, match=r"Refused global 'numpy\.save'"):
    embeddings.load_class_embeddings(_config("files", path), _split(3))
  assert not os.path.exists(marker)


def test_load_matrix_unknown_suffix(tmp_path):
  path = tmp_path / "w.txt"
  path.write_text("1 2\n")
  with pytest.raises(ValueError, match=r"suffix '\.txt'; valid: \('\.npy', '\.pkl'\)"):
    embeddings.load_matrix(str(path), 1)


@pytest.mark.parametrize("source", ["files", "npy"])
def test_load_class_embeddings_mixes_npy_and_pkl(tmp_path, source):
  rng = np.random.default_rng(5)
  first, second = rng.normal(size=(3, 4)), rng.normal(size=(3, 2)) * 3.0
  np.save(tmp_path / "ft.npy", first)
  paths = f"{tmp_path / 'ft.npy'},{_pickle(tmp_path / 'w2v.pkl', second)}"
  got = embeddings.load_class_embeddings(_config(source, paths), _split(3))
  both = np.concatenate(
    [
      first / np.linalg.norm(first, axis=1)[:, None],
      second / np.linalg.norm(second, axis=1)[:, None],
    ],
    axis=1,
  )
  np.testing.assert_allclose(got, both / math.sqrt(2), rtol=1e-6)


@pytest.mark.parametrize(("dataset", "name"), [("cocostuff", "coco_stuff"), ("voc12", "voc_sbd")])
def test_load_class_embeddings_from_spnet_reference_pkl(dataset, name):
  folder = os.path.join(SHARED, "spnet_reference", dataset, "word_vectors")
  if not os.path.isdir(folder):
    pytest.skip(f"SPNet reference files absent ({folder}); they come from subhc/SPNet.")
  paths = ",".join(os.path.join(folder, f) for f in ("fasttext.pkl", "word2vec.pkl"))
  split = splits.get_split(name, "spnet")
  got = embeddings.load_class_embeddings(_config("files", paths, data_name=name), split)
  assert got.shape == (split.num_classes, 600) and got.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
  # SPNet's ft+w2v embedding: each half carries half of the squared norm.
  np.testing.assert_allclose(np.sum(got[:, :300] ** 2, axis=1), 0.5, rtol=1e-5)
