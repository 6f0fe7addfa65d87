"""Segments your images into any classes you name, with a trained SPNet workdir.

  python -m spnet_jax.tools.predict --workdir workdirs/shapes_zlss --images photos/ \
      --output_dir predictions/ [--classes background,red-disc,blue-square] [--gamma 0.4]

Class embeddings come from (first that applies): --embeddings_npy with --names_file (one name
per line, row i of the matrix is line i); --word_vectors (fastText .vec and/or word2vec .bin, a
class name of several words is the mean of its words, as for training); the shapes attribute
vocabulary for a shapes run; otherwise the run's own classes and embedding files. For each
image it writes <name>_labels.png (pixel value = index into classes.txt) and <name>_overlay.png
(the image blended with class colours, and a legend of the classes present).

<name> is the image's file name without its extension, where no other input has the same one
(ignoring case); inputs that share it are named with their extension (a.png, a.jpg -> a_png,
a_jpg), then also their parent folders, nearest first (x/a.png, y/a.png -> x_a_png, y_a_png).
The log lists every name made longer.

Memory: an image whose longer side exceeds --max_side (default 1024) is shrunk (aspect kept,
antialiased) for the network, and its label map enlarged back (nearest) to the image's own size;
outputs keep the image's size. The network's memory per batch is then bounded by about
batch_size x max_side^2 pixels whatever the images' sizes, and images are decoded one batch at
a time. Measured on 2 CPU cores with the tiny shapes model: a 4000 x 3000 photo takes 18 s and
2.0 GB peak RSS (54 s and 16 GB unshrunk). to_rgb says how 16-bit, palette, alpha, CMYK, 32-bit
and float images become RGB.

Files that cannot be read (missing, not an image, corrupt) are skipped with a line naming each;
the others are predicted and written, and the command ends with exit status 1.
"""

import dataclasses
import io
import math
import os
import time
from collections.abc import Iterator, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from PIL import Image, UnidentifiedImageError

from spnet_jax import cli

# Before the modules below load TensorFlow: without its start-up notices (cli.py).
cli.import_tensorflow_quietly()

from spnet_jax import errors, experiment, paths
from spnet_jax import workdir as workdir_lib
from spnet_jax.data import pipeline, splits
from spnet_jax.embeddings import class_embeddings as embeddings
from spnet_jax.embeddings import word_vectors
from spnet_jax.evaluation import calibrated_prediction, visualize
from spnet_jax.models import msc
from spnet_jax.models.layers import FROZEN_COLLECTION
from spnet_jax.models.registry import create_model
from spnet_jax.train import checkpoint
from spnet_jax.train import optimizer as optim
from spnet_jax.train import step as step_lib

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
WORD_VECTOR_FORMATS = {".vec": "fasttext", ".txt": "fasttext", ".bin": "word2vec"}
DEFAULT_MAX_SIDE = 1024  # Leaves VOC and COCO images (at most 640) at their own size.
MIN_MAX_SIDE = 32  # One step of the native-resolution size buckets.
LARGE_IMAGE_SIDE = 1024  # Longer images get a log line before they run (they take a while).
INT32_RANGE = (-(2**31), 2**31 - 1)


@dataclasses.dataclass(frozen=True)
class ClassSet:
  """The classes to segment into: names, their embedding rows, and which get calibrated."""

  names: tuple[str, ...]
  vectors: np.ndarray  # [C, d_w] unit rows.
  calibrated: np.ndarray  # [C] bool: trained with labels (gamma is subtracted from these).
  source: str


def trained_class_names(config: ml_collections.ConfigDict) -> set[str]:
  """Classes the run trained with labels (what calibration penalises)."""
  split = experiment.run_split(config)
  trained = split.eval_classes if config.fewshot.n else split.train_classes
  return set(split.names(trained))


