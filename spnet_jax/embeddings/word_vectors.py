"""Class word embeddings from raw vocabulary files: fastText .vec, word2vec .bin.

Class name -> words: a class name is split on '-', '_' and whitespace ('wall-concrete' -> wall,
concrete; 'potted_plant' -> potted, plant; 'traffic light' -> traffic, light; 'tv' -> tv), and a
piece listed in WORD_OVERRIDES is replaced by its words (compounds such as VOC's 'diningtable').
Qualifiers such as 'other' and 'stuff' stay: SPNet's own vectors include them (its rows for
mirror, mirror-stuff, desk and desk-stuff span only three dimensions). Each word is looked up as
written, then in lower case; a class embedding is the mean of its words' vectors, L2-normalised.

The readers stream the file and keep only the wanted words, so memory stays small whatever the
vocabulary size (crawl-300d-2M.vec is 4.5 GB of text, GoogleNews-vectors-negative300.bin 3.6 GB).

SPNet's own .pkl matrices are read by spnet_jax/data/safe_pickle.py (no code runs from them).

Writes a dataset's matrix, one row per label value:

  python -m spnet_jax.embeddings.word_vectors --dataset coco_stuff --format fasttext \
    --input crawl-300d-2M.vec --output coco_stuff_fasttext.npy
"""

import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import BinaryIO

import numpy as np
from absl import app, flags, logging

from spnet_jax import cli, paths
from spnet_jax.data import splits
from spnet_jax.errors import UserError

# Pieces of class names that are not words of the vocabularies (one token in the dataset's class
# list, absent or rare as such in fastText crawl and GoogleNews): replaced by their words.
WORD_OVERRIDES: dict[str, tuple[str, ...]] = {
  "diningtable": ("dining", "table"),  # VOC 2012; SPNet's word2vec row is dining + table too.
  "playingfield": ("playing", "field"),  # COCO-Stuff.
  "waterdrops": ("water", "drops"),  # COCO-Stuff.
}

# Class names of every dataset the command knows, one per label value (config.data.name keys).
DATASET_CLASS_NAMES: dict[str, tuple[str, ...]] = {
  "coco_stuff": splits.COCO_STUFF_CLASS_NAMES,
  "voc_sbd": splits.VOC_CLASS_NAMES,
  "shapes": splits.SHAPES_CLASS_NAMES,
}

_NAME_SEPARATORS = re.compile(r"[-_\s]+")
# A word2vec word longer than this means the file is not in the format (or is corrupt); the
# limit keeps the buffer from growing without bound while looking for the separating space.
_MAX_WORD_BYTES = 1 << 16
_PROGRESS_LOG_FRACTION = 0.1


def class_name_words(name: str) -> list[str]:
  """The words whose mean vector is the embedding of class `name` (see the module docstring).

  Args:
    name: a class name, e.g. 'wall-concrete', 'potted_plant', 'traffic light', 'diningtable'.

  Returns:
    The words, in order, e.g. ['wall', 'concrete'] or ['dining', 'table'].
  """
  words = []
  for piece in _NAME_SEPARATORS.split(name.strip()):
    if piece:
      words.extend(WORD_OVERRIDES.get(piece.lower(), (piece,)))
  if not words:
    raise ValueError(f"Class name {name!r} has no words to look up.")
  return words


