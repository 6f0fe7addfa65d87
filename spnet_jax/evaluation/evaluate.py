"""Evaluation: ZLSS/GZLSS confusions and class counts on device, calibration, reports, panels."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from spnet_jax.data import pipeline, splits
from spnet_jax.evaluation import calibrated_prediction, metrics, visualize
from spnet_jax.models import SegmentationNet, msc
from spnet_jax.models.layers import FROZEN_COLLECTION
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


def compute_confusions(setup, state, split_name: str, tasks: EvalTasks) -> dict[str, np.ndarray]:
  """Runs the model over a whole split and returns the confusion matrices (int64, host).

  Args:
    setup: the experiment's RunSetup (model, mesh, builder, embeddings, config).
    state: a TrainState (params and frozen BatchNorm).
    split_name: TFDS split to evaluate.
    tasks: what to score.

  Returns:
    {'zlss': [C, C+1], 'gzlss': [G, C, C+1]} summed over every image of the split, and
    'class_images' [C]: per class, the number of images with a labelled pixel of it.
  """
  config, mesh = setup.config, setup.mesh
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  local_batch = config.eval.batch_size // jax.process_count()
  table = splits.eval_label_table(setup.split)
  c = tasks.num_classes
  confusions = {
    "zlss": jnp.zeros((c, c + 1), jnp.int32),
    "gzlss": jnp.zeros((len(tasks.gammas), c, c + 1), jnp.int32),
    "class_images": jnp.zeros((c,), jnp.int32),
  }
  confusions = jax.device_put(confusions, replicated)
  variables = {"params": state.params, FROZEN_COLLECTION: state.frozen}
  step = jax.jit(
    functools.partial(
      eval_step, model=setup.model, tasks=tasks, msc_scales=tuple(config.model.msc_scales)
    ),
    donate_argnums=(0,),
    out_shardings=replicated,
  )
  class_embeddings = jax.device_put(setup.class_embeddings, replicated)
  with jax.set_mesh(mesh):
    for batch in pipeline.create_eval_batches(
      config.data, setup.builder, split_name, table, local_batch
    ):
      confusions = step(
        confusions, make_global_batch(batch, batch_sharding), variables, class_embeddings
      )
  return {k: np.asarray(jax.device_get(v), np.int64) for k, v in confusions.items()}


def to_uint8_rgb(image: np.ndarray, mode: str) -> np.ndarray:
  """Undoes pipeline.normalize_image: a network input [H, W, 3] back to uint8 RGB."""
  image = np.asarray(image, np.float32)
  if mode == "caffe_bgr":
    rgb = (image + np.asarray(pipeline.CAFFE_BGR_MEAN, np.float32))[..., ::-1]
  elif mode == "imagenet_rgb":
    std, mean = np.asarray(pipeline.IMAGENET_RGB_STD), np.asarray(pipeline.IMAGENET_RGB_MEAN)
    rgb = (image * std + mean) * 255.0
  elif mode == "zero_one":
    rgb = image * 255.0
  elif mode == "minus_one_one":
    rgb = (image + 1.0) * 127.5
  else:
    raise ValueError(f"Unknown config.data.image_mode {mode!r}; valid: {pipeline.IMAGE_MODES}.")
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def comparison_panel(
  image: np.ndarray, label: np.ndarray, prediction: np.ndarray, class_names
) -> np.ndarray:
  """image | ground truth | prediction side by side, then a legend of the classes shown.

  Label values outside the class list (ignore, no prediction) are drawn black.
  """
  separator = np.full((image.shape[0], 4, 3), 255, np.uint8)
  shown = np.union1d(np.unique(label), np.unique(prediction))
  present = [int(c) for c in shown if 0 <= c < len(class_names)]
  parts = [
    image,
    separator,
    visualize.overlay(image, label, class_names, legend=False),
    separator,
    visualize.overlay(image, prediction, class_names, legend=False),
    visualize.legend_strip(present, class_names, image.shape[0]),
  ]
  return np.concatenate(parts, axis=1)


def prediction_panels(setup, state, tasks: EvalTasks, count: int) -> list[np.ndarray]:
  """Comparison panels of the first `count` images of the test split (GZLSS, gamma 0).

  The prediction is the argmax over every evaluated class. It runs on this process's first
  device with its copy of the replicated parameters, so process 0 can call it alone.

  Args:
    setup: the experiment's RunSetup.
    state: a TrainState.
    tasks: what the evaluation scores (candidates and which classes have a score).
    count: number of images.

  Returns:
    One uint8 [H, W', 3] panel per image (see comparison_panel), at the labels' resolution.
  """
  config = setup.config
  table = splits.eval_label_table(setup.split)
  batches = pipeline.create_eval_batches(
    config.data, setup.builder, config.eval.test_split, table, count
  )
  batch = next(batches)
  batches.close()
  device = jax.local_devices()[0]
  variables = {"params": state.params, FROZEN_COLLECTION: state.frozen}
  variables = jax.device_put(jax.tree.map(lambda x: x.addressable_data(0), variables), device)

  @jax.jit
  def gzlss_predictions(batch, variables, class_embeddings):
    logits = eval_logits(
      batch,
      variables,
      class_embeddings,
      model=setup.model,
      candidates=tasks.candidates,
      msc_scales=tuple(config.model.msc_scales),
    )
    return calibrated_predictions(logits, tasks, jnp.float32(0.0))

  inputs = {k: v for k, v in batch.items() if k != "mask"}
  predictions = np.asarray(
    gzlss_predictions(
      jax.device_put(inputs, device),
      variables,
      jax.device_put(setup.class_embeddings, device),
    )
  )
  panels = []
  for i in np.flatnonzero(batch["mask"]):
    image = to_uint8_rgb(batch["image"][i], config.data.image_mode)
    label, prediction = batch["label"][i], predictions[i]
    if "label_size" in batch:  # Full resolution: show all three at the label's own size.
      height, width = (int(v) for v in batch["label_size"][i])
      label, prediction = label[:height, :width], prediction[:height, :width]
      image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    panels.append(comparison_panel(image, label, prediction, setup.split.class_names))
  return panels


def choose_gamma(gzlss: np.ndarray, tasks: EvalTasks, split: splits.ClassSplit) -> dict:
  """The sweep of S/U/H over gamma and the gamma with the best harmonic mean (ties: smallest)."""
  rows = [metrics.generalized_scores(m, split.train_classes, split.unseen) for m in gzlss]
  harmonic = np.array([r["harmonic"] for r in rows])
  best = int(np.argmax(harmonic))
  return {
    "gammas": list(tasks.gammas),
    "seen_miou": [r["seen_miou"] for r in rows],
    "unseen_miou": [r["unseen_miou"] for r in rows],
    "harmonic": harmonic.tolist(),
    "best_gamma": tasks.gammas[best],
  }


def per_class_report(confusion: np.ndarray, class_ids, split: splits.ClassSplit) -> dict:
  iou = metrics.per_class_iou(confusion)
  return {split.class_names[c]: _finite_or_none(iou[c]) for c in class_ids}


def class_statistics(confusions: dict[str, np.ndarray], split: splits.ClassSplit) -> dict:
  """Per evaluated class: labelled pixels, images containing it and mean object size.

  The mean object size is pixels / images: the class's average area in the images that contain
  it (None when no image does), what the paper orders Fig. 3 by.
  """
  # Every GZLSS matrix holds every labelled pixel once: its row sums count the ground truth.
  pixels = confusions["gzlss"][0].sum(axis=1)
  images = confusions["class_images"]
  return {
    split.class_names[c]: {
      "pixels": int(pixels[c]),
      "images": int(images[c]),
      "mean_object_size": float(pixels[c] / images[c]) if images[c] else None,
    }
    for c in split.eval_classes
  }


def summarize(
  confusions: dict[str, np.ndarray],
  tasks: EvalTasks,
  split: splits.ClassSplit,
  gamma: float,
  gamma_source: str,
) -> dict:
  """results.json content for one split: ZLSS, GZLSS at gamma 0 and at `gamma`, per class.

  Also the class statistics of the split (pixels, images, mean object size per class).
  """
  gammas = list(tasks.gammas)
  at_zero = confusions["gzlss"][gammas.index(0.0)]
  at_gamma = confusions["gzlss"][gammas.index(gamma)]
  seen, unseen = split.train_classes, split.unseen
  return {
    "zlss": {
      "unseen_miou": metrics.mean_iou(confusions["zlss"], unseen),
      "per_class_iou": per_class_report(confusions["zlss"], unseen, split),
    },
    "gzlss": {
      "uncalibrated": {"gamma": 0.0, **metrics.generalized_scores(at_zero, seen, unseen)},
      "calibrated": {
        "gamma": gamma,
        "gamma_source": gamma_source,
        **metrics.generalized_scores(at_gamma, seen, unseen),
      },
      "per_class_iou_uncalibrated": per_class_report(at_zero, split.eval_classes, split),
      "per_class_iou_calibrated": per_class_report(at_gamma, split.eval_classes, split),
    },
    "class_statistics": class_statistics(confusions, split),
  }


def _finite_or_none(value: float) -> float | None:
  return None if np.isnan(value) else float(value)


def format_report(results: dict, split: splits.ClassSplit) -> str:
  """A plain-text table of a results dict (the one written to results.json)."""
  test = results["test"]
  unseen_task, all_task = results.get("tasks", ("ZLSS", "GZLSS"))
  lines = [
    f"Results on {results['dataset']} ({results['test_split']} split, step {results['step']}, "
    f"protocol: {results['protocol']})",
    f"  {unseen_task:<5} unseen mIoU            {_pct(test['zlss']['unseen_miou'])}",
  ]
  for key in ("uncalibrated", "calibrated"):
    row = test["gzlss"][key]
    lines.append(
      f"  {all_task:<5} gamma={row['gamma']:.2f} seen {_pct(row['seen_miou'])}  unseen "
      f"{_pct(row['unseen_miou'])}  H {_pct(row['harmonic'])}"
    )
  lines.append(f"  gamma chosen on: {test['gzlss']['calibrated']['gamma_source']}")
  lines.append(f"  per-class IoU ({unseen_task} / {all_task} uncalibrated / calibrated):")
  zlss = test["zlss"]["per_class_iou"]
  uncal = test["gzlss"]["per_class_iou_uncalibrated"]
  cal = test["gzlss"]["per_class_iou_calibrated"]
  for c in split.eval_classes:
    name = split.class_names[c]
    tag = "unseen" if c in split.unseen else ("val" if c in split.val else "seen")
    lines.append(
      f"    {name:<24} {tag:<6} {_pct(zlss.get(name)):>7} {_pct(uncal[name]):>7} "
      f"{_pct(cal[name]):>7}"
    )
  return "\n".join(lines)


def _pct(value: float | None) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "   -  "
  return f"{100 * value:6.2f}"