def read_names_file(path: str) -> list[str]:
  if not paths.exists(path):
    raise ValueError(f"--names_file {path} does not exist.")
  lines = paths.read_text(path).splitlines()
  return [line.strip() for line in lines if line.strip()]


def class_set(
  config: ml_collections.ConfigDict,
  names: Sequence[str] | None,
  embeddings_npy: str = "",
  names_file: str = "",
  word_vector_files: Sequence[str] = (),
) -> ClassSet:
  """Embeddings for `names` (default: the run's classes) from the first source that applies."""
  split = experiment.run_split(config)
  names = list(names) if names else list(split.names(split.eval_classes))
  if len(set(names)) != len(names):
    raise ValueError(f"Class names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}.")
  if embeddings_npy:
    if not names_file:
      raise ValueError("--embeddings_npy needs --names_file (one class name per matrix row).")
    vocabulary = read_names_file(names_file)
    matrix = embeddings.load_npy(embeddings_npy, len(vocabulary))
    unknown = [n for n in names if n not in vocabulary]
    if unknown:
      raise ValueError(
        f"Class names {unknown} have no embedding: they are not in {names_file} (which lists "
        f"{len(vocabulary)} names). Add their rows, or use --word_vectors."
      )
    vectors = matrix[[vocabulary.index(n) for n in names]]
    source = f"{embeddings_npy} (names: {names_file})"
  elif word_vector_files:
    parts = []
    for path in word_vector_files:
      suffix = os.path.splitext(path)[1].lower()
      if suffix not in WORD_VECTOR_FORMATS:
        raise ValueError(
          f"--word_vectors {path}: unknown format; expected fastText .vec/.txt or word2vec .bin."
        )
      parts.append(word_vectors.build_class_embeddings(path, WORD_VECTOR_FORMATS[suffix], names))
    vectors = np.concatenate(parts, axis=1)
    source = ", ".join(word_vector_files)
  elif config.embeddings.source == "attributes":
    vocabulary = splits.SHAPES_CLASS_NAMES
    unknown = [n for n in names if n not in vocabulary]
    if unknown:
      raise ValueError(
        f"Class names {unknown} have no embedding in the shapes attribute vocabulary "
        f"({', '.join(vocabulary)})."
      )
    cfg = config.embeddings
    vectors = embeddings.attribute_embeddings(tuple(names), cfg.extra_dim, cfg.seed)
    source = "shapes attributes"
  else:
    own = list(split.names(split.eval_classes))
    unknown = [n for n in names if n not in own]
    if unknown:
      raise ValueError(
        f"Class names {unknown} are not classes of the run, whose embeddings come from "
        f"{config.embeddings.paths!r}: give --word_vectors or --embeddings_npy with "
        "--names_file for new names."
      )
    matrix = embeddings.load_class_embeddings(config, split)
    vectors = matrix[[split.class_names.index(n) for n in names]]
    source = config.embeddings.paths
  trained = trained_class_names(config)
  return ClassSet(
    names=tuple(names),
    vectors=embeddings.l2_normalize(np.asarray(vectors, np.float64)).astype(np.float32),
    calibrated=np.array([n in trained for n in names]),
    source=source,
  )


def list_images(images: Sequence[str]) -> list[str]:
  """Image files of `images` (files as given, folders' image files sorted by name), each once.

  A file that does not exist stays in the list: predict_files reports it with the other files
  it cannot read, and predicts the rest.
  """
  files = []
  for path in images:
    if paths.as_path(path).is_dir():
      found = sorted(
        os.path.join(path, f.name)
        for f in paths.as_path(path).iterdir()
        if f.suffix.lower() in IMAGE_SUFFIXES
      )
      if not found:
        raise errors.UserError(
          f"Folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}): give image files or "
          "folders that hold some."
        )
      files += found
    else:
      files.append(path)
  return list(dict.fromkeys(files))


