"""Reads and checks manually downloaded segmentation data for the COCO-Stuff and VOC builders.

The builders never download anything: they read image and label files that the user unpacked
into a manual directory. Everything here turns a bad manual directory into a `ManualDataError`
that names the file or folder at fault and says what to do, instead of a crash deep in TFDS or,
worse, a silently wrong dataset.
"""

import dataclasses
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from spnet_jax.data import splits
from spnet_jax.errors import UserError

README_SECTION = "README.md, section 'Datasets'"
# Problems listed one by one in an error message; the rest are counted.
MAX_LISTED = 5
# Containers that tf.image.decode_image turns into one [H, W, C] image.
_IMAGE_FORMATS = ("JPEG", "PNG")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ManualDataError(UserError):
  """The manual directory is missing or incomplete, or holds a file that cannot be used."""


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
  """One folder or file of a manual directory.

  Attributes:
    path: relative to the manual directory, '/'-separated.
    description: what it holds and which archive it comes from.
    suffix: for a folder, the extension of the files it must hold (e.g. '.jpg'); None for a file.
    required: whether preparation fails without it.
  """

  path: str
  description: str
  suffix: str | None = None
  required: bool = True

  def pattern(self) -> str:
    return f"{self.path}/*{self.suffix}" if self.suffix else self.path


@dataclasses.dataclass(frozen=True)
class SplitSource:
  """Where the examples of one split come from.

  Attributes:
    image_dir: folder of the images, relative to the manual directory.
    label_dir: folder of the label PNGs, relative to the manual directory.
    id_list: text file (one image id a line) that fixes the split, relative to the manual
      directory; without it (when optional and absent) the split is every image of image_dir.
    id_list_required: whether the id list must exist.
    expected_size: the size of the split in the official data, to warn about partial copies.
  """

  image_dir: str
  label_dir: str
  id_list: str | None = None
  id_list_required: bool = False
  expected_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Example:
  """The files of one example."""

  image_id: str
  image_path: epath.Path
  label_path: epath.Path


def layout_text(layout: Sequence[LayoutEntry]) -> str:
  """The expected layout, one indented line per entry, for docs and error messages."""
  width = max(len(entry.pattern()) for entry in layout) + 2
  lines = []
  for entry in layout:
    optional = "" if entry.required else "(optional) "
    lines.append(f"  <manual_dir>/{entry.pattern():<{width}}{optional}{entry.description}")
  return "\n".join(lines)


def get_manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
  """The manual directory of a download manager, whether or not it exists.

  `dl_manager.manual_dir` raises a bare AssertionError when the folder is missing or empty; the
  folder's path is still needed for a useful message, so it is read from the private attribute
  in that case. Returns None where TFDS holds no path at all.
  """
  try:
    return epath.Path(dl_manager.manual_dir)
  except AssertionError:
    path = getattr(dl_manager, "_manual_dir", None)
    return epath.Path(path) if path else None


def scan_layout(
  manual_dir: epath.Path | None, dataset: str, layout: Sequence[LayoutEntry]
) -> dict[str, dict[str, epath.Path]]:
  """Checks that every required entry is present and indexes the folders.

  Args:
    manual_dir: the manual directory (None: none was given).
    dataset: TFDS name, for messages.
    layout: what the directory must hold.

  Returns:
    For each folder entry, its files with the entry's suffix as {stem: path}.

  Raises:
    ManualDataError: the directory is missing, or required entries are missing or empty. The
      message lists the expected layout and the missing pieces.
  """
  if manual_dir is None or not manual_dir.is_dir():
    raise missing_layout_error(manual_dir, dataset, layout, ["the manual directory itself"])
  indexes, missing = {}, []
  for entry in layout:
    path = manual_dir / entry.path
    if entry.suffix is None:
      if entry.required and not path.is_file():
        missing.append(f"{entry.path} (file not found)")
      continue
    if not path.is_dir():
      if entry.required:
        missing.append(f"{entry.path}/ (folder not found)")
      continue
    index = {p.stem: p for p in path.iterdir() if p.name.endswith(entry.suffix)}
    if not index and entry.required:
      missing.append(f"{entry.path}/ (holds no *{entry.suffix} files)")
    indexes[entry.path] = index
  if missing:
    raise missing_layout_error(manual_dir, dataset, layout, missing)
  return indexes


