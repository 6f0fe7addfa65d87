"""TensorBoard image panels: image | ground truth | GZLSS prediction, with a legend."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from spnet_jax.data import pipeline
from spnet_jax.evaluation import eval_step, visualize
from spnet_jax.evaluation.eval_step import EvalTasks
from spnet_jax.models.registry import SegmentationNet


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

  Truth and prediction are visualize.label_panel's: solid class colours, the legend's own.
  Label values outside the class list (ignore, no prediction) show the image dimmed.
  """
  separator = np.full((image.shape[0], visualize.GAP_WIDTH, 3), 255, np.uint8)
  shown = np.union1d(np.unique(label), np.unique(prediction))
  present = [int(c) for c in shown if 0 <= c < len(class_names)]
  parts = [
    image,
    separator,
    visualize.label_panel(image, label, class_names),
    separator,
    visualize.label_panel(image, prediction, class_names),
    visualize.legend_strip(present, class_names, image.shape[0]),
  ]
  return np.concatenate(parts, axis=1)


def prediction_panels(
  variables,
  batch: dict[str, np.ndarray],
  class_embeddings: np.ndarray,
  *,
  model: SegmentationNet,
  tasks: EvalTasks,
  msc_scales: tuple[float, ...],
  image_mode: str,
  class_names: Sequence[str],
) -> list[np.ndarray]:
  """Comparison panels of the images of one evaluation batch (GZLSS, gamma 0).

  The prediction is the argmax over every evaluated class. It runs on this process's first
  device with its copy of the replicated parameters, so process 0 can call it alone.

  Args:
    variables: {'params', 'batch_stats'} of the model.
    batch: an evaluation batch (pipeline.create_eval_batches) of this process.
    class_embeddings: [num_classes, d_w] class embedding matrix.
    model: the network.
    tasks: what the evaluation scores (candidates and which classes have a score).
    msc_scales: the extra MSC input scales.
    image_mode: config.data.image_mode, to turn the network input back into an image.
    class_names: name of every label value.

  Returns:
    One uint8 [H, W', 3] panel per image (see comparison_panel), at the labels' resolution.
  """
  device = jax.local_devices()[0]
  variables = jax.device_put(jax.tree.map(lambda x: x.addressable_data(0), variables), device)

  @jax.jit
  def gzlss_predictions(batch, variables, class_embeddings):
    logits = eval_step.eval_logits(
      batch,
      variables,
      class_embeddings,
      model=model,
      candidates=tasks.candidates,
      msc_scales=tuple(msc_scales),
    )
    return eval_step.calibrated_predictions(logits, tasks, jnp.float32(0.0))

  inputs = {k: v for k, v in batch.items() if k != "mask"}
  predictions = np.asarray(
    gzlss_predictions(
      jax.device_put(inputs, device),
      variables,
      jax.device_put(class_embeddings, device),
    )
  )
  panels = []
  for i in np.flatnonzero(batch["mask"]):
    image = to_uint8_rgb(batch["image"][i], image_mode)
    label, prediction = batch["label"][i], predictions[i]
    if "label_size" in batch:  # Full resolution: show all three at the label's own size.
      height, width = (int(v) for v in batch["label_size"][i])
      label, prediction = label[:height, :width], prediction[:height, :width]
      image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    panels.append(comparison_panel(image, label, prediction, class_names))
  return panels