def output_names(files: Sequence[str]) -> dict[str, str]:
  """The name each file's outputs start with: its stem where unique, else longer ones.

  Names are compared ignoring case (a.png and A.jpg would overwrite each other on a
  case-insensitive disk). A name shared by several files grows, for those files, one step at a
  time until it is unique: <stem>_<extension>, then with the parent folders, nearest first
  (x/a.png, y/a.png -> x_a_png, y_a_png). Files that still share a name (no folders left to
  tell them apart) get _2, _3, ... in input order.
  """
  candidates = {path: _name_candidates(path) for path in files}
  level = dict.fromkeys(files, 0)
  while True:
    names = {path: candidates[path][level[path]] for path in files}
    longer = [
      path
      for group in _same_names(names).values()
      if len(group) > 1
      for path in group
      if level[path] + 1 < len(candidates[path])
    ]
    if not longer:
      return _numbered(names)
    for path in longer:
      level[path] += 1


def _name_candidates(path: str) -> list[str]:
  """Ever longer output names of `path`: stem, stem_ext, parent_stem_ext, ..."""
  stem, extension = os.path.splitext(os.path.basename(path))
  folders = [
    part
    for part in os.path.dirname(path).replace(os.sep, "/").split("/")
    if part not in ("", ".", "..") and ":" not in part  # Not a URI's scheme or a drive.
  ]
  names = [stem, f"{stem}_{extension[1:]}" if extension else stem]
  for folder in reversed(folders):
    names.append(f"{folder}_{names[-1]}")
  return list(dict.fromkeys(names))


def _same_names(names: dict[str, str]) -> dict[str, list[str]]:
  groups: dict[str, list[str]] = {}
  for path, name in names.items():
    groups.setdefault(name.casefold(), []).append(path)
  return groups


def _numbered(names: dict[str, str]) -> dict[str, str]:
  """Numbers the later files of any name still shared: name, name_2, name_3."""
  taken = {name.casefold() for name in names.values()}
  seen: set[str] = set()
  unique = {}
  for path, name in names.items():
    if name.casefold() in seen:
      number = 2
      while f"{name}_{number}".casefold() in taken:
        number += 1
      name = f"{name}_{number}"
      taken.add(name.casefold())
    seen.add(name.casefold())
    unique[path] = name
  return unique


def read_image(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3] of any image file; a UserError naming the file it cannot read."""
  try:
    with Image.open(io.BytesIO(paths.read_bytes(path))) as image:
      return to_rgb(image)
  except Exception as error:
    raise unreadable(path, error) from error


def read_image_size(path: str) -> tuple[int, int]:
  """(height, width) from the file's header alone (nothing decoded)."""
  try:
    with paths.as_path(path).open("rb") as file, Image.open(file) as image:
      return image.height, image.width
  except Exception as error:
    raise unreadable(path, error) from error


def unreadable(path: str, error: Exception) -> errors.UserError:
  """The one-line reason why `path` could not be read.

  Decoders raise many kinds of error on malformed files (OSError, SyntaxError, struct.error,
  DecompressionBombError...): each means that this one file is unreadable, so all are caught.
  """
  if isinstance(error, FileNotFoundError):
    return errors.UserError(f"Image {path} does not exist.")
  if isinstance(error, UnidentifiedImageError):  # Its message names a buffer, not the file.
    return errors.UserError(f"Cannot read image {path}: not an image format Pillow knows.")
  return errors.UserError(f"Cannot read image {path}: {error}")