def missing_layout_error(
  manual_dir: epath.Path | None,
  dataset: str,
  layout: Sequence[LayoutEntry],
  missing: Sequence[str],
) -> ManualDataError:
  """The error for a missing or incomplete manual directory."""
  where = str(manual_dir) if manual_dir is not None else "(none given)"
  listed = "\n".join(f"  - {item}" for item in missing)
  return ManualDataError(
    f"The manual directory of {dataset} is missing or incomplete: {where}\n"
    f"Missing:\n{listed}\n"
    f"Expected layout:\n{layout_text(layout)}\n"
    "Unpack the archives into that folder as shown and run the preparation again with "
    "--manual_dir pointing at it (tfds.download.DownloadConfig(manual_dir=...) from Python). "
    f"See {README_SECTION}."
  )


def read_id_list(path: epath.Path) -> list[str]:
  """Reads a split file: one image id a line (e.g. '2007_000032'), blank lines skipped.

  Raises:
    ManualDataError: the file is empty, repeats an id, or a line is not a bare id.
  """
  ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  if not ids:
    raise ManualDataError(f"Id list {path} is empty; it must list one image id a line.")
  malformed = [i for i in ids if "/" in i or "\\" in i or len(i.split()) > 1 or "." in i]
  if malformed:
    raise ManualDataError(
      f"Id list {path} has lines that are not bare image ids, e.g. {malformed[:MAX_LISTED]}; "
      "write one id a line without folder or extension (e.g. 000000002157 or 2007_000032)."
    )
  seen, repeated = set(), []
  for image_id in ids:
    if image_id in seen:
      repeated.append(image_id)
    seen.add(image_id)
  if repeated:
    raise ManualDataError(
      f"Id list {path} repeats ids {sorted(set(repeated))[:MAX_LISTED]}; list each image once."
    )
  return ids


def plan_split(
  manual_dir: epath.Path,
  dataset: str,
  split: str,
  source: SplitSource,
  indexes: Mapping[str, Mapping[str, epath.Path]],
  image_suffix: str,
  label_suffix: str,
) -> list[Example]:
  """The examples of a split, after checking that each one has its image and its label.

  Args:
    manual_dir: the manual directory.
    dataset: TFDS name, for messages.
    split: split name, for messages.
    source: where the split comes from.
    indexes: the folder indexes returned by `scan_layout`.
    image_suffix: extension of the image files, for messages.
    label_suffix: extension of the label files, for messages.

  Returns:
    One `Example` per image id, in id-list order (else sorted by id).

  Raises:
    ManualDataError: an id of the id list has no image or no label, or (without an id list) an
      image has no label.
  """
  images, labels = indexes[source.image_dir], indexes[source.label_dir]
  image_dir, label_dir = manual_dir / source.image_dir, manual_dir / source.label_dir
  id_list = manual_dir / source.id_list if source.id_list else None
  if id_list is not None and id_list.is_file():
    ids = read_id_list(id_list)
    origin = f"Id list {id_list} ({split} split)"
    advice = (
      f"Put the missing files in place (see {README_SECTION}) or remove the ids from {id_list}."
    )
  else:
    ids = sorted(images)
    origin = f"The {split} split (every image of {image_dir})"
    advice = (
      f"The label archive is probably unpacked only in part: unpack it completely into "
      f"{label_dir} (see {README_SECTION})."
    )
  problems = []
  for image_id in ids:
    missing = []
    if image_id not in images:
      missing.append(f"image {image_dir / (image_id + image_suffix)}")
    if image_id not in labels:
      missing.append(f"label {label_dir / (image_id + label_suffix)}")
    if missing:
      problems.append(f"id {image_id}: missing " + " and ".join(missing))
  if problems:
    listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise ManualDataError(
      f"{origin} of {dataset}: {len(problems)} of {len(ids)} ids lack their files:\n"
      f"{listed}{more}\n{advice}"
    )
  if id_list is None or not id_list.is_file():
    unmatched = len(set(labels) - set(images))
    if unmatched:
      logging.warning(
        "%s: %d label maps in %s have no image in %s; the image archive may be unpacked in part.",
        dataset,
        unmatched,
        label_dir,
        image_dir,
      )
  if source.expected_size is not None and len(ids) != source.expected_size:
    logging.warning(
      "%s %s split: %d images, the official split has %d.",
      dataset,
      split,
      len(ids),
      source.expected_size,
    )
  logging.info("%s %s split: %d images from %s.", dataset, split, len(ids), image_dir)
  return [Example(i, images[i], labels[i]) for i in ids]


