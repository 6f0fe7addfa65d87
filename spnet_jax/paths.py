"""Every file the project reads or writes, on the local disk or in a bucket (gs://) alike.

One layer, etils.epath, which Orbax and TFDS use too. For gs:// epath goes through
TensorFlow's gfile when TensorFlow is installed (always, here), or through fsspec and gcsfs
when the environment sets EPATH_USE_TF=false (the tests do, to reach a local GCS emulator:
TensorFlow's filesystem has no endpoint setting). Local paths behave as before: '~' expands and
a relative path starts at the current directory.

Never os.path.abspath a URI: abspath('gs://b/run') is '<cwd>/gs:/b/run', a local folder.
"""

import io
import json
import os

import numpy as np
from etils import epath

from spnet_jax.errors import UserError

PathLike = str | os.PathLike


def is_uri(path: PathLike) -> bool:
  """Whether `path` names a remote file system (gs://, s3://, ...) rather than a local path."""
  return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """`path` as an epath.Path, a local '~' expanded."""
  path = os.fspath(path)
  return epath.Path(path if is_uri(path) else os.path.expanduser(path))


def absolute(path: PathLike) -> epath.Path:
  """`path` made absolute from the current directory (what Orbax needs); a URI as it is."""
  path = os.fspath(path)
  return epath.Path(path if is_uri(path) else os.path.abspath(os.path.expanduser(path)))


def exists(path: PathLike) -> bool:
  return as_path(path).exists()


def makedirs(path: PathLike) -> epath.Path:
  """The folder `path`, created with its parents where needed; returns it."""
  folder = as_path(path)
  # A bucket has no folders: writing an object is enough, and mkdir on a bucket's root could
  # try to create the bucket.
  if not is_uri(path):
    folder.mkdir(parents=True, exist_ok=True)
  return folder


def read_bytes(path: PathLike) -> bytes:
  return as_path(path).read_bytes()


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path`, creating its folder (a bucket object appears whole or not at all)."""
  makedirs(os.path.dirname(os.fspath(path)) or ".")
  as_path(path).write_bytes(data)


def read_text(path: PathLike) -> str:
  return read_bytes(path).decode("utf-8")


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def read_json(path: PathLike, missing: str = ""):
  """The JSON value in `path`.

  Args:
    path: the file.
    missing: appended to the error when the file does not exist, e.g. the command that writes it.

  Raises:
    UserError: `path` does not exist.
  """
  target = as_path(path)
  if not target.exists():
    raise UserError(f"{path} does not exist" + (f": {missing}" if missing else "."))
  return json.loads(read_text(target))


def write_json(path: PathLike, value) -> None:
  """`value` as indented JSON."""
  write_text(path, json.dumps(value, indent=2) + "\n")


# np.load, np.savez, savefig and PIL seek in their files, which a bucket object cannot do while
# it is written: these files (small) pass through memory.


def load_array(path: PathLike, allow_pickle: bool = False) -> np.ndarray:
  """The array of an .npy file."""
  return np.load(io.BytesIO(read_bytes(path)), allow_pickle=allow_pickle)


def save_array(path: PathLike, array: np.ndarray) -> None:
  """Writes an .npy file."""
  buffer = io.BytesIO()
  np.save(buffer, array)
  write_bytes(path, buffer.getvalue())


def load_arrays(path: PathLike) -> dict[str, np.ndarray]:
  """The arrays of an .npz file."""
  with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as stored:
    return {key: stored[key] for key in stored.files}


def save_arrays(path: PathLike, **arrays: np.ndarray) -> None:
  """Writes an .npz file (uncompressed, as np.savez)."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes(path, buffer.getvalue())


def save_figure(path: PathLike, figure, dpi: int = 120) -> None:
  """Writes a matplotlib figure as a PNG."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  write_bytes(path, buffer.getvalue())