def to_rgb(image: Image.Image) -> np.ndarray:
  """uint8 RGB [H, W, 3] of a PIL image of any mode.

  Colour and grey modes convert as PIL does (L and 1 repeated in R, G and B; P through its
  palette; CMYK as (255 - C)(255 - K) / 255). Alpha (RGBA, LA, PA, a palette's transparency)
  is dropped, not composited: the network sees the colour stored under every pixel. Modes of
  numbers map their type's range linearly onto 0..255, rounded: 16-bit I;16* 0..65535; 32-bit
  integer I 0..65535 when every value lies there (Pillow's mode for some 16-bit files), else
  -2^31..2^31 - 1; float F 0.0..1.0, values outside clipped.
  """
  if image.mode.startswith("I;16"):
    return _grey_to_rgb(_scale_to_uint8(np.asarray(image), 0, 65535))
  if image.mode == "I":
    values = np.asarray(image)
    low, high = (0, 65535) if values.min() >= 0 and values.max() <= 65535 else INT32_RANGE
    return _grey_to_rgb(_scale_to_uint8(values, low, high))
  if image.mode == "F":
    return _grey_to_rgb(_scale_to_uint8(np.asarray(image), 0.0, 1.0))
  if image.mode in ("P", "PA"):  # Through RGBA: PIL warns about a palette's transparency else.
    image = image.convert("RGBA")
  return np.asarray(image.convert("RGB"))


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
  scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
  return np.repeat(grey[:, :, None], 3, axis=2)


class Predictor:
  """A restored model and one jitted prediction function per input-size bucket."""

  def __init__(
    self, config: ml_collections.ConfigDict, workdir: str, classes: ClassSet, step: int = 0
  ):
    self.config = config
    self.classes = classes
    self.split = experiment.run_split(config)
    self.projection = config.model.classifier == "projection"
    self.model = create_model(config.model, classes.vectors.shape[1], self.split.num_classes)
    self.variables = self._restore(workdir, step or None)
    if not self.projection:
      own = self.split.class_names
      unknown = [n for n in classes.names if n not in own]
      if unknown:
        raise ValueError(
          f"This run has a learned classifier ({config.model.classifier!r}), which scores only "
          f"its own classes; {unknown} are not among them. SPNet's projection head segments "
          "any named class."
        )
      self.columns = np.array([own.index(n) for n in classes.names])
    self._fn = jax.jit(self._predict, static_argnames=("canvas",))

  def _restore(self, workdir: str, step: int | None) -> dict:
    config = self.config
    tx = optim.create_optimizer(config.optimizer, config.train.num_steps)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    init = step_lib.train_state_init(
      self.model, tx, config.data.init_image_size, self.classes.vectors
    )
    abstract = checkpoint.abstract_train_state(init, device)
    manager = checkpoint.create_manager(workdir, config.train.max_checkpoints)
    step = manager.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"{manager.directory} holds no checkpoint: train the run first.")
    self._check_shapes(abstract.params, str(manager.directory), step)
    state = checkpoint.restore(manager, abstract, step)
    manager.close()
    return {"params": state.params, FROZEN_COLLECTION: state.frozen}

  def _check_shapes(self, params, directory: str, step: int) -> None:
    """Names the embedding width when the checkpoint and the given embeddings disagree."""
    reader = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
    stored = reader.item_metadata(step)["params"]
    reader.close()
    step_dir = os.path.join(directory, str(step))
    stored = flax.traverse_util.flatten_dict(dict(stored), sep="/")
    wanted = flax.traverse_util.flatten_dict(params, sep="/")
    mismatched = {
      k: (tuple(stored[k].shape), v.shape)
      for k, v in wanted.items()
      if k in stored and tuple(stored[k].shape) != v.shape
    }
    if not mismatched:
      return
    key, (theirs, ours) = next(iter(mismatched.items()))
    if key.startswith("embedding_head"):
      raise ValueError(
        f"The checkpoint in {step_dir} embeds pixels into d_w={theirs[-1]} dimensions, but the "
        f"class embeddings from {self.classes.source} have {ours[-1]} columns. Use embeddings "
        "of the kind the run trained with (config.embeddings)."
      )
    raise ValueError(
      f"Checkpoint {step_dir} does not fit the run's config: {key} {theirs} vs {ours}."
    )

  def _predict(self, variables, images, vectors, calibrated, gamma, sizes, canvas):
    """Class index per pixel on the canvas; each image's prediction in its top-left corner."""
    if self.projection:
      logits_fn = lambda x: self.model.apply(variables, x, vectors)
    else:
      logits_fn = lambda x: jnp.take(self.model.apply(variables, x), self.columns, axis=-1)
    fused = msc.multi_scale_logits(logits_fn, images, tuple(self.config.model.msc_scales))[-1]
    scores = msc.resize_logits_per_image(fused, sizes, canvas)
    return calibrated_prediction.calibrated_choice(scores, calibrated, gamma).astype(jnp.int32)

  def predict_batch(self, images: list[np.ndarray], gamma: float, batch_size: int) -> list:
    """Label maps [H, W] of same-bucket images (padded to batch_size: one compile per bucket)."""
    warp = self.config.data.eval.warp_size
    sizes = np.array([im.shape[:2] for im in images], np.int32)
    if warp:
      side = bucket_side(int(sizes.max()))
      inputs = [resize_image(normalize(im, self.config), (warp, warp)) for im in images]
      canvas = (side, side)
    else:
      # Native resolution: images padded to the bucket; the padding's labels are cut away.
      canvas = bucket_shape(images[0].shape[:2])
      inputs = [pad_to(normalize(im, self.config), canvas) for im in images]
      sizes = np.tile(np.array(canvas, np.int32), (len(images), 1))
    batch = np.zeros((batch_size, *inputs[0].shape), np.float32)
    batch[: len(inputs)] = np.stack(inputs)
    all_sizes = np.ones((batch_size, 2), np.int32)
    all_sizes[: len(sizes)] = sizes
    labels = self._fn(
      self.variables,
      batch,
      self.classes.vectors,
      jnp.asarray(self.classes.calibrated, jnp.float32),
      jnp.float32(gamma),
      all_sizes,
      canvas=canvas,
    )
    labels = np.asarray(labels)
    return [labels[i, : im.shape[0], : im.shape[1]] for i, im in enumerate(images)]


