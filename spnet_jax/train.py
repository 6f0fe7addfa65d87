"""Train state, jitted training step over a data-parallel mesh, and the training loop."""

import functools
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spnet_jax import checkpoint, losses, self_training
from spnet_jax import optimizer as optim
from spnet_jax.data import fewshot, pipeline
from spnet_jax.models import SegmentationNet, msc
from spnet_jax.models.layers import FROZEN_COLLECTION

if TYPE_CHECKING:
  from spnet_jax import experiment


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
) -> jax.Array:
  """Training loss of one (micro-)batch; labels index the train classes.

  With self-training `train_classes` ends with `num_unseen` unseen classes, and confident ignore
  pixels get their pseudo-labels (config.selftrain.fraction) before the loss.
  """
  variables = {"params": params, FROZEN_COLLECTION: state.frozen}
  logits_fn = lambda x: logits_for_classes(model, variables, x, class_embeddings, train_classes)
  outputs = msc.multi_scale_logits(logits_fn, images, tuple(config.model.msc_scales))
  if num_unseen:
    scores = msc.resize_logits(outputs[-1], *labels.shape[1:3])
    labels = self_training.pseudo_label(
      scores, labels, scores.shape[-1] - num_unseen, config.selftrain.fraction
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
  own slice of the batch.
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
  if k == 1:
    loss, grads = grad_fn(state.params, state, batch["image"], batch["label"], step_rng)
  else:

    def micro_batches(x):
      return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    images, labels = micro_batches(batch["image"]), micro_batches(batch["label"])

    def accumulate(carry, inputs):
      index, micro_images, micro_labels = inputs
      loss, grads = grad_fn(
        state.params, state, micro_images, micro_labels, jax.random.fold_in(step_rng, index)
      )
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
    (loss, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), images, labels))
    # SPNet divides each micro-batch loss by iter_size: the update uses the mean.
    loss, grads = jax.tree.map(lambda x: x / k, (loss, grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}


def make_global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict:
  """This process's numpy batch -> global arrays sharded along the batch dimension."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_device(
  iterator: Iterator[dict], sharding: NamedSharding, size: int = 2
) -> Iterator[dict]:
  """Keeps `size` batches in flight to the devices while the current step runs."""
  queue = []
  for batch in iterator:
    queue.append(make_global_batch(batch, sharding))
    if len(queue) > size:
      yield queue.pop(0)
  yield from queue


def all_finite(tree) -> bool:
  """True when every leaf of `tree` is finite (a host sync)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return bool(jnp.all(jnp.stack(leaves))) if leaves else True


def compile_and_describe(step_fn, *args):
  """Compiles the training step for `args` and logs its FLOPs and memory per device."""
  start = time.time()
  compiled = step_fn.lower(*args).compile()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  mib = lambda n: f"{n / 2**20:,.1f} MiB"
  if memory is not None:
    logging.info(
      "Compiled the training step in %.1f s: %.3g GFLOP per step; per device: arguments %s, "
      "outputs %s, temporaries %s, code %s.",
      time.time() - start,
      cost.get("flops", float("nan")) / 1e9,
      mib(memory.argument_size_in_bytes),
      mib(memory.output_size_in_bytes),
      mib(memory.temp_size_in_bytes),
      mib(memory.generated_code_size_in_bytes),
    )
  return compiled


class PreemptionSignal:
  """Turns SIGTERM (what TPU/GPU schedulers send before preempting) into a flag the loop polls.

  On a single process the flag is read every step; with several processes they agree through
  an all-gather every `sync_every` steps, so all of them save the same step and stop together.
  """

  def __init__(self, sync_every: int):
    self.received = False
    self.sync_every = sync_every
    self._previous = None

  def __enter__(self) -> "PreemptionSignal":
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.received = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.received
    if step % self.sync_every:
      return False
    flags = multihost_utils.process_allgather(np.asarray(self.received))
    return bool(np.any(flags))


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss; the run stops without saving that state."""


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  setup: "experiment.RunSetup",
  state: TrainState,
  manager,
  writer: metric_writers.MetricWriter,
) -> tuple[TrainState, bool]:
  """Runs the training loop from state.step to config.train.num_steps.

  Checkpoints every config.train.checkpoint_every_steps and at the end. A non-finite loss
  stops the run with its step number; parameters are checked before every save, so the last
  checkpoint on disk is always a good one. SIGTERM saves the current step and stops early.

  Returns:
    The final state, and whether training stopped early on SIGTERM.
  """
  cfg = config.train
  mesh, model = setup.mesh, setup.model
  tx = setup.tx
  start_step = int(state.step)
  num_steps = cfg.num_steps
  if start_step >= num_steps:
    logging.info("Checkpoint step %d >= num_steps %d: nothing to train.", start_step, num_steps)
    return state, False
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  local_batch = cfg.batch_size // jax.process_count()
  # The data stream is a function of the seed and the step: a resumed run continues it exactly.
  if setup.pool:
    batches = fewshot.create_fewshot_iterator(
      config.data, setup.builder, setup.pool, cfg.batch_size, config.seed, start_step=start_step
    )
  else:
    batches = pipeline.create_train_iterator(
      config.data,
      setup.builder,
      setup.train_classes,
      cfg.batch_size,
      config.seed,
      start_step=start_step,
    )
  step_fn = jax.jit(
    functools.partial(
      train_step,
      model=model,
      tx=tx,
      config=config,
      train_classes=np.asarray(setup.train_classes),
      # Self-training: the trailing unseen classes of train_classes get pseudo-labels.
      num_unseen=len(setup.split.unseen) if config.selftrain.fraction > 0 else 0,
    ),
    donate_argnums=(0,),
    out_shardings=(replicated, replicated),
  )
  class_embeddings = jax.device_put(setup.class_embeddings, replicated)
  rng = jax.device_put(jax.random.key_data(jax.random.key(config.seed + 1)), replicated)
  rng = jax.random.wrap_key_data(rng)
  report = periodic_actions.ReportProgress(
    num_train_steps=num_steps, writer=writer, every_secs=cfg.log_every_secs
  )
  schedule = optim.create_learning_rate_schedule(config.optimizer, num_steps)
  logging.info(
    "Training steps %d..%d, global batch %d (%d per process, %d per device), mesh %s, "
    "%s trainable parameters.",
    start_step,
    num_steps,
    cfg.batch_size,
    local_batch,
    cfg.batch_size // jax.device_count(),
    dict(mesh.shape),
    f"{sum(x.size for x in jax.tree.leaves(state.params)):,}",
  )

  pending: list[dict[str, jax.Array]] = []
  last_log_time, last_log_step = time.time(), start_step
  with jax.set_mesh(mesh), PreemptionSignal(cfg.log_every_steps) as preemption:
    device_batches = prefetch_to_device(batches, batch_sharding)
    first_batch = next(device_batches)
    compiled_step = compile_and_describe(step_fn, state, first_batch, class_embeddings, rng)
    for step in range(start_step + 1, num_steps + 1):
      batch = first_batch if step == start_step + 1 else next(device_batches)
      state, metrics = compiled_step(state, batch, class_embeddings, rng)
      pending.append(metrics)
      report(step, time.time())
      now = time.time()
      due = (
        step % cfg.log_every_steps == 0
        or now - last_log_time >= cfg.log_every_secs
        or step == num_steps
      )
      if due:
        losses_so_far = np.asarray(jax.device_get([m["loss"] for m in pending]))
        bad = np.flatnonzero(~np.isfinite(losses_so_far))
        if bad.size:
          bad_step = step - len(pending) + 1 + int(bad[0])
          raise NonFiniteLossError(
            f"Non-finite loss {losses_so_far[bad[0]]} at step {bad_step}; stopping. The last "
            f"good checkpoint is step {manager.latest_step()} in {workdir}/checkpoints "
            "(lower config.optimizer.base_lr or check the input data)."
          )
        grad_norm = float(pending[-1]["grad_norm"])
        rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
        eta = (num_steps - step) / max(rate, 1e-9)
        lr = float(schedule(step - 1))
        logging.info(
          "step %d/%d  loss %.4f  %.2f steps/s  lr %.3g  ETA %s",
          step,
          num_steps,
          losses_so_far.mean(),
          rate,
          lr,
          _format_seconds(eta),
        )
        writer.write_scalars(
          step,
          {
            "train_loss": float(losses_so_far.mean()),
            "train_grad_norm": grad_norm,
            "train_learning_rate": lr,
            "train_steps_per_sec": rate,
          },
        )
        pending.clear()
        last_log_time, last_log_step = now, step
      preempted = preemption.should_stop(step)
      if step % cfg.checkpoint_every_steps == 0 or step == num_steps or preempted:
        if not all_finite(state.params):
          raise NonFiniteLossError(
            f"Non-finite parameters at step {step}; not saving them. The last good "
            f"checkpoint is step {manager.latest_step()} in {workdir}/checkpoints."
          )
        checkpoint.save(manager, step, state)
      if preempted:
        logging.warning("SIGTERM: saved step %d and stopping; rerun to resume.", step)
        break
  manager.wait_until_finished()
  return state, preempted


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s"
