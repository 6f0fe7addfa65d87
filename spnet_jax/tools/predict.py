"""Segments your images into any classes you name, with a trained SPNet workdir.

  python -m spnet_jax.tools.predict --workdir workdirs/shapes_zlss --images photos/ \
      --output_dir predictions/ [--classes background,red-disc,blue-square] [--gamma 0.4]

Class embeddings come from (first that applies): --embeddings_npy with --names_file (one name
per line, row i of the matrix is line i); --word_vectors (fastText .vec and/or word2vec .bin, a
class name of several words is the mean of its words, as for training); the shapes attribute
vocabulary for a shapes run; otherwise the run's own classes and embedding files. For each
image it writes <stem>_labels.png (pixel value = index into classes.txt) and <stem>_overlay.png
(the image blended with class colours, and a legend of the classes present).
"""

import dataclasses
import io
import math
import os
import time
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from PIL import Image, UnidentifiedImageError

from spnet_jax import cli, experiment, paths
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
  """Image files of `images` (files as given, folders' image files sorted by name)."""
  files = []
  for path in images:
    if paths.as_path(path).is_dir():
      found = sorted(
        os.path.join(path, f.name)
        for f in paths.as_path(path).iterdir()
        if f.suffix.lower() in IMAGE_SUFFIXES
      )
      if not found:
        raise ValueError(f"Folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
      files += found
    elif paths.exists(path):
      files.append(path)
    else:
      raise ValueError(f"Image {path} does not exist.")
  return files


def read_image(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3]; a clear error for files that are not images."""
  try:
    with Image.open(io.BytesIO(paths.read_bytes(path))) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, UnidentifiedImageError) as error:
    raise ValueError(f"Cannot read image {path}: {error}") from error


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


def write_outputs(
  output_dir: str, path: str, image, labels, classes: ClassSet, overlay_scale: int = 1
) -> None:
  """<stem>_labels.png (class indices) and <stem>_overlay.png (optionally enlarged)."""
  stem = os.path.splitext(os.path.basename(path))[0]
  mode = "L" if len(classes.names) <= 256 else "I;16"
  dtype = np.uint8 if mode == "L" else np.uint16
  label_image = Image.fromarray(labels.astype(dtype), mode=mode)
  _write_png(os.path.join(output_dir, f"{stem}_labels.png"), label_image)
  if overlay_scale > 1:  # Nearest enlargement keeps small images' label edges crisp.
    image = np.repeat(np.repeat(image, overlay_scale, axis=0), overlay_scale, axis=1)
    labels = np.repeat(np.repeat(labels, overlay_scale, axis=0), overlay_scale, axis=1)
  overlay = visualize.overlay(image, labels, classes.names)
  _write_png(os.path.join(output_dir, f"{stem}_overlay.png"), Image.fromarray(overlay))


def _write_png(path: str, image: Image.Image) -> None:
  """PIL seeks in the file it writes, which a bucket object cannot: through memory."""
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  paths.write_bytes(path, buffer.getvalue())


def predict_files(
  predictor: Predictor,
  files: Sequence[str],
  output_dir: str,
  gamma: float = 0.0,
  batch_size: int = 8,
  overlay_scale: int = 1,
  log=print,
) -> dict[str, np.ndarray]:
  """Predicts every file (grouped by size bucket) and writes its PNGs; returns the label maps."""
  rows = zip(predictor.classes.names, predictor.classes.calibrated, strict=True)
  paths.write_text(
    os.path.join(output_dir, "classes.txt"),
    "".join(f"{i}\t{name}\t{'seen' if cal else 'unseen'}\n" for i, (name, cal) in enumerate(rows)),
  )
  images = {path: read_image(path) for path in files}
  warp = predictor.config.data.eval.warp_size
  buckets: dict[tuple, list[str]] = {}
  for path, image in images.items():
    key = (bucket_side(max(image.shape[:2])),) if warp else bucket_shape(image.shape[:2])
    buckets.setdefault(key, []).append(path)
  results, done, start = {}, 0, time.time()
  for bucket in buckets.values():
    for i in range(0, len(bucket), batch_size):
      chunk = bucket[i : i + batch_size]
      labels = predictor.predict_batch([images[p] for p in chunk], gamma, batch_size)
      for path, label_map in zip(chunk, labels, strict=True):
        write_outputs(output_dir, path, images[path], label_map, predictor.classes, overlay_scale)
        results[path] = label_map
      done += len(chunk)
      rate = done / max(time.time() - start, 1e-9)
      log(f"[{done}/{len(files)}] images, {rate:.1f} images/s")
  return results


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
  flags.DEFINE_float("gamma", 0.0, "Calibration: subtracted from trained classes' scores.")
  flags.DEFINE_integer("batch_size", 8, "Images per batch.")
  flags.DEFINE_integer("checkpoint_step", 0, "Checkpoint step to restore (0: latest).")
  flags.DEFINE_integer("overlay_scale", 1, "Enlarge overlays by this integer factor.")
  flags.mark_flags_as_required(["workdir", "images", "output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = workdir_lib.load_run_config(FLAGS.workdir)
  names = read_names_file(FLAGS.classes_file) if FLAGS.classes_file else FLAGS.classes
  classes = class_set(config, names, FLAGS.embeddings_npy, FLAGS.names_file, FLAGS.word_vectors)
  files = list_images(FLAGS.images)
  predictor = Predictor(config, FLAGS.workdir, classes, FLAGS.checkpoint_step)
  print(
    f"{len(files)} images, {len(classes.names)} classes (embeddings: {classes.source}; "
    f"gamma {FLAGS.gamma} on {int(classes.calibrated.sum())} trained classes)",
    flush=True,
  )
  predict_files(
    predictor, files, FLAGS.output_dir, FLAGS.gamma, FLAGS.batch_size, FLAGS.overlay_scale
  )
  print(f"Wrote {FLAGS.output_dir}/<image>_labels.png and <image>_overlay.png, classes.txt")


def run() -> None:
  """The `spnet-predict` command (also `python -m` of this module)."""
  cli.run(main, __doc__, _define_flags)


if __name__ == "__main__":
  run()
