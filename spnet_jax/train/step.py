"""The jitted training step: train state, mesh, loss over the train classes, optimiser update.

Pure JAX (no input pipeline, no logging) so that benchmarks and tools can build the exact step
training runs without TensorFlow or CLU.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding

from spnet_jax.models import msc
from spnet_jax.models.layers import FROZEN_COLLECTION
from spnet_jax.models.registry import SegmentationNet
from spnet_jax.train import losses, self_training


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds. `frozen` is the BatchNorm collection (never trained)."""

  step: jax.Array
  params: Any
  frozen: Any
  opt_state: Any


def create_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process; the batch is split along 'data'."""
  # Auto axes: XLA propagates shardings from the inputs (batch on 'data', the rest replicated).
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def create_train_state(
  model: SegmentationNet,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  image_size: int,
  class_embeddings: jax.Array,
) -> TrainState:
  """Initialises parameters (the class embeddings are an input, not a parameter)."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init(rng, images, class_embeddings)
  params = variables["params"]
  frozen = variables.get(FROZEN_COLLECTION, {})
  return TrainState(
    step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params)
  )


def train_state_init(model, tx, image_size: int, class_embeddings) -> Callable:
  """rng -> a new TrainState of `model` (create_train_state with the run's fixed arguments)."""
  return lambda rng: create_train_state(model, tx, rng, image_size, jnp.asarray(class_embeddings))


def logits_for_classes(
  model: SegmentationNet,
  variables,
  images: jax.Array,
  class_embeddings: jax.Array,
  class_ids: jax.Array,
) -> jax.Array:
  """Logits of the classes `class_ids` (in that order) for either classifier.

  The projection head is evaluated only against those classes' embeddings; the learned head
  scores its fixed class list and the requested columns are taken from it.
  """
  if model.projection:
    return model.apply(variables, images, class_embeddings[class_ids])
  return jnp.take(model.apply(variables, images), class_ids, axis=-1)


def loss_fn(
  params,
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  rng: jax.Array,
  *,
  model: SegmentationNet,
  config: ml_collections.ConfigDict,
  class_embeddings: jax.Array,
  train_classes: jax.Array,
  num_unseen: int = 0,
  image_mask: jax.Array | None = None,
) -> jax.Array:
  """Training loss of one (micro-)batch; labels index the train classes.

  With self-training `train_classes` ends with `num_unseen` unseen classes, and confident ignore
  pixels get their pseudo-labels (config.selftrain.fraction) before the loss; `image_mask` [B]
  (False on the padding images of data/batching.py) keeps padding images out of them.
  """
  variables = {"params": params, FROZEN_COLLECTION: state.frozen}
  logits_fn = lambda x: logits_for_classes(model, variables, x, class_embeddings, train_classes)
  outputs = msc.multi_scale_logits(logits_fn, images, tuple(config.model.msc_scales))
  if num_unseen:
    scores = msc.resize_logits(outputs[-1], *labels.shape[1:3])
    labels = self_training.pseudo_label(
      scores, labels, scores.shape[-1] - num_unseen, config.selftrain.fraction, image_mask
    )
  return losses.segmentation_loss(
    outputs, labels, config.loss.name, config.loss.label_resolution, rng
  )


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  class_embeddings: jax.Array,
  rng: jax.Array,
  *,
  model: SegmentationNet,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  train_classes: np.ndarray,
  num_unseen: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update, accumulating gradients over config.train.accumulation_steps.

  Micro-batch j takes every k-th image (j, j + k, ...), so each device keeps working on its
  own slice of the batch. batch['mask'] (optional, [B] bool) marks the real images of a padded
  batch; padding images have ignore labels, so only self-training needs it.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(
    functools.partial(
      loss_fn,
      model=model,
      config=config,
      class_embeddings=class_embeddings,
      train_classes=jnp.asarray(train_classes),
      num_unseen=num_unseen,
    )
  )
  k = config.train.accumulation_steps
  mask = batch.get("mask")
  if mask is None:
    mask = jnp.ones(batch["label"].shape[:1], bool)
  if k == 1:
    loss, grads = grad_fn(
      state.params, state, batch["image"], batch["label"], step_rng, image_mask=mask
    )
  else:

    def micro_batches(x):
      return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    micro = [micro_batches(batch["image"]), micro_batches(batch["label"]), micro_batches(mask)]

    def accumulate(carry, inputs):
      index, micro_images, micro_labels, micro_mask = inputs
      rng = jax.random.fold_in(step_rng, index)
      loss, grads = grad_fn(
        state.params, state, micro_images, micro_labels, rng, image_mask=micro_mask
      )
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
    (loss, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), *micro))
    # SPNet divides each micro-batch loss by iter_size: the update uses the mean.
    loss, grads = jax.tree.map(lambda x: x / k, (loss, grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}


def make_global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict:
  """This process's numpy batch -> global arrays sharded along the batch dimension."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