def read_image(path: epath.Path) -> tuple[bytes, tuple[int, int]]:
  """Reads an image file and checks that it decodes, without a full-size decode.

  Returns:
    The file's bytes, stored as they are (no re-encoding), and its (height, width).

  Raises:
    ManualDataError: the file is not a JPEG or PNG image, or it is corrupt or truncated.
  """
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      if image.format not in _IMAGE_FORMATS:
        raise ManualDataError(
          f"Image {path} is a {image.format} file; only JPEG and PNG images are supported. "
          "Replace it with the original file from the dataset's archive."
        )
      # A JPEG decoded at 1/8 scale (DCT scaling) still reads all of its entropy-coded data, so
      # truncation is caught at a fraction of the cost of a full decode.
      image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
      image.load()
  except ManualDataError:
    raise
  except Image.UnidentifiedImageError as error:
    raise ManualDataError(
      f"Cannot decode image {path}: it is not an image file that PIL recognises (JPEG or PNG "
      f"expected). Re-extract it from the dataset's archive (see {README_SECTION})."
    ) from error
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    raise ManualDataError(
      f"Cannot decode image {path} ({error}); the file is corrupt or truncated. Re-extract it "
      f"from the dataset's archive (see {README_SECTION})."
    ) from error
  return data, (height, width)


def _is_8bit_grey_png(data: bytes) -> bool:
  # IHDR is the first chunk: bit depth at byte 24, colour type (0 = greyscale) at byte 25. TF
  # scales 1/2/4-bit greyscale to 0..255 on decoding, so only 8-bit files can be stored as is.
  return data[:8] == _PNG_SIGNATURE and len(data) > 25 and data[24] == 8 and data[25] == 0


def read_label(path: epath.Path, num_classes: int) -> tuple[bytes, np.ndarray]:
  """Reads a label map: class indices 0..num_classes-1, IGNORE_LABEL for unlabeled pixels.

  Greyscale PNGs hold the indices as values; palette PNGs (VOC's SegmentationClass) hold them as
  palette indices, which is what they decode to here, not their colours.

  Args:
    path: the label PNG.
    num_classes: size of the label set (182 for COCO-Stuff, 21 for VOC).

  Returns:
    A single-channel 8-bit greyscale PNG of the labels (the file's own bytes where it already is
    one) and the labels as uint8 [H, W].

  Raises:
    ManualDataError: the file does not decode, is a colour (RGB) image, or holds values outside
      the label set.
  """
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as image:
      mode = image.mode
      labels = np.asarray(image)
  except Image.UnidentifiedImageError as error:
    raise ManualDataError(
      f"Cannot decode label {path}: it is not an image file that PIL recognises (a PNG is "
      f"expected). Re-extract it from the label archive (see {README_SECTION})."
    ) from error
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    raise ManualDataError(
      f"Cannot decode label {path} ({error}); the file is corrupt or truncated. Re-extract it "
      f"from the label archive (see {README_SECTION})."
    ) from error
  label_set = f"0..{num_classes - 1} and {splits.IGNORE_LABEL}"
  if mode in ("RGB", "RGBA") and labels.ndim == 3:
    rgb = labels[..., :3]
    if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
      raise ManualDataError(
        f"Label {path} is an RGB colour image; label maps must be single-channel PNGs whose "
        f"values are class indices ({label_set}), or palette PNGs whose indices are. Use the "
        f"label archive named in {README_SECTION}, not a colour visualisation of it."
      )
    # A grey image saved as RGB still holds one index per pixel.
    labels = rgb[..., 0]
  elif mode not in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L") or labels.ndim != 2:
    raise ManualDataError(
      f"Label {path} has PIL mode {mode!r} and shape {labels.shape}; a label map must be a "
      f"single-channel (greyscale or palette) PNG of class indices ({label_set})."
    )
  if labels.dtype != np.uint8:
    labels_int = labels.astype(np.int64)
    if labels_int.size and (labels_int.min() < 0 or labels_int.max() > 255):
      wide = np.unique(labels_int[(labels_int < 0) | (labels_int > 255)])
      raise _bad_values_error(path, wide, label_set)
    labels = labels_int.astype(np.uint8)
  counts = np.bincount(labels.ravel(), minlength=256)
  allowed = np.zeros(256, bool)
  allowed[:num_classes] = True
  allowed[splits.IGNORE_LABEL] = True
  bad = np.flatnonzero((counts > 0) & ~allowed)
  if bad.size:
    raise _bad_values_error(path, bad, label_set)
  if mode != "L" or not _is_8bit_grey_png(data):
    buffer = io.BytesIO()
    Image.fromarray(labels).save(buffer, format="PNG")
    data = buffer.getvalue()
  return data, labels


