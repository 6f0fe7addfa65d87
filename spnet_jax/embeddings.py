"""Class embedding matrices W: loaded from .npy files or built from the shapes attributes."""

import os

import ml_collections
import numpy as np

from spnet_jax.data import splits

SOURCES = ("attributes", "npy")


def l2_normalize(rows: np.ndarray) -> np.ndarray:
  """Rows scaled to unit length (an all-zero row is an error: it cannot be a class)."""
  norms = np.linalg.norm(rows, axis=-1, keepdims=True)
  if np.any(norms == 0):
    raise ValueError(
      f"Class embedding rows {np.flatnonzero(norms[:, 0] == 0).tolist()} are "
      "all zeros; every class needs a non-zero embedding."
    )
  return rows / norms


def load_npy(path: str, num_classes: int) -> np.ndarray:
  """Reads a [num_classes, d] float matrix (one row per label value) from a .npy file."""
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise ValueError(f"Class embedding file {path} (config.embeddings.paths) does not exist.")
  matrix = np.load(path, allow_pickle=False)
  if matrix.ndim != 2:
    raise ValueError(
      f"Class embedding file {path} holds an array of shape {matrix.shape}; "
      "expected [num_classes, dim]."
    )
  if matrix.shape[0] != num_classes:
    raise ValueError(
      f"Class embedding file {path} has {matrix.shape[0]} rows but the dataset has "
      f"{num_classes} classes (one row per label value 0..{num_classes - 1} is needed)."
    )
  if not np.all(np.isfinite(matrix)):
    raise ValueError(f"Class embedding file {path} contains NaN or infinite values.")
  return matrix.astype(np.float64)


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

  Several .npy files (e.g. fastText and word2vec) are each normalised per class, concatenated
  and normalised again, as SPNet does.
  """
  cfg = config.embeddings
  if cfg.source == "attributes":
    if config.data.name != "shapes":
      raise ValueError(
        "config.embeddings.source='attributes' exists only for the shapes "
        f"dataset, not {config.data.name!r}; use source='npy'."
      )
    matrix = attribute_embeddings(split.class_names, cfg.extra_dim, cfg.seed)
  elif cfg.source == "npy":
    if not cfg.paths:
      raise ValueError(
        "config.embeddings.source='npy' needs config.embeddings.paths: a "
        "comma-separated list of .npy files, one row per class."
      )
    paths = [p.strip() for p in cfg.paths.split(",") if p.strip()]
    parts = [l2_normalize(load_npy(p, split.num_classes)) for p in paths]
    matrix = np.concatenate(parts, axis=1)
  else:
    raise ValueError(f"Unknown config.embeddings.source {cfg.source!r}; valid: {SOURCES}.")
  return l2_normalize(matrix).astype(np.float32)