def bucket_side(side: int, step: int = 64) -> int:
  return int(math.ceil(side / step) * step)


def bucket_shape(shape, step: int = 32) -> tuple[int, int]:
  return tuple(int(math.ceil(s / step) * step) for s in shape)


def normalize(image: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  return pipeline.normalize_image(image, config.data.image_mode).numpy()


def resize_image(image: np.ndarray, size) -> np.ndarray:
  """Bilinear, half-pixel centres, no antialias: the evaluation's warp."""
  return np.asarray(jax.image.resize(image, (*size, 3), method="bilinear", antialias=False))


def pad_to(image: np.ndarray, shape) -> np.ndarray:
  return np.pad(image, ((0, shape[0] - image.shape[0]), (0, shape[1] - image.shape[1]), (0, 0)))


def check_options(
  gamma: float = 0.0,
  batch_size: int = 1,
  overlay_scale: int = 1,
  checkpoint_step: int = 0,
  max_side: int = 0,
) -> None:
  """A UserError naming the first option out of its range, before anything heavy runs."""
  problems = (
    (batch_size < 1, f"--batch_size {batch_size}: give a number of images, at least 1."),
    (
      overlay_scale < 1,
      f"--overlay_scale {overlay_scale}: give an integer factor of at least 1 (1: the "
      "image's own size).",
    ),
    (
      checkpoint_step < 0,
      f"--checkpoint_step {checkpoint_step}: give a saved step, or 0 for the latest.",
    ),
    (
      not 0.0 <= gamma <= 1.0,  # Also refuses NaN.
      f"--gamma {gamma}: give a value in [0, 1] (it is subtracted from trained classes' "
      "probabilities).",
    ),
    (
      max_side < 0 or 0 < max_side < MIN_MAX_SIDE,
      f"--max_side {max_side}: give 0 (no limit) or a side of at least {MIN_MAX_SIDE} pixels.",
    ),
  )
  for wrong, message in problems:
    if wrong:
      raise errors.UserError(message)


@dataclasses.dataclass(frozen=True)
class ImageJob:
  """One input file: its place in the input list, its output name and its sizes."""

  path: str
  number: int  # 1-based position among the inputs, for the log.
  name: str  # What its outputs are called (output_names).
  size: tuple[int, int]  # (height, width) of the file.
  network_size: tuple[int, int]  # (height, width) the network sees.

  @property
  def resized(self) -> bool:
    return self.size != self.network_size


def network_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
  """`size` shrunk (aspect kept) to a longer side of max_side when longer; 0: no limit."""
  if not max_side or max(size) <= max_side:
    return tuple(size)
  scale = max_side / max(size)
  return tuple(max(1, round(side * scale)) for side in size)


def shrink_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """PIL's bilinear reduction, which widens its filter: details average instead of aliasing."""
  return np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))


