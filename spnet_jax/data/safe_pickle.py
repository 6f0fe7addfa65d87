"""SPNet's .pkl files (word vectors, few-label lists) without running code from them.

Unpickling can run arbitrary code: a pickle names callables (any importable function, os.system
included) that the loader calls. load_pickle therefore resolves only the few numpy globals that
rebuild plain arrays and refuses all others.
"""

import io
import pickle
from typing import Any

import numpy as np

from spnet_jax import paths
from spnet_jax.errors import UserError

try:  # numpy >= 2 keeps its internals in numpy._core; numpy 1.x in numpy.core.
  from numpy._core import multiarray as _multiarray
  from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
  from numpy.core import multiarray as _multiarray
  from numpy.core import numeric as _numeric

# Globals a pickle of plain numpy arrays needs (protocols 3-5, numpy 1.x and 2.x module names).
# Anything else, including other numpy functions such as numpy.save, is refused.
_PICKLE_GLOBALS: dict[str, Any] = {
  "numpy.core.multiarray._reconstruct": _multiarray._reconstruct,
  "numpy._core.multiarray._reconstruct": _multiarray._reconstruct,
  "numpy.core.multiarray.scalar": _multiarray.scalar,
  "numpy._core.multiarray.scalar": _multiarray.scalar,
  # Protocol 5 rebuilds contiguous arrays from an in-band buffer.
  "numpy.core.numeric._frombuffer": _numeric._frombuffer,
  "numpy._core.numeric._frombuffer": _numeric._frombuffer,
  "numpy.ndarray": np.ndarray,
  "numpy.dtype": np.dtype,
}
ALLOWED_PICKLE_GLOBALS = frozenset(_PICKLE_GLOBALS)


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that rebuilds numpy arrays and builtin containers and nothing else.

  A pickle is a program: its GLOBAL opcodes name any importable callable and REDUCE calls it,
  so loading an untrusted .pkl with pickle.load can run code. find_class is the only way a
  pickle reaches a callable, so resolving only ALLOWED_PICKLE_GLOBALS closes that door. Dicts,
  lists, tuples, strings and numbers have their own opcodes and need no globals.
  """

  def find_class(self, module: str, name: str) -> Any:
    key = f"{module}.{name}"
    if key not in _PICKLE_GLOBALS:
      raise pickle.UnpicklingError(
        f"Refused global {key!r}: only numpy arrays (and dicts or lists of them) may be loaded "
        "from a pickle, because unpickling anything else can run code."
      )
    return _PICKLE_GLOBALS[key]


def _check_array(value: Any, path: str) -> None:
  if not isinstance(value, np.ndarray):
    raise UserError(
      f"{path} holds a {type(value).__name__}; expected a numpy array or a dict or list of "
      "numpy arrays."
    )
  if value.dtype.hasobject:
    raise UserError(f"{path} holds an array of Python objects; expected numbers.")


def load_pickle(path: str) -> np.ndarray | dict[Any, np.ndarray] | list[np.ndarray]:
  """Loads a .pkl holding a numpy array, or a dict or list of them, through RestrictedUnpickler.

  Pickles written by Python 3 with protocol 3 or newer load (SPNet's files use protocol 3);
  older protocols encode bytes through _codecs.encode, which is refused: re-save them.

  Args:
    path: the .pkl file.

  Returns:
    The array, or the dict or list of arrays.

  Raises:
    pickle.UnpicklingError: the pickle names a global other than the numpy array ones.
    UserError: the pickle holds something other than arrays.
  """
  # Read whole (SPNet's .pkl files are small): local or in a bucket alike.
  with io.BytesIO(paths.read_bytes(path)) as file:
    try:
      # latin1 lets Python 2 pickles of arrays (byte strings) load; Python 3 pickles ignore it.
      value = RestrictedUnpickler(file, encoding="latin1").load()
    except pickle.UnpicklingError as error:
      raise pickle.UnpicklingError(f"{path}: {error}") from None
  if isinstance(value, dict):
    for item in value.values():
      _check_array(item, path)
  elif isinstance(value, list):
    for item in value:
      _check_array(item, path)
  else:
    _check_array(value, path)
  return value