def _bad_values_error(path: epath.Path, values: np.ndarray, label_set: str) -> ManualDataError:
  shown = ", ".join(str(int(v)) for v in values[: 4 * MAX_LISTED])
  return ManualDataError(
    f"Label {path} holds values {shown} outside the label set ({label_set}). The file is not a "
    f"label map of this dataset: check that it comes from the label archive named in "
    f"{README_SECTION}."
  )


def load_example(example: Example, num_classes: int) -> dict[str, object]:
  """Reads and checks the files of one example.

  Returns:
    The TFDS features: 'image' (the image file's bytes), 'label' (8-bit greyscale PNG bytes,
    shape [H, W, 1] once decoded) and 'image_id'.

  Raises:
    ManualDataError: a file is unusable (see `read_image`, `read_label`) or the label's size is
      not the image's.
  """
  image, image_size = read_image(example.image_path)
  label, labels = read_label(example.label_path, num_classes)
  if labels.shape != image_size:
    raise ManualDataError(
      f"Label {example.label_path} is {labels.shape[0]}x{labels.shape[1]} (HxW) but its image "
      f"{example.image_path} is {image_size[0]}x{image_size[1]}; a label map must match its "
      "image pixel for pixel. Check that both come from the archives named in "
      f"{README_SECTION}."
    )
  return {"image": image, "label": label, "image_id": example.image_id}


def generate_examples(
  examples: Sequence[Example], num_classes: int
) -> Iterator[tuple[str, dict[str, object]]]:
  """Yields (image id, features) for TFDS; every file is checked as it is read."""
  for example in examples:
    yield example.image_id, load_example(example, num_classes)


def plan_splits(
  dl_manager: tfds.download.DownloadManager,
  dataset: str,
  layout: Sequence[LayoutEntry],
  sources: Mapping[str, SplitSource],
) -> dict[str, list[Example]]:
  """The examples of every split of a builder that reads a manual directory.

  Every folder, id list and id is checked here, before the first example is written, so that a
  bad manual directory fails in seconds rather than an hour into the train split; the files'
  contents are checked as they are read (`generate_examples`).

  Args:
    dl_manager: the builder's download manager (only its manual directory is used).
    dataset: TFDS name, for messages.
    layout: what the manual directory must hold.
    sources: where each split comes from.

  Returns:
    {split name: its examples}.

  Raises:
    ManualDataError: see `scan_layout` and `plan_split`.
  """
  manual_dir = get_manual_dir(dl_manager)
  indexes = scan_layout(manual_dir, dataset, layout)
  suffixes = {entry.path: entry.suffix for entry in layout}
  return {
    split: plan_split(
      manual_dir,
      dataset,
      split,
      source,
      indexes,
      suffixes[source.image_dir],
      suffixes[source.label_dir],
    )
    for split, source in sources.items()
  }


def segmentation_features() -> tfds.features.FeaturesDict:
  """Features of the real datasets: JPEG image, single-channel PNG label map, image id."""
  return tfds.features.FeaturesDict(
    {
      # Stored as the original JPEG bytes: no decode and re-encode on the way in.
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.Image(
        shape=(None, None, 1), encoding_format="png", use_colormap=False
      ),
      "image_id": tfds.features.Text(),
    }
  )


class ManualSegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A segmentation dataset read from a manual directory; subclasses only describe the data.

  Subclasses set LAYOUT, SPLIT_SOURCES, NUM_CLASSES, HOMEPAGE, CITATION, VERSION,
  BUILDER_CONFIGS and MANUAL_DOWNLOAD_INSTRUCTIONS; checking, planning and writing are shared.
  """

  LAYOUT: ClassVar[Sequence[LayoutEntry]] = ()
  SPLIT_SOURCES: ClassVar[Mapping[str, SplitSource]] = {}
  NUM_CLASSES: ClassVar[int] = 0
  HOMEPAGE: ClassVar[str] = ""
  CITATION: ClassVar[str] = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=segmentation_features(),
      supervised_keys=("image", "label"),
      homepage=self.HOMEPAGE,
      citation=self.CITATION,
      description=type(self).__doc__,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    plans = plan_splits(dl_manager, self.name, self.LAYOUT, self.SPLIT_SOURCES)
    return {split: self._generate_examples(examples) for split, examples in plans.items()}

  def _generate_examples(self, examples: list[Example]):
    yield from generate_examples(examples, self.NUM_CLASSES)