def enlarge_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of a label map to (height, width), by pixel centres."""
  rows, cols = (
    np.minimum(((np.arange(out) + 0.5) * (inp / out)).astype(np.int64), inp - 1)
    for out, inp in zip(size, labels.shape, strict=True)
  )
  return labels[rows[:, None], cols[None, :]]


def write_outputs(
  output_dir: str,
  path: str,
  image,
  labels,
  classes: ClassSet,
  overlay_scale: int = 1,
  name: str = "",
) -> None:
  """<name>_labels.png (class indices) and <name>_overlay.png (optionally enlarged).

  `name` defaults to the file's stem (predict_files passes output_names's, unique among inputs).
  """
  name = name or os.path.splitext(os.path.basename(path))[0]
  mode = "L" if len(classes.names) <= 256 else "I;16"
  dtype = np.uint8 if mode == "L" else np.uint16
  label_image = Image.fromarray(labels.astype(dtype), mode=mode)
  _write_png(os.path.join(output_dir, f"{name}_labels.png"), label_image)
  if overlay_scale > 1:  # Nearest enlargement keeps small images' label edges crisp.
    image = np.repeat(np.repeat(image, overlay_scale, axis=0), overlay_scale, axis=1)
    labels = np.repeat(np.repeat(labels, overlay_scale, axis=0), overlay_scale, axis=1)
  overlay = visualize.overlay(image, labels, classes.names)
  _write_png(os.path.join(output_dir, f"{name}_overlay.png"), Image.fromarray(overlay))


def _write_png(path: str, image: Image.Image) -> None:
  """PIL seeks in the file it writes, which a bucket object cannot: through memory."""
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  paths.write_bytes(path, buffer.getvalue())


def _write_classes(output_dir: str, classes: ClassSet) -> None:
  rows = zip(classes.names, classes.calibrated, strict=True)
  paths.write_text(
    os.path.join(output_dir, "classes.txt"),
    "".join(f"{i}\t{name}\t{'seen' if cal else 'unseen'}\n" for i, (name, cal) in enumerate(rows)),
  )


def _log(message: str) -> None:
  print(message, flush=True)


def predict_files(
  predictor: Predictor,
  files: Sequence[str],
  output_dir: str,
  gamma: float = 0.0,
  batch_size: int = 8,
  overlay_scale: int = 1,
  max_side: int = DEFAULT_MAX_SIDE,
  log=_log,
) -> dict[str, np.ndarray]:
  """predict_images, its label maps kept (every one, at full size: for a few images)."""
  args = (gamma, batch_size, overlay_scale, max_side, log)
  return dict(predict_images(predictor, files, output_dir, *args))


def predict_images(
  predictor: Predictor,
  files: Sequence[str],
  output_dir: str,
  gamma: float = 0.0,
  batch_size: int = 8,
  overlay_scale: int = 1,
  max_side: int = DEFAULT_MAX_SIDE,
  log=_log,
) -> Iterator[tuple[str, np.ndarray]]:
  """Predicts every file it can read, writes its PNGs and yields (path, label map) for each.

  Files are batched by the size bucket of their network input and decoded one batch at a time.
  A file that cannot be read gets a log line and is left out; the others still run, and the
  last log line says how many failed.
  """
  check_options(gamma=gamma, batch_size=batch_size, overlay_scale=overlay_scale, max_side=max_side)
  files = list(dict.fromkeys(files))
  if not files:
    raise errors.UserError("No images to predict: give --images image files or folders of them.")
  start = time.time()
  _write_classes(output_dir, predictor.classes)
  names = output_names(files)
  _log_longer_names(names, log)
  classes = predictor.classes
  jobs, failed = _plan_jobs(files, names, max_side, log)
  done = 0
  for batch in _batches(jobs, predictor.config.data.eval.warp_size, batch_size):
    images = _read_batch(batch, log)
    failed += len(batch) - len(images)
    readable = [job for job in batch if job.path in images]
    for job in readable:
      if job.resized or max(job.size) > LARGE_IMAGE_SIDE:  # Slow: say what it is waiting on.
        log(_image_line(job, len(files)))
    for job, labels in _predict_jobs(predictor, readable, images, gamma, batch_size):
      image = images[job.path]
      write_outputs(output_dir, job.path, image, labels, classes, overlay_scale, job.name)
      done += 1
      yield job.path, labels
    rate = done / max(time.time() - start, 1e-9)
    log(f"[{done + failed}/{len(files)}] images, {rate:.1f} images/s")
  log(_summary(done, failed, time.time() - start))


def _log_longer_names(names: dict[str, str], log) -> None:
  """Names the files whose outputs are not named by their stem alone (another has that stem)."""
  longer = [
    f"{path} -> {name}"
    for path, name in names.items()
    if name != os.path.splitext(os.path.basename(path))[0]
  ]
  if longer:
    log(f"Inputs share a file name, so their outputs are named: {', '.join(longer)}")


def _plan_jobs(files: list[str], names: dict[str, str], max_side: int, log):
  """The ImageJob of each file whose header reads, and how many do not (each logged)."""
  jobs, failed = [], 0
  for number, path in enumerate(files, 1):
    try:
      size = read_image_size(path)
    except errors.UserError as error:
      log(f"Skipped: {error}")
      failed += 1
      continue
    jobs.append(ImageJob(path, number, names[path], size, network_size(size, max_side)))
  return jobs, failed


def _batches(jobs: list[ImageJob], warp: int, batch_size: int) -> Iterator[list[ImageJob]]:
  """Up to batch_size jobs of one size bucket at a time (each bucket compiles once)."""
  buckets: dict[tuple, list[ImageJob]] = {}
  for job in jobs:
    size = job.network_size
    key = (bucket_side(max(size)),) if warp else bucket_shape(size)
    buckets.setdefault(key, []).append(job)
  for bucket in buckets.values():
    for i in range(0, len(bucket), batch_size):
      yield bucket[i : i + batch_size]


def _read_batch(batch: list[ImageJob], log) -> dict[str, np.ndarray]:
  """The decoded image of each job that decodes; the others logged."""
  images = {}
  for job in batch:
    try:
      images[job.path] = read_image(job.path)
    except errors.UserError as error:  # E.g. a file cut short, whose header read well.
      log(f"Skipped: {error}")
  return images


def _image_line(job: ImageJob, total: int) -> str:
  height, width = job.size
  resized = f", resized to {job.network_size[1]} x {job.network_size[0]}" if job.resized else ""
  return f"image {job.number}/{total}: {job.path} ({width} x {height}{resized})"


def _predict_jobs(
  predictor: Predictor,
  jobs: list[ImageJob],
  images: dict[str, np.ndarray],
  gamma: float,
  batch_size: int,
) -> Iterator[tuple[ImageJob, np.ndarray]]:
  """Each job with its label map at the file's own size (shrunk for the network, then enlarged)."""
  if not jobs:
    return
  inputs = [
    shrink_image(images[job.path], job.network_size) if job.resized else images[job.path]
    for job in jobs
  ]
  labels = predictor.predict_batch(inputs, gamma, batch_size)
  for job, label_map in zip(jobs, labels, strict=True):
    yield job, enlarge_labels(label_map, job.size) if job.resized else label_map


