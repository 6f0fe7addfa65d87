"""Tests for spnet_jax/embeddings/word_vectors.py: names to words, readers, command, unpickler."""

import logging
import os
import pickle
import shlex
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from spnet_jax.data import safe_pickle, splits
from spnet_jax.embeddings import word_vectors

from .conftest import ROOT, SHARED

REFERENCE = os.path.join(SHARED, "spnet_reference")

# A vector whose float32 bytes are spaces and newlines: the binary reader must count bytes.
_SEPARATOR_BYTES_VECTOR = np.frombuffer(b"\x20\x0a\x0a\x20" * 4, dtype="<f4").copy()


def _vocabulary(dim: int = 4, seed: int = 0) -> list[tuple[str, np.ndarray]]:
  """Word and float32 vector pairs, in file order (duplicates: the first one counts)."""
  rng = np.random.default_rng(seed)
  words = [
    "the",
    "traffic",
    "light",
    "potted",
    "plant",
    "TV",
    "tv",
    "sky",
    "other",
    "café",
    "crème",
    "dining",
    "table",
    "unrelated",
    "plant",  # A later duplicate, ignored.
  ]
  vocabulary = [(word, rng.normal(size=dim).astype(np.float32)) for word in words]
  vocabulary[2] = ("light", _SEPARATOR_BYTES_VECTOR[:dim])
  return vocabulary


# Class name -> the words whose first vectors in _vocabulary() make its row.
_CLASS_WORDS = {
  "traffic light": ["traffic", "light"],
  "potted_plant": ["potted", "plant"],
  "TV": ["TV"],  # Found as written: the vector of 'TV', not of 'tv'.
  "Sky-other": ["sky", "other"],  # 'Sky' is absent; its lower-case form is used.
  "café-crème": ["café", "crème"],
  "diningtable": ["dining", "table"],
  "tv": ["tv"],
}


def _expected(vocabulary, class_words: dict[str, list[str]]) -> np.ndarray:
  first = {}
  for word, vector in vocabulary:
    first.setdefault(word, vector.astype(np.float64))
  rows = np.stack([np.mean([first[w] for w in words], axis=0) for words in class_words.values()])
  return rows / np.sqrt(np.sum(rows**2, axis=1, keepdims=True))


def _write_vec(path, vocabulary, header: bool = True) -> str:
  with open(path, "w", encoding="utf-8") as file:
    if header:
      file.write(f"{len(vocabulary)} {len(vocabulary[0][1])}\n")
    for word, vector in vocabulary:
      # 9 significant digits round-trip float32 exactly; fastText also ends lines with a space.
      file.write(word + " " + " ".join(f"{v:.9g}" for v in vector) + " \n")
  return str(path)


def _write_bin(path, vocabulary, count: int | None = None) -> str:
  with open(path, "wb") as file:
    file.write(f"{count or len(vocabulary)} {len(vocabulary[0][1])}\n".encode())
    for index, (word, vector) in enumerate(vocabulary):
      file.write(word.encode("utf-8") + b" " + vector.astype("<f4").tobytes())
      # GoogleNews ends entries with a newline; other writers do not: both must parse.
      if index % 2 == 0:
        file.write(b"\n")
  return str(path)


def _write(kind: str, path, vocabulary) -> str:
  return _write_vec(path, vocabulary) if kind == "fasttext" else _write_bin(path, vocabulary)


# ---------------------------------------------------------------------------------------------
# Class name -> words.


@pytest.mark.parametrize(
  ("name", "words"),
  [
    ("wall-concrete", ["wall", "concrete"]),
    ("potted_plant", ["potted", "plant"]),
    ("traffic light", ["traffic", "light"]),
    ("tv", ["tv"]),
    ("diningtable", ["dining", "table"]),
    ("aeroplane", ["aeroplane"]),
    ("playingfield", ["playing", "field"]),
    ("desk-stuff", ["desk", "stuff"]),
    ("  Traffic  Light ", ["Traffic", "Light"]),
  ],
)
def test_class_name_words(name, words):
  assert word_vectors.class_name_words(name) == words


@pytest.mark.parametrize(
  "names",
  [splits.COCO_STUFF_CLASS_NAMES, splits.VOC_CLASS_NAMES, splits.SHAPES_CLASS_NAMES],
  ids=["coco_stuff", "voc", "shapes"],
)
def test_class_name_words_covers_every_class_name(names):
  for name in names:
    words = word_vectors.class_name_words(name)
    assert words, name
    for word in words:
      # Plain lower-case words: no empty pieces and no separators left behind.
      assert word.isalpha() and word.islower(), (name, word)


@pytest.mark.parametrize("name", ["", " - _ "])
def test_class_name_without_words_raises(name):
  with pytest.raises(ValueError, match="has no words"):
    word_vectors.class_name_words(name)


