"""The xlsa17 benchmark files (Xian et al. 2018): ResNet-101 features, attributes and splits.

One dataset folder (`<data.path>/<name>/`, e.g. `xlsa17/data/CUB/`) holds:
  res101.mat      'features' [2048, N] (one column per image), 'labels' [N, 1] (1-based class
                  indices), 'image_files' (unused here).
  att_splits.mat  'att' [d, C] class attribute vectors (one column per class), 'allclasses_names',
                  and 1-based image indices 'trainval_loc', 'test_seen_loc', 'test_unseen_loc',
                  'train_loc', 'val_loc'.
Everything is returned 0-based: images are rows, classes are rows of the attribute matrix.
"""

import dataclasses
import os

import numpy as np
import scipy.io

from spnet_jax import paths
from spnet_jax.errors import UserError

FEATURES_FILE = "res101.mat"
SPLITS_FILE = "att_splits.mat"
LOC_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")


@dataclasses.dataclass(frozen=True)
class ZslDataset:
  """One xlsa17 dataset, 0-based.

  Attributes:
    name: dataset folder name ('CUB', 'SUN', 'AWA1', 'AWA2').
    features: [N, D] float32 image features.
    labels: [N] int64 class index of each image.
    attributes: [C, d] float32 class attribute vectors (rows, as stored).
    class_names: the C class names.
    locs: image indices of each split in LOC_KEYS ([n] int64 each).
  """

  name: str
  features: np.ndarray
  labels: np.ndarray
  attributes: np.ndarray
  class_names: tuple[str, ...]
  locs: dict[str, np.ndarray]

  @property
  def num_classes(self) -> int:
    return self.attributes.shape[0]

  def classes_of(self, loc_key: str) -> np.ndarray:
    """Sorted classes of the images of split `loc_key`."""
    return np.unique(self.labels[self.locs[loc_key]])

  @property
  def seen_classes(self) -> np.ndarray:
    """Classes trained on (those of 'trainval_loc')."""
    return self.classes_of("trainval_loc")

  @property
  def unseen_classes(self) -> np.ndarray:
    """Test classes never trained on (those of 'test_unseen_loc')."""
    return self.classes_of("test_unseen_loc")

  def counts(self) -> dict[str, int]:
    """Images per split, class counts and dimensions (for results.json)."""
    return {
      **{f"images_{k}": int(v.size) for k, v in self.locs.items()},
      "images": int(self.labels.size),
      "classes": self.num_classes,
      "seen_classes": int(self.seen_classes.size),
      "unseen_classes": int(self.unseen_classes.size),
      "feature_dim": int(self.features.shape[1]),
      "attribute_dim": int(self.attributes.shape[1]),
    }


def dataset_dir(data_path: str, name: str) -> str:
  """The folder of one dataset inside the xlsa17 data folder."""
  return os.path.join(data_path, name)