class _Progress:
  """Reports how much of a long file was read: a tqdm bar on a terminal, else a log line per 10%."""

  def __init__(self, path: str, total_bytes: int):
    self._path = path
    self._total = max(total_bytes, 1)
    self._done = 0
    self._pending = 0
    # Flushing once per ~0.1% keeps the per-line cost of a 2M-line file negligible.
    self._flush_bytes = max(self._total // 1000, 1)
    self._next_log = _PROGRESS_LOG_FRACTION
    self._bar = None
    if sys.stderr.isatty():
      try:
        import tqdm  # Optional: only for an interactive bar.

        self._bar = tqdm.tqdm(
          total=total_bytes, unit="B", unit_scale=True, desc=os.path.basename(path)
        )
      except ImportError:
        pass

  def update(self, num_bytes: int) -> None:
    self._pending += num_bytes
    if self._pending >= self._flush_bytes:
      self._flush()

  def _flush(self) -> None:
    self._done += self._pending
    if self._bar is not None:
      self._bar.update(self._pending)
    elif self._done >= self._next_log * self._total:
      logging.info("%s: %.0f%% read", self._path, 100 * self._done / self._total)
      while self._next_log * self._total <= self._done:
        self._next_log += _PROGRESS_LOG_FRACTION
    self._pending = 0

  def close(self) -> float:
    """Closes the bar; returns the fraction of the file read."""
    self._flush()
    if self._bar is not None:
      self._bar.close()
    return min(self._done / self._total, 1.0)


class _Wanted:
  """The words to keep while streaming a vocabulary, compared as UTF-8 bytes (no decoding)."""

  def __init__(self, words: Iterable[str]):
    words = set(words)
    self.exact = {w.encode("utf-8") for w in words}
    # Lower-case forms are the fallback when the word as written is absent.
    self.keys = self.exact | {w.lower().encode("utf-8") for w in words}
    self.found: dict[bytes, np.ndarray] = {}

  def wants(self, word: bytes) -> bool:
    # The first occurrence wins: the files list words by decreasing frequency.
    return word in self.keys and word not in self.found

  def add(self, word: bytes, vector: np.ndarray) -> bool:
    """Keeps `vector`; returns True when every word has been found as written (reading can stop)."""
    self.found[word] = vector
    return word in self.exact and self.exact <= self.found.keys()

  def result(self) -> dict[str, np.ndarray]:
    return {word.decode("utf-8"): vector for word, vector in self.found.items()}


def _log_done(path: str, wanted: _Wanted, fraction: float) -> None:
  logging.info(
    "%s: kept %d vectors for %d words after reading %.0f%% of the file.",
    path,
    len(wanted.found),
    len(wanted.exact),
    100 * fraction,
  )


def read_fasttext(path: str, words: Iterable[str]) -> dict[str, np.ndarray]:
  """Streams a fastText .vec text file and keeps the vectors of `words`.

  The file is 'N D' on its first line, then 'word v1 ... vD' per line (a file without the header
  line, such as GloVe's text format, works too). Lines are read one at a time; reading stops as
  soon as every word has been found as written.

  Args:
    path: the .vec file (e.g. crawl-300d-2M.vec).
    words: the words to keep; each is also looked for in lower case.

  Returns:
    word -> float32 [D] vector, for the words (and lower-case forms) found.
  """
  wanted = _Wanted(words)
  progress = _Progress(path, paths.as_path(path).stat().length)
  logging.info("Reading %s for %d words.", path, len(wanted.exact))
  dim = None
  with paths.as_path(path).open("rb") as file:
    for line_number, line in enumerate(file, start=1):
      progress.update(len(line))
      word, _, rest = line.partition(b" ")
      if line_number == 1:
        header = line.split()
        if len(header) == 2 and all(token.isdigit() for token in header):
          dim = int(header[1])
          continue
      if not wanted.wants(word):
        continue
      values = rest.split()
      if dim is None:
        dim = len(values)
      if len(values) != dim or dim == 0:
        raise UserError(
          f"{path}, line {line_number}: {word.decode('utf-8', 'replace')!r} has "
          f"{len(values)} values where {dim} were expected; not a fastText .vec file?"
        )
      if wanted.add(word, np.array(values, dtype=np.float32)):
        break
  _log_done(path, wanted, progress.close())
  return wanted.result()


class _ChunkReader:
  """Reads a binary file in fixed-size chunks, keeping at most about two chunks in memory."""

  def __init__(self, file: BinaryIO, chunk_bytes: int, progress: _Progress):
    self._file = file
    self._chunk_bytes = chunk_bytes
    self._progress = progress
    self._buffer = b""
    self._position = 0

  def _refill(self) -> bool:
    more = self._file.read(self._chunk_bytes)
    if not more:
      return False
    self._progress.update(len(more))
    self._buffer = self._buffer[self._position :] + more
    self._position = 0
    return True

  def until_space(self) -> bytes | None:
    """The bytes before the next b' ' (which is consumed too); None at the end of the file."""
    while True:
      space = self._buffer.find(b" ", self._position)
      if space >= 0:
        data = self._buffer[self._position : space]
        self._position = space + 1
        return data
      if len(self._buffer) - self._position > _MAX_WORD_BYTES:
        raise ValueError(f"no space within {_MAX_WORD_BYTES} bytes")
      if not self._refill():
        return None

  def line(self, limit: int) -> bytes:
    """The bytes up to and including the next b'\\n' (or the file's end), at most `limit`."""
    while True:
      end = self._buffer.find(b"\n", self._position, self._position + limit)
      if end >= 0 or len(self._buffer) - self._position >= limit or not self._refill():
        break
    stop = self._position + limit if end < 0 else end + 1
    data = self._buffer[self._position : stop]
    self._position += len(data)
    return data

  def take(self, size: int, keep: bool) -> bytes | None:
    """Consumes `size` bytes, returned when `keep`; None when the file ends first."""
    while len(self._buffer) - self._position < size:
      if not self._refill():
        return None
    start = self._position
    self._position += size
    return self._buffer[start : self._position] if keep else b""


def read_word2vec(
  path: str, words: Iterable[str], chunk_bytes: int = 1 << 20
) -> dict[str, np.ndarray]:
  """Streams a word2vec binary file (GoogleNews format) and keeps the vectors of `words`.

  The file is a header line 'N D', then N entries: the word's bytes up to a space, then D
  little-endian float32 values (4 * D bytes), possibly followed by a newline. The vector bytes
  may contain spaces and newlines, so entries are split by counting bytes, never by searching.

  Args:
    path: the .bin file (e.g. GoogleNews-vectors-negative300.bin).
    words: the words to keep; each is also looked for in lower case.
    chunk_bytes: size of each read; memory use is about twice this.

  Returns:
    word -> float32 [D] vector, for the words (and lower-case forms) found.
  """
  wanted = _Wanted(words)
  progress = _Progress(path, paths.as_path(path).stat().length)
  logging.info("Reading %s for %d words.", path, len(wanted.exact))
  with paths.as_path(path).open("rb") as file:
    reader = _ChunkReader(file, chunk_bytes, progress)
    header_line = reader.line(256)
    header = header_line.split()
    if len(header) != 2 or not all(token.isdigit() for token in header) or int(header[1]) == 0:
      raise UserError(
        f"{path} does not start with a word2vec header line 'N D' (got {header_line[:40]!r})."
      )
    count, dim = int(header[0]), int(header[1])
    for index in range(count):
      try:
        word = reader.until_space()
      except ValueError as error:
        raise UserError(f"{path}, entry {index}: {error}; not a word2vec binary file?") from None
      keep, data = False, None
      if word is not None:
        # The newline that may end the previous entry.
        word = word.lstrip(b"\n")
        keep = wanted.wants(word)
        data = reader.take(4 * dim, keep)
      if data is None:
        raise UserError(f"{path} ends after {index} of the {count} entries its header announces.")
      if keep and wanted.add(word, np.frombuffer(data, dtype="<f4").astype(np.float32)):
        break
  _log_done(path, wanted, progress.close())
  return wanted.result()


READERS: dict[str, Callable[[str, Iterable[str]], dict[str, np.ndarray]]] = {
  "fasttext": read_fasttext,
  "word2vec": read_word2vec,
}


def get_reader(file_format: str) -> Callable[[str, Iterable[str]], dict[str, np.ndarray]]:
  """The reader of `file_format` ('fasttext' or 'word2vec')."""
  if file_format not in READERS:
    raise UserError(f"Unknown word-vector format {file_format!r}; valid: {sorted(READERS)}.")
  return READERS[file_format]


def class_embedding_matrix(
  class_names: Sequence[str], vectors: Mapping[str, np.ndarray], source: str = "the vocabulary"
) -> np.ndarray:
  """One L2-normalised row per class: the mean of the vectors of class_name_words(name).

  Args:
    class_names: class names, one per label value.
    vectors: word -> vector; a word is looked up as written, then in lower case.
    source: where the vectors came from (the file), named in errors.

  Returns:
    float64 [len(class_names), D] matrix with unit rows.

  Raises:
    UserError: listing every missing word with the classes that need it.
  """
  missing: dict[str, list[str]] = {}
  rows = []
  for name in class_names:
    found = []
    for word in class_name_words(name):
      vector = vectors.get(word)
      if vector is None:
        vector = vectors.get(word.lower())
      if vector is None:
        missing.setdefault(word, []).append(name)
      else:
        found.append(np.asarray(vector, np.float64))
    rows.append(np.mean(found, axis=0) if found else None)
  if missing:
    listed = "; ".join(
      f"{word!r} (for {', '.join(map(repr, names))})" for word, names in missing.items()
    )
    raise UserError(
      f"{len(missing)} word(s) missing from {source}: {listed}. Use a vocabulary that has them "
      "or add the class names to spnet_jax.embeddings.word_vectors.WORD_OVERRIDES."
    )
  matrix = np.stack(rows)
  norms = np.linalg.norm(matrix, axis=1, keepdims=True)
  zero = [class_names[i] for i in np.flatnonzero(norms[:, 0] == 0)]
  if zero:
    raise UserError(f"Classes {zero} have an all-zero mean word vector in {source}.")
  return matrix / norms


def build_class_embeddings(path: str, file_format: str, class_names: Sequence[str]) -> np.ndarray:
  """Reads the words of `class_names` from a vocabulary file and returns their matrix.

  Args:
    path: a fastText .vec or word2vec .bin file.
    file_format: 'fasttext' or 'word2vec'.
    class_names: class names, one per label value.

  Returns:
    float64 [len(class_names), D] matrix with unit rows (see class_embedding_matrix).
  """
  path = str(paths.as_path(path))
  if not paths.exists(path):
    raise UserError(f"Word-vector file {path} does not exist.")
  reader = get_reader(file_format)
  words = {word for name in class_names for word in class_name_words(name)}
  return class_embedding_matrix(class_names, reader(path, words), source=path)


def write_class_embeddings(
  dataset: str, file_format: str, input_path: str, output_path: str
) -> np.ndarray:
  """Builds the [num_classes, D] matrix of `dataset` from a vocabulary file and saves it (.npy).

  Args:
    dataset: 'coco_stuff', 'voc_sbd' or 'shapes' (VOC's background row is the word 'background').
    file_format: 'fasttext' or 'word2vec'.
    input_path: the vocabulary file.
    output_path: the .npy file to write (float64, one unit row per label value).

  Returns:
    The matrix written.
  """
  if dataset not in DATASET_CLASS_NAMES:
    raise UserError(f"Unknown dataset {dataset!r}; valid: {sorted(DATASET_CLASS_NAMES)}.")
  matrix = build_class_embeddings(input_path, file_format, DATASET_CLASS_NAMES[dataset])
  paths.save_array(output_path, matrix)
  return matrix


def _define_flags() -> None:
  # Defined only when run as a command, so that importing this module (as embeddings.py does)
  # cannot clash with other commands' --dataset flags.
  flags.DEFINE_enum("dataset", None, sorted(DATASET_CLASS_NAMES), "Class list to embed.")
  flags.DEFINE_enum("format", None, sorted(READERS), "Format of --input.")
  flags.DEFINE_string("input", None, "fastText .vec or word2vec .bin vocabulary file.")
  flags.DEFINE_string("output", None, "The .npy file to write.")
  flags.mark_flags_as_required(["dataset", "format", "input", "output"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  values = flags.FLAGS
  matrix = write_class_embeddings(values.dataset, values.format, values.input, values.output)
  print(f"Wrote {values.output}: {matrix.shape[0]} classes x {matrix.shape[1]} dimensions.")


def run() -> None:
  """The `spnet-word-vectors` command (also `python -m` of this module)."""
  cli.run(main, __doc__, _define_flags)


if __name__ == "__main__":
  run()
