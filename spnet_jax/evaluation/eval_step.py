"""The device side of evaluation: ZLSS / GZLSS confusion matrices and class counts.

A jitted step adds each batch to the matrices on device (one per calibration factor of the sweep);
`compute_confusions` runs it over a split and brings the matrices to the host once.
"""

import dataclasses
import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spnet_jax.data import splits
from spnet_jax.evaluation import calibrated_prediction
from spnet_jax.models import msc
from spnet_jax.models.registry import SegmentationNet
from spnet_jax.train.step import logits_for_classes, make_global_batch


@dataclasses.dataclass(frozen=True)
class EvalTasks:
  """What the evaluation scores, in dataset label ids.

  Attributes:
    num_classes: number of label values; confusion matrices are [num_classes, num_classes + 1].
    unseen: ZLSS classes: only pixels of these classes are scored, argmax over these classes.
    candidates: GZLSS classes (seen, val and unseen): every labelled pixel, argmax over these.
    calibrated: per candidate, whether calibration subtracts gamma (classes trained with labels).
    available: per label id, whether the classifier has a score for the class; the learned head
      has none for classes it was never trained on, and such classes are never predicted.
    gammas: calibration factors evaluated in one pass (GZLSS gets one matrix per gamma).
  """

  num_classes: int
  unseen: tuple[int, ...]
  candidates: tuple[int, ...]
  calibrated: tuple[bool, ...]
  available: tuple[bool, ...]
  gammas: tuple[float, ...]


def create_tasks(
  split: splits.ClassSplit,
  gammas,
  learned_classifier: bool,
  trained_classes: tuple[int, ...] | None = None,
) -> EvalTasks:
  """Tasks of a zero-label model trained on `trained_classes` (default: seen + val)."""
  trained = split.train_classes if trained_classes is None else trained_classes
  candidates = split.eval_classes
  available = [(not learned_classifier) or c in trained for c in range(split.num_classes)]
  return EvalTasks(
    num_classes=split.num_classes,
    unseen=split.unseen,
    candidates=candidates,
    calibrated=tuple(c in trained for c in candidates),
    available=tuple(available),
    gammas=tuple(float(g) for g in gammas),
  )


def predict(
  scores: jax.Array, candidates: jax.Array, usable: jax.Array, void_label: int
) -> jax.Array:
  """Label id of the best usable candidate per pixel; `void_label` where none is usable."""
  scores = jnp.where(usable, scores, -jnp.inf)
  best = jnp.argmax(scores, axis=-1)
  no_score = jnp.all(~usable)
  return jnp.where(no_score, void_label, candidates[best])


def update_confusion(
  confusion: jax.Array, labels: jax.Array, predictions: jax.Array, valid: jax.Array
) -> jax.Array:
  """Adds the valid pixels of (labels, predictions) to an int32 [C, C + 1] confusion matrix."""
  num_classes, width = confusion.shape
  index = jnp.where(valid, labels * width + predictions, 0).reshape(-1)
  counts = jnp.bincount(
    index, weights=valid.reshape(-1).astype(jnp.int32), length=num_classes * width
  )
  return confusion + counts.reshape(num_classes, width).astype(jnp.int32)


def calibrated_predictions(logits: jax.Array, tasks: EvalTasks, gamma: jax.Array) -> jax.Array:
  """GZLSS prediction: softmax over candidates, minus gamma for trained classes, argmax."""
  candidates = jnp.asarray(tasks.candidates)
  usable = jnp.asarray(tasks.available)[candidates]
  probs = calibrated_prediction.candidate_probabilities(logits, usable)
  probs = calibrated_prediction.calibrate(probs, tasks.calibrated, gamma)
  return predict(probs, candidates, usable, tasks.num_classes)


