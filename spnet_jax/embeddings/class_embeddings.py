"""Class embedding matrices W: loaded from .npy / .pkl files or built from the shapes attributes."""

import os

import ml_collections
import numpy as np

from spnet_jax import paths
from spnet_jax.data import safe_pickle, splits
from spnet_jax.errors import UserError

# 'files' reads config.embeddings.paths; 'npy' is its older name, kept as an alias.
SOURCES = ("attributes", "files", "npy")
FILE_SUFFIXES = (".npy", ".pkl")


def l2_normalize(rows: np.ndarray) -> np.ndarray:
  """Rows scaled to unit length (an all-zero row is an error: it cannot be a class)."""
  norms = np.linalg.norm(rows, axis=-1, keepdims=True)
  if np.any(norms == 0):
    raise UserError(
      f"Class embedding rows {np.flatnonzero(norms[:, 0] == 0).tolist()} are "
      "all zeros; every class needs a non-zero embedding."
    )
  return rows / norms


def _existing(path: str) -> str:
  path = str(paths.as_path(path))
  if not paths.exists(path):
    raise UserError(f"Class embedding file {path} (config.embeddings.paths) does not exist.")
  return path


def _checked_matrix(matrix: np.ndarray, path: str, num_classes: int) -> np.ndarray:
  if matrix.ndim != 2:
    raise UserError(
      f"Class embedding file {path} holds an array of shape {matrix.shape}; "
      "expected [num_classes, dim]."
    )
  if matrix.shape[0] != num_classes:
    raise UserError(
      f"Class embedding file {path} has {matrix.shape[0]} rows but the dataset has "
      f"{num_classes} classes (one row per label value 0..{num_classes - 1} is needed)."
    )
  if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
    raise UserError(f"Class embedding file {path} holds {matrix.dtype} values; expected floats.")
  if not np.all(np.isfinite(matrix)):
    raise UserError(f"Class embedding file {path} contains NaN or infinite values.")
  return matrix.astype(np.float64)


def load_npy(path: str, num_classes: int) -> np.ndarray:
  """Reads a [num_classes, d] float matrix (one row per label value) from a .npy file."""
  path = _existing(path)
  return _checked_matrix(paths.load_array(path), path, num_classes)


def load_pkl(path: str, num_classes: int) -> np.ndarray:
  """Reads a [num_classes, d] matrix from a pickled numpy array (SPNet's word_vectors/*.pkl).

  The pickle is loaded with safe_pickle.load_pickle, which refuses everything but numpy arrays:
  a pickle can run code, so a .pkl from elsewhere must never reach pickle.load.
  """
  path = _existing(path)
  value = safe_pickle.load_pickle(path)
  if not isinstance(value, np.ndarray):
    raise UserError(
      f"Class embedding file {path} holds a {type(value).__name__} of arrays; expected one "
      "array [num_classes, dim]."
    )
  return _checked_matrix(value, path, num_classes)


def load_matrix(path: str, num_classes: int) -> np.ndarray:
  """Reads a [num_classes, d] matrix from a .npy or .pkl file, chosen by the file's suffix."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".npy":
    return load_npy(path, num_classes)
  if suffix == ".pkl":
    return load_pkl(path, num_classes)
  raise UserError(
    f"Class embedding file {path} (config.embeddings.paths) has suffix {suffix!r}; valid: "
    f"{FILE_SUFFIXES}. Convert vocabulary files with `python -m spnet_jax.embeddings.word_vectors`."
  )


def attribute_embeddings(
  class_names: tuple[str, ...], extra_dim: int = 0, seed: int = 0
) -> np.ndarray:
  """Shapes attribute vectors [one-hot colour | one-hot shape | background flag].

  Args:
    class_names: the shapes class names ('background', 'red-disc', ...).
    extra_dim: if > 0, append a fixed random projection of the attributes with this many
      dimensions, to give the head a wider embedding space (d_w = 9 + extra_dim).
    seed: seed of that projection.

  Returns:
    float64 [C, 9 + extra_dim] matrix, rows not yet normalised.
  """
  colours, kinds = splits.SHAPE_COLOURS, splits.SHAPE_KINDS
  rows = np.zeros((len(class_names), len(colours) + len(kinds) + 1))
  for index, name in enumerate(class_names):
    if name == "background":
      rows[index, -1] = 1.0
      continue
    colour, kind = name.split("-")
    rows[index, colours.index(colour)] = 1.0
    rows[index, len(colours) + kinds.index(kind)] = 1.0
  if extra_dim > 0:
    projection = np.random.default_rng(seed).normal(size=(rows.shape[1], extra_dim))
    rows = np.concatenate([rows, rows @ projection / np.sqrt(rows.shape[1])], axis=1)
  return rows


def load_class_embeddings(
  config: ml_collections.ConfigDict, split: splits.ClassSplit
) -> np.ndarray:
  """The L2-normalised float32 class embedding matrix [num_classes, d_w] of config.embeddings.

  source='files' (alias 'npy') reads config.embeddings.paths, comma-separated .npy or .pkl files
  (e.g. fastText then word2vec): each is normalised per class, they are concatenated and the
  result normalised again, as SPNet does.
  """
  cfg = config.embeddings
  if cfg.source == "attributes":
    if config.data.name != "shapes":
      raise UserError(
        "config.embeddings.source='attributes' exists only for the shapes "
        f"dataset, not {config.data.name!r}; use source='files'."
      )
    matrix = attribute_embeddings(split.class_names, cfg.extra_dim, cfg.seed)
  elif cfg.source in ("files", "npy"):
    paths = [p.strip() for p in (cfg.paths or "").split(",") if p.strip()]
    if not paths:
      raise UserError(
        f"config.embeddings.source={cfg.source!r} needs config.embeddings.paths: a "
        "comma-separated list of .npy or .pkl files, one row per class."
      )
    parts = [l2_normalize(load_matrix(p, split.num_classes)) for p in paths]
    matrix = np.concatenate(parts, axis=1)
  else:
    raise UserError(f"Unknown config.embeddings.source {cfg.source!r}; valid: {SOURCES}.")
  return l2_normalize(matrix).astype(np.float32)