# ---------------------------------------------------------------------------------------------
# Readers and the class matrix.


@pytest.mark.parametrize("kind", ["fasttext", "word2vec"])
def test_matrix_equals_numpy(tmp_path, kind):
  vocabulary = _vocabulary()
  path = _write(kind, tmp_path / f"vocab.{kind}", vocabulary)
  got = word_vectors.build_class_embeddings(path, kind, list(_CLASS_WORDS))
  assert got.dtype == np.float64 and got.shape == (len(_CLASS_WORDS), 4)
  np.testing.assert_allclose(got, _expected(vocabulary, _CLASS_WORDS), rtol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("kind", ["fasttext", "word2vec"])
def test_reader_keeps_only_wanted_words_and_first_duplicate(tmp_path, kind):
  vocabulary = _vocabulary()
  path = _write(kind, tmp_path / "vocab", vocabulary)
  got = word_vectors.get_reader(kind)(path, ["plant", "Light", "café"])
  # 'Light' is absent as written: its lower-case form is kept instead.
  assert sorted(got) == ["café", "light", "plant"]
  np.testing.assert_array_equal(got["plant"], vocabulary[4][1])
  np.testing.assert_array_equal(got["light"], _SEPARATOR_BYTES_VECTOR[:4])
  assert all(v.dtype == np.float32 for v in got.values())


def test_fasttext_without_header_line(tmp_path):
  vocabulary = _vocabulary()
  path = _write_vec(tmp_path / "glove.txt", vocabulary, header=False)
  got = word_vectors.build_class_embeddings(path, "fasttext", list(_CLASS_WORDS))
  np.testing.assert_allclose(got, _expected(vocabulary, _CLASS_WORDS), rtol=1e-12)


def test_fasttext_wrong_value_count_names_the_line(tmp_path):
  path = tmp_path / "bad.vec"
  path.write_text("2 3\ncat 1 2 3\ndog 1 2\n")
  with pytest.raises(ValueError, match="line 3: 'dog' has 2 values where 3"):
    word_vectors.read_fasttext(str(path), ["dog"])


def test_word2vec_bad_header(tmp_path):
  path = tmp_path / "bad.bin"
  path.write_bytes(b"cat 1.0 2.0\n")
  with pytest.raises(ValueError, match="word2vec header"):
    word_vectors.read_word2vec(str(path), ["cat"])


def test_word2vec_truncated_file(tmp_path):
  vocabulary = _vocabulary()
  path = _write_bin(tmp_path / "short.bin", vocabulary, count=len(vocabulary) + 3)
  with pytest.raises(ValueError, match=f"ends after {len(vocabulary)} of the"):
    word_vectors.read_word2vec(path, ["absent"])


def test_word2vec_stops_once_every_word_is_found(tmp_path):
  # The header announces more entries than the file holds; reading never gets there.
  path = _write_bin(tmp_path / "short.bin", _vocabulary(), count=1000)
  got = word_vectors.read_word2vec(path, ["traffic", "tv"])
  assert sorted(got) == ["traffic", "tv"]


@pytest.mark.parametrize("kind", ["fasttext", "word2vec"])
def test_missing_words_are_listed_in_one_error(tmp_path, kind):
  path = _write(kind, tmp_path / "vocab", _vocabulary())
  names = ["traffic light", "zebra crossing", "zebra", "Sky-blue", "potted_plant"]
  with pytest.raises(ValueError) as info:
    word_vectors.build_class_embeddings(path, kind, names)
  message = str(info.value)
  assert message.startswith(f"3 word(s) missing from {path}:")
  assert "'zebra' (for 'zebra crossing', 'zebra')" in message
  assert "'crossing' (for 'zebra crossing')" in message
  assert "'blue' (for 'Sky-blue')" in message
  assert "traffic" not in message and "plant" not in message


def test_missing_input_file(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    word_vectors.build_class_embeddings(str(tmp_path / "absent.vec"), "fasttext", ["cat"])


def test_unknown_format():
  with pytest.raises(ValueError, match=r"valid: \['fasttext', 'word2vec'\]"):
    word_vectors.get_reader("glove")


def test_progress_is_logged(tmp_path, caplog):
  path = _write_vec(tmp_path / "vocab.vec", _vocabulary())
  caplog.set_level(logging.INFO)
  word_vectors.read_fasttext(path, ["absent"])
  assert "100% read" in caplog.text
  assert "kept 0 vectors for 1 words after reading 100% of the file" in caplog.text


@pytest.mark.parametrize("kind", ["fasttext", "word2vec"])
def test_reading_streams_a_large_file(tmp_path, kind):
  dim = 300
  rng = np.random.default_rng(1)
  filler = rng.normal(size=dim).astype(np.float32)
  path = str(tmp_path / "large")
  # About 36 MB of irrelevant words, the wanted ones last so that the whole file is read.
  count = 30_000 if kind == "word2vec" else 12_000
  wanted = [("cat", rng.normal(size=dim).astype(np.float32)), ("dog", filler)]
  if kind == "fasttext":
    text = " ".join(f"{v:.9g}" for v in filler)
    with open(path, "w") as file:
      file.write(f"{count + 2} {dim}\n")
      for index in range(count):
        file.write(f"filler{index} {text}\n")
      for word, vector in wanted:
        file.write(word + " " + " ".join(f"{v:.9g}" for v in vector) + "\n")
  else:
    record = filler.astype("<f4").tobytes()
    with open(path, "wb") as file:
      file.write(f"{count + 2} {dim}\n".encode())
      for index in range(count):
        file.write(f"filler{index} ".encode() + record + b"\n")
      for word, vector in wanted:
        file.write(word.encode() + b" " + vector.astype("<f4").tobytes())
  size = os.path.getsize(path)
  assert size > 30e6
  tracemalloc.start()
  try:
    got = word_vectors.get_reader(kind)(path, ["cat", "dog"])
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  np.testing.assert_array_equal(got["cat"], wanted[0][1])
  np.testing.assert_array_equal(got["dog"], filler)
  assert peak < size / 8, f"peak {peak} bytes while reading a {size}-byte file"


# ---------------------------------------------------------------------------------------------
# The command.


def _dataset_vocabulary(names, dim: int, seed: int) -> list[tuple[str, np.ndarray]]:
  words = sorted({w for name in names for w in word_vectors.class_name_words(name)})
  rng = np.random.default_rng(seed)
  return [("filler", rng.normal(size=dim).astype(np.float32))] + [
    (word, rng.normal(size=dim).astype(np.float32)) for word in words
  ]


def test_command_writes_the_voc_matrix(tmp_path):
  vocabulary = _dataset_vocabulary(splits.VOC_CLASS_NAMES, dim=6, seed=2)
  source = _write_bin(tmp_path / "GoogleNews.bin", vocabulary)
  output = tmp_path / "out" / "voc_word2vec.npy"
  command = [sys.executable, "-m", "spnet_jax.embeddings.word_vectors", "--dataset=voc_sbd"]
  command += ["--format=word2vec", f"--input={source}", f"--output={output}"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "21 classes x 6 dimensions" in result.stdout
  class_words = {name: [name] for name in splits.VOC_CLASS_NAMES}
  class_words.update({"diningtable": ["dining", "table"], "potted_plant": ["potted", "plant"]})
  got = np.load(output)
  assert got.dtype == np.float64 and got.shape == (21, 6)
  np.testing.assert_allclose(got, _expected(vocabulary, class_words), rtol=1e-12)


def test_command_requires_its_flags(tmp_path):
  command = [sys.executable, "-m", "spnet_jax.embeddings.word_vectors", "--dataset=voc_sbd"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "--format" in result.stderr


@pytest.mark.parametrize(("dataset", "rows"), [("coco_stuff", 182), ("shapes", 17)])
def test_write_class_embeddings(tmp_path, dataset, rows):
  names = word_vectors.DATASET_CLASS_NAMES[dataset]
  source = _write_vec(tmp_path / "crawl.vec", _dataset_vocabulary(names, dim=5, seed=3))
  output = str(tmp_path / f"{dataset}.npy")
  matrix = word_vectors.write_class_embeddings(dataset, "fasttext", source, output)
  np.testing.assert_array_equal(np.load(output), matrix)
  assert matrix.shape == (rows, 5)
  np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-12)


def test_write_class_embeddings_unknown_dataset(tmp_path):
  with pytest.raises(ValueError, match="Unknown dataset 'ade20k'"):
    word_vectors.write_class_embeddings("ade20k", "fasttext", "x.vec", str(tmp_path / "o.npy"))


# ---------------------------------------------------------------------------------------------
# The restricted unpickler.


class _ShellCommand:
  def __init__(self, command: str):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


class _NumpySave:
  def __init__(self, path: str):
    self.path = path

  def __reduce__(self):
    return (np.save, (self.path, np.zeros(1)))


def _pickle_file(path, value, protocol: int = pickle.DEFAULT_PROTOCOL) -> str:
  path.write_bytes(pickle.dumps(value, protocol=protocol))
  return str(path)


@pytest.mark.parametrize(
  ("payload", "refused"),
  [
    (
      lambda marker: _ShellCommand(f"touch {shlex.quote(marker)}"),
      f"{os.system.__module__}.system",
    ),
    (lambda marker: _NumpySave(marker), "numpy.save"),
    (lambda marker: {"rows": np.ones(2), "evil": _ShellCommand(f"touch {marker}")}, ".system"),
  ],
  ids=["os.system", "numpy.save", "inside_a_dict"],
)
def test_unpickler_refuses_code(tmp_path, payload, refused):
  marker = str(tmp_path / "marker.npy")
  path = _pickle_file(tmp_path / "evil.pkl", payload(marker))
  with pytest.raises(pickle.UnpicklingError, match="Refused global") as info:
    safe_pickle.load_pickle(path)
  assert refused in str(info.value) and path in str(info.value)
  assert not os.path.exists(marker)
  # The payload is live: an unrestricted load does write the marker.
  with open(path, "rb") as file:
    pickle.load(file)
  assert os.path.exists(marker)


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize(
  "value",
  [
    np.arange(12, dtype=np.float64).reshape(3, 4),
    np.arange(12, dtype=np.float32).reshape(3, 4).T,  # Not contiguous.
    {0: np.arange(5), "w": np.ones((2, 3))},
    [np.zeros((2, 2)), np.arange(3, dtype=np.int64)],
  ],
  ids=["float64", "float32_transposed", "dict", "list"],
)
def test_unpickler_accepts_arrays(tmp_path, protocol, value):
  got = safe_pickle.load_pickle(_pickle_file(tmp_path / "ok.pkl", value, protocol))
  assert type(got) is type(value)
  items = value.items() if isinstance(value, dict) else enumerate(value)
  if isinstance(value, np.ndarray):
    items = [(None, value)]
    got = {None: got}
  for key, array in items:
    assert got[key].dtype == array.dtype
    np.testing.assert_array_equal(got[key], array)


def test_unpickler_refuses_old_protocols(tmp_path):
  # Protocols 0-2 encode bytes through _codecs.encode, which is not on the list.
  path = _pickle_file(tmp_path / "old.pkl", np.ones(3), protocol=2)
  with pytest.raises(pickle.UnpicklingError, match=r"'_codecs\.encode'"):
    safe_pickle.load_pickle(path)


@pytest.mark.parametrize(
  ("value", "match"),
  [
    (3, "holds a int"),
    (np.float64(1.5), "holds a float64"),
    ({"w": np.ones(2), "name": "x"}, "holds a str"),
    ([np.ones(2), None], "holds a NoneType"),
    (np.array([1, "a"], dtype=object), "array of Python objects"),
  ],
)
def test_unpickler_refuses_non_arrays(tmp_path, value, match):
  path = _pickle_file(tmp_path / "other.pkl", value)
  with pytest.raises(ValueError, match=match):
    safe_pickle.load_pickle(path)


# ---------------------------------------------------------------------------------------------
# SPNet's published word vectors.


def _reference(dataset: str, kind: str) -> np.ndarray:
  path = os.path.join(REFERENCE, dataset, "word_vectors", f"{kind}.pkl")
  if not os.path.exists(path):
    pytest.skip(f"SPNet reference files absent ({path}); they come from subhc/SPNet.")
  return safe_pickle.load_pickle(path)


@pytest.mark.parametrize("kind", ["fasttext", "word2vec", "glove"])
@pytest.mark.parametrize(("dataset", "rows"), [("cocostuff", 182), ("voc12", 21)])
def test_reference_word_vectors(dataset, rows, kind):
  matrix = _reference(dataset, kind)
  assert isinstance(matrix, np.ndarray)
  assert matrix.shape == (rows, 300) and matrix.dtype == np.float64
  # Rows are unit length to float32 precision (norms 1 - 7e-7 at worst); none is zero, not
  # even VOC's background row (0), which SPNet embeds although it ignores the class.
  np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-6)
  assert len({tuple(row) for row in matrix}) == rows


@pytest.mark.parametrize("kind", ["fasttext", "word2vec", "glove"])
def test_reference_keeps_qualifier_words(kind):
  # mirror-stuff = mean(mirror, stuff) and desk-stuff = mean(desk, stuff): the four rows span
  # three dimensions, so SPNet kept 'stuff' (and the class_name_words rule does too).
  matrix = _reference("cocostuff", kind)
  index = splits.COCO_STUFF_CLASS_NAMES.index
  rows = matrix[[index(n) for n in ("mirror", "mirror-stuff", "desk", "desk-stuff")]]
  singular = np.linalg.svd(rows, compute_uv=False)
  assert singular[3] < 1e-6 * singular[0] and singular[2] > 0.1 * singular[0]


def test_reference_word2vec_splits_diningtable():
  voc = _reference("voc12", "word2vec")
  coco = _reference("cocostuff", "word2vec")
  dining = voc[splits.VOC_CLASS_NAMES.index("diningtable")]
  np.testing.assert_allclose(dining, coco[splits.COCO_STUFF_CLASS_NAMES.index("dining table")])