def count_images_per_class(labels: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
  """Per class, the number of images of the batch with at least one valid pixel of it: int32 [C]."""

  def present(image_labels, image_valid):
    index = jnp.where(image_valid, image_labels, 0).reshape(-1)
    weights = image_valid.reshape(-1).astype(jnp.int32)
    return jnp.bincount(index, weights=weights, length=num_classes) > 0

  return jnp.sum(jax.vmap(present)(labels, valid), axis=0, dtype=jnp.int32)


def eval_logits(
  batch: dict[str, jax.Array],
  variables,
  class_embeddings: jax.Array,
  *,
  model: SegmentationNet,
  candidates: tuple[int, ...],
  msc_scales: tuple[float, ...],
) -> jax.Array:
  """Fused multi-scale logits of the `candidates` classes at the labels' size [B, h, w, K]."""
  images, labels = batch["image"], batch["label"]
  class_ids = jnp.asarray(candidates)
  logits_fn = lambda x: logits_for_classes(model, variables, x, class_embeddings, class_ids)
  fused = msc.multi_scale_logits(logits_fn, images, msc_scales)[-1]
  if "label_size" in batch:  # Full-resolution protocol: labels at each image's own size.
    return msc.resize_logits_per_image(fused, batch["label_size"], labels.shape[1:3])
  return msc.resize_logits(fused, *labels.shape[1:3])


def eval_step(
  confusions: dict[str, jax.Array],
  batch: dict[str, jax.Array],
  variables,
  class_embeddings: jax.Array,
  *,
  model: SegmentationNet,
  tasks: EvalTasks,
  msc_scales: tuple[float, ...],
) -> dict[str, jax.Array]:
  """Adds one batch to the ZLSS matrix, the GZLSS matrix of every gamma and the image counts."""
  labels = batch["label"]
  logits = eval_logits(
    batch,
    variables,
    class_embeddings,
    model=model,
    candidates=tasks.candidates,
    msc_scales=msc_scales,
  )
  in_batch = batch["mask"][:, None, None]

  unseen = jnp.asarray(tasks.unseen)
  unseen_positions = jnp.asarray([tasks.candidates.index(c) for c in tasks.unseen])
  unseen_usable = jnp.asarray(tasks.available)[unseen]
  zlss_pred = predict(logits[..., unseen_positions], unseen, unseen_usable, tasks.num_classes)
  zlss_valid = in_batch & jnp.isin(labels, unseen)
  zlss = update_confusion(confusions["zlss"], labels, zlss_pred, zlss_valid)

  gzlss_valid = in_batch & (labels != splits.IGNORE_LABEL)
  gzlss = [
    update_confusion(
      confusions["gzlss"][i],
      labels,
      calibrated_predictions(logits, tasks, jnp.float32(g)),
      gzlss_valid,
    )
    for i, g in enumerate(tasks.gammas)
  ]
  # Padded images have no valid pixel, so they count for no class.
  counts = count_images_per_class(labels, gzlss_valid, tasks.num_classes)
  return {
    "zlss": zlss,
    "gzlss": jnp.stack(gzlss),
    "class_images": confusions["class_images"] + counts,
  }


def compute_confusions(
  variables,
  batches: Iterable[dict[str, np.ndarray]],
  class_embeddings: np.ndarray,
  *,
  model: SegmentationNet,
  tasks: EvalTasks,
  mesh: jax.sharding.Mesh,
  msc_scales: tuple[float, ...],
) -> dict[str, np.ndarray]:
  """Runs the model over a whole split and returns the confusion matrices (int64, host).

  Args:
    variables: {'params', 'batch_stats'} of the model (replicated over the mesh).
    batches: this process's evaluation batches of the split (pipeline.create_eval_batches):
      every process yields the same number, padded with masked-out images.
    class_embeddings: [num_classes, d_w] class embedding matrix.
    model: the network.
    tasks: what to score.
    mesh: device mesh; batches are split over its 'data' axis.
    msc_scales: the extra MSC input scales.

  Returns:
    {'zlss': [C, C+1], 'gzlss': [G, C, C+1]} summed over every image of the split, and
    'class_images' [C]: per class, the number of images with a labelled pixel of it.
  """
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  c = tasks.num_classes
  confusions = {
    "zlss": jnp.zeros((c, c + 1), jnp.int32),
    "gzlss": jnp.zeros((len(tasks.gammas), c, c + 1), jnp.int32),
    "class_images": jnp.zeros((c,), jnp.int32),
  }
  confusions = jax.device_put(confusions, replicated)
  step = jax.jit(
    functools.partial(eval_step, model=model, tasks=tasks, msc_scales=tuple(msc_scales)),
    donate_argnums=(0,),
    out_shardings=replicated,
  )
  class_embeddings = jax.device_put(class_embeddings, replicated)
  with jax.set_mesh(mesh):
    for batch in batches:
      confusions = step(
        confusions, make_global_batch(batch, batch_sharding), variables, class_embeddings
      )
  return {k: np.asarray(jax.device_get(v), np.int64) for k, v in confusions.items()}