def load_dataset(data_path: str, name: str) -> ZslDataset:
  """Reads `<data_path>/<name>/res101.mat` and `att_splits.mat` and checks their consistency.

  Args:
    data_path: the xlsa17 'data' folder (holding CUB/, SUN/, AWA1/, AWA2/).
    name: dataset folder name.

  Returns:
    The dataset, 0-based.

  Raises:
    UserError: a file or key is missing, shapes disagree, an index is out of range, or the
      seen (trainval) and unseen (test_unseen) classes overlap.
  """
  directory = dataset_dir(data_path, name)
  features_path = os.path.join(directory, FEATURES_FILE)
  splits_path = os.path.join(directory, SPLITS_FILE)
  res = _load_mat(features_path, ("features", "labels"), name, data_path)
  att = _load_mat(splits_path, ("att", *LOC_KEYS), name, data_path)

  labels = np.asarray(res["labels"]).reshape(-1).astype(np.int64)
  num_images = labels.size
  features = np.asarray(res["features"], np.float32)
  if features.ndim != 2 or num_images not in features.shape:
    raise UserError(
      f"{features_path}: 'features' has shape {features.shape} but 'labels' has {num_images} "
      "entries; expected [feature_dim, N] (one column per image) as in xlsa17."
    )
  # xlsa17 stores one column per image; accept the transposed layout too (N is not ambiguous).
  if features.shape[1] != num_images:
    features = features.T
  features = np.ascontiguousarray(features.T)

  attributes = np.asarray(att["att"], np.float32)
  if attributes.ndim != 2:
    raise UserError(f"{splits_path}: 'att' must be a [d, C] matrix, got shape {attributes.shape}.")
  attributes = np.ascontiguousarray(attributes.T)
  num_classes = attributes.shape[0]
  if labels.min() < 1 or labels.max() > num_classes:
    raise UserError(
      f"{features_path}: 'labels' must be 1-based class indices in [1, {num_classes}] (the "
      f"columns of 'att' in {splits_path}); found [{labels.min()}, {labels.max()}]."
    )
  labels = labels - 1

  locs = {}
  for key in LOC_KEYS:
    loc = np.asarray(att[key]).reshape(-1).astype(np.int64)
    if loc.size == 0 or loc.min() < 1 or loc.max() > num_images:
      found = f"[{loc.min()}, {loc.max()}]" if loc.size else "no entries"
      raise UserError(
        f"{splits_path}: '{key}' must hold 1-based image indices in [1, {num_images}] (the "
        f"images of {features_path}); found {found}."
      )
    locs[key] = loc - 1

  dataset = ZslDataset(
    name=name,
    features=features,
    labels=labels,
    attributes=attributes,
    class_names=_class_names(att.get("allclasses_names"), num_classes),
    locs=locs,
  )
  _check_splits(dataset, splits_path)
  return dataset


def _load_mat(path: str, keys: tuple[str, ...], name: str, data_path: str) -> dict:
  if not paths.exists(path):
    raise UserError(
      f"Missing {path}: expected the xlsa17 file {os.path.basename(path)} of dataset {name!r} "
      f"in {dataset_dir(data_path, name)}. Set --config.data.path to the unpacked xlsa17 'data' "
      "folder (holding CUB/, SUN/, AWA1/, AWA2/) and --config.data.name to one of them."
    )
  with paths.as_path(path).open("rb") as file:
    contents = scipy.io.loadmat(file)
  missing = [k for k in keys if k not in contents]
  if missing:
    present = sorted(k for k in contents if not k.startswith("__"))
    raise UserError(
      f"{path} lacks the key(s) {missing} (it holds {present}); expected the xlsa17 "
      f"{os.path.basename(path)} with keys {list(keys)}."
    )
  return contents


def _class_names(cell, num_classes: int) -> tuple[str, ...]:
  """Names from a MATLAB cell array of strings; 'class_<i>' where the file has none."""
  if cell is None:
    return tuple(f"class_{i}" for i in range(num_classes))
  names = [str(np.asarray(n).reshape(-1)[0]) if np.size(n) else "" for n in cell.reshape(-1)]
  if len(names) != num_classes:
    return tuple(f"class_{i}" for i in range(num_classes))
  return tuple(names)


def _check_splits(dataset: ZslDataset, splits_path: str) -> None:
  """The class-level guarantees the protocol relies on."""

  def overlap(a: str, b: str, what: str) -> None:
    common = np.intersect1d(dataset.classes_of(a), dataset.classes_of(b))
    if common.size:
      shown = [dataset.class_names[c] for c in common[:5]]
      raise UserError(
        f"{splits_path}: the classes of '{a}' and '{b}' must be disjoint ({what}), but "
        f"{common.size} are in both, e.g. {shown}. Use the unmodified xlsa17 att_splits.mat."
      )

  overlap("trainval_loc", "test_unseen_loc", "seen vs unseen classes")
  overlap("train_loc", "val_loc", "the val classes play the unseen classes in calibration")
  stray = np.setdiff1d(dataset.classes_of("test_seen_loc"), dataset.seen_classes)
  if stray.size:
    raise UserError(
      f"{splits_path}: 'test_seen_loc' has images of {stray.size} class(es) that 'trainval_loc' "
      f"never shows (e.g. {dataset.class_names[stray[0]]!r}); test_seen must hold seen classes."
    )
  leaked = np.intersect1d(dataset.locs["trainval_loc"], dataset.locs["test_seen_loc"])
  if leaked.size:
    raise UserError(
      f"{splits_path}: {leaked.size} image(s) are in both 'trainval_loc' and 'test_seen_loc' "
      "(test images must not be trained on)."
    )