def _summary(done: int, failed: int, seconds: float) -> str:
  if not failed:
    return f"Predicted {done} images in {seconds:.1f} s."
  return (
    f"Predicted {done} of {done + failed} images in {seconds:.1f} s; {failed} could not be "
    "read (named above)."
  )


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir (its config.json and checkpoints).")
  flags.DEFINE_list("images", None, "Image files and/or folders of images.")
  flags.DEFINE_string("output_dir", None, "Where the label and overlay PNGs go.")
  flags.DEFINE_list("classes", [], "Class names to segment into (default: the run's classes).")
  flags.DEFINE_string("classes_file", "", "Class names, one per line (instead of --classes).")
  flags.DEFINE_string("embeddings_npy", "", "Embedding matrix [N, d_w] of the --names_file.")
  flags.DEFINE_string("names_file", "", "Names of the --embeddings_npy rows, one per line.")
  flags.DEFINE_list("word_vectors", [], "fastText .vec / word2vec .bin files, concatenated.")
  flags.DEFINE_float("gamma", 0.0, "Calibration in [0, 1]: subtracted from trained classes.")
  flags.DEFINE_integer("batch_size", 8, "Images per batch (at least 1).")
  flags.DEFINE_integer("checkpoint_step", 0, "Checkpoint step to restore (0: latest).")
  flags.DEFINE_integer("overlay_scale", 1, "Enlarge overlays by this integer factor (>= 1).")
  flags.DEFINE_integer(
    "max_side",
    DEFAULT_MAX_SIDE,
    "Longer side (pixels) beyond which an image is shrunk, aspect kept, for the network; its "
    "label map is enlarged back (nearest) to the image's own size. Bounds the network's "
    "memory: peak memory grows with batch_size x max_side^2, whatever the images' sizes. "
    f"0: no limit; else at least {MIN_MAX_SIDE}.",
  )
  flags.mark_flags_as_required(["workdir", "images", "output_dir"])


