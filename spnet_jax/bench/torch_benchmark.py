"""The PyTorch side of `spnet_jax.bench.benchmark --torch`: the same network, weights, step.

Both frameworks start from one random state dict in deeplab-pytorch's layout: PyTorch runs it
through spnet_jax/testing/torch_reference.py, JAX through spnet_jax.interop.convert. The step
matches the JAX one: SPNet MSC outputs, cross-entropy (ignore 255) on each, labels resized to
each output with the same (OpenCV) nearest rule, summed; frozen BatchNorm; SGD with momentum;
gradient accumulation over every k-th image. torch is imported only here.
"""

import statistics
import time

import ml_collections
import numpy as np

from spnet_jax.errors import UserError
from spnet_jax.interop import convert
from spnet_jax.testing.random_state_dicts import aspp_state_dict, caffe_resnet101_state_dict

IGNORE_LABEL = 255


def _check_supported(config: ml_collections.ConfigDict) -> None:
  model = config.model
  if (model.backbone, model.embedding_head, model.classifier) != (
    "resnet101",
    "aspp",
    "projection",
  ):
    raise UserError(
      "The PyTorch side-by-side covers SPNet's ResNet-101 + ASPP + projection network; this "
      f"config has backbone={model.backbone!r}, embedding_head={model.embedding_head!r}, "
      f"classifier={model.classifier!r} (use configs/coco_zlss.py or configs/voc_zlss.py)."
    )
  if model.stride_in_3x3:
    raise UserError("--torch times the caffe layout: set config.model.stride_in_3x3=False.")


def random_state_dict(config: ml_collections.ConfigDict, embedding_dim: int) -> dict:
  """Random ResNet-101 + ASPP weights in deeplab-pytorch's key layout."""
  _check_supported(config)
  sd = caffe_resnet101_state_dict(seed=0)
  sd.update(aspp_state_dict(seed=1, out=embedding_dim, prefix="aspp.c"))
  return sd


def converted_variables(config: ml_collections.ConfigDict, embedding_dim: int) -> dict:
  """The JAX variables of random_state_dict (through spnet_jax.interop.convert)."""
  sd = random_state_dict(config, embedding_dim)
  variables, _ = convert.convert_state_dict(
    sd, "deeplab-pytorch", "resnet101", classifier="projection", embedding_dim=embedding_dim
  )
  return variables


def _nearest_labels(labels, height: int, width: int):
  """OpenCV's nearest resize (SPNet's rule, and spnet_jax.train.losses'), by index gathering."""
  import torch

  from spnet_jax.train.losses import nearest_source_indices

  in_h, in_w = labels.shape[1:]
  rows = torch.from_numpy(nearest_source_indices(in_h, height))
  cols = torch.from_numpy(nearest_source_indices(in_w, width))
  return labels[:, rows][:, :, cols]


def time_training(
  config: ml_collections.ConfigDict,
  batch: dict[str, np.ndarray],
  train_classes: np.ndarray,
  embeddings: np.ndarray,
  warmup: int,
  steps: int,
  threads: int,
) -> dict:
  """Median seconds of the PyTorch train step on `batch` (NHWC images, [B, H, W] labels)."""
  try:
    import torch
    import torch.nn.functional as F
  except ImportError as error:
    raise SystemExit(
      "--torch needs PyTorch: pip install torch==2.13.0 (CPU build; see requirements-dev.txt)."
    ) from error
  from spnet_jax.testing import torch_reference as ref

  torch.set_num_threads(threads)
  sd = {k: torch.from_numpy(v) for k, v in random_state_dict(config, embeddings.shape[1]).items()}
  trainable = [v for k, v in sd.items() if k.endswith(".conv.weight") or k.startswith("aspp.")]
  for tensor in trainable:
    tensor.requires_grad_(True)
  opt = config.optimizer
  optimizer = torch.optim.SGD(
    trainable, lr=opt.base_lr, momentum=opt.momentum, weight_decay=opt.weight_decay
  )
  class_embeddings = torch.from_numpy(embeddings[train_classes])
  images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(batch["label"].astype(np.int64))
  k = config.train.accumulation_steps
  scales = tuple(config.model.msc_scales)

  def net(x):
    return ref.projection(ref.aspp(sd, ref.caffe_resnet101(sd, x)), class_embeddings)

  def loss_of(x, y):
    outputs = ref.msc(net, x, scales) if scales else [net(x)]
    total = 0.0
    for logits in outputs:
      if config.loss.label_resolution == "logits":
        target = _nearest_labels(y, *logits.shape[2:])
      else:
        logits = F.interpolate(logits, size=y.shape[1:], mode="bilinear", align_corners=False)
        target = y
      total = total + F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL)
    return total

  losses = []

  def step():
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for j in range(k):  # Micro-batch j: images j, j + k, ... (as the JAX step).
      loss = loss_of(images[j::k], labels[j::k]) / k
      loss.backward()
      total += loss.detach().item()
    optimizer.step()
    losses.append(total)

  for _ in range(warmup):
    step()
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - start)
  return {
    "torch_version": torch.__version__,
    "threads": threads,
    "median_step_s": statistics.median(seconds),
    "steps_timed": len(seconds),
    "step_s": seconds,
    "first_loss": losses[0],
  }