def main(argv) -> int:
  """Exit status 0, or 1 when some images could not be read (the others are written)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  check_options(
    FLAGS.gamma, FLAGS.batch_size, FLAGS.overlay_scale, FLAGS.checkpoint_step, FLAGS.max_side
  )
  files = list_images(FLAGS.images)
  if not files:
    raise errors.UserError("--images is empty: give image files and/or folders of images.")
  config = workdir_lib.load_run_config(FLAGS.workdir)
  names = read_names_file(FLAGS.classes_file) if FLAGS.classes_file else FLAGS.classes
  classes = class_set(config, names, FLAGS.embeddings_npy, FLAGS.names_file, FLAGS.word_vectors)
  predictor = Predictor(config, FLAGS.workdir, classes, FLAGS.checkpoint_step)
  _log(
    f"{len(files)} images, {len(classes.names)} classes (embeddings: {classes.source}; "
    f"gamma {FLAGS.gamma} on {int(classes.calibrated.sum())} trained classes)"
  )
  options = (FLAGS.gamma, FLAGS.batch_size, FLAGS.overlay_scale, FLAGS.max_side)
  written = sum(1 for _ in predict_images(predictor, files, FLAGS.output_dir, *options))
  if written:  # The summary above already says when none could be read.
    _log(
      f"Wrote {written} x <name>_labels.png and <name>_overlay.png, and classes.txt, to "
      f"{FLAGS.output_dir}"
    )
  return 0 if written == len(files) else 1


def run() -> None:
  """The `spnet-predict` command (also `python -m` of this module)."""
  cli.run(main, __doc__, _define_flags)


if __name__ == "__main__":
  run()
