"""The training loop: input stream to the jitted step (train/step.py), logging, checkpoints."""

import functools
import signal
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spnet_jax.data import batching
from spnet_jax.train import checkpoint
from spnet_jax.train import optimizer as optim
from spnet_jax.train import step as step_lib


def prefetch_to_device(
  iterator: Iterator[dict], sharding: NamedSharding, size: int = 2
) -> Iterator[dict]:
  """Keeps `size` batches in flight to the devices while the current step runs."""
  queue = []
  for batch in iterator:
    queue.append(step_lib.make_global_batch(batch, sharding))
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
  flops = f"{cost.get('flops', float('nan')) / 1e9:.3g} GFLOP per step"
  if jax.default_backend() == "gpu":  # cuDNN convolutions are custom calls XLA does not count.
    flops = "FLOPs: see python -m spnet_jax.bench.benchmark (XLA's GPU count omits convolutions)"
  memory = compiled.memory_analysis()
  mib = lambda n: f"{n / 2**20:,.1f} MiB"
  if memory is not None:
    logging.info(
      "Compiled the training step in %.1f s: %s; per device: arguments %s, "
      "outputs %s, temporaries %s, code %s.",
      time.time() - start,
      flops,
      mib(memory.argument_size_in_bytes),
      mib(memory.output_size_in_bytes),
      mib(memory.temp_size_in_bytes),
      mib(memory.generated_code_size_in_bytes),
    )
  return compiled


class PreemptionSignal:
  """Turns SIGTERM (what TPU/GPU schedulers send before preempting) into a flag the loop polls.

  On a single process the flag is read every step; with several processes they agree through
  an all-gather every `sync_every` steps, so all of them save the same step and stop together,
  whichever of them got the signal.
  """

  def __init__(self, sync_every: int):
    self.received = False
    self.sync_every = sync_every
    self.signalled: list[int] = []  # The processes that got SIGTERM, once they agree to stop.
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
    self.signalled = [int(p) for p in np.flatnonzero(flags)]
    return bool(self.signalled)

  @property
  def source(self) -> str:
    """For the log: 'SIGTERM', or which processes got it ('SIGTERM to process 1 of 2')."""
    count = jax.process_count()
    if count == 1:
      return "SIGTERM"
    if len(self.signalled) == count:
      return f"SIGTERM to all {count} processes"
    plural = "es" if len(self.signalled) > 1 else ""
    return f"SIGTERM to process{plural} {', '.join(map(str, self.signalled))} of {count}"


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss; the run stops without saving that state."""


def last_good_checkpoint(manager) -> str:
  """'The last good checkpoint is step N in DIR.' (or that there is none yet)."""
  step = manager.latest_step()
  if step is None:
    return f"No checkpoint was saved yet in {manager.directory}."
  return f"The last good checkpoint is step {step} in {manager.directory}."


class TrainLog:
  """Keeps per-step metrics on device and fetches them only at logging intervals.

  At each interval (config.train.log_every_steps or log_every_secs, and the last step) it
  checks every pending loss for NaN/inf, logs a progress line and writes the scalars.
  """

  def __init__(self, config, writer, schedule, start_step: int, manager, workdir: str):
    self.cfg, self.num_steps = config.train, config.train.num_steps
    self.writer, self.schedule = writer, schedule
    self.manager, self.workdir = manager, workdir
    self.pending: list[dict[str, jax.Array]] = []
    self.last_time, self.last_step = time.time(), start_step

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.pending.append(metrics)
    now = time.time()
    due = (
      step % self.cfg.log_every_steps == 0
      or now - self.last_time >= self.cfg.log_every_secs
      or step == self.num_steps
    )
    if due:
      self._write(step, now)

  def _write(self, step: int, now: float) -> None:
    losses = np.asarray(jax.device_get([m["loss"] for m in self.pending]))
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      bad_step = step - len(self.pending) + 1 + int(bad[0])
      raise NonFiniteLossError(
        f"Non-finite loss {losses[bad[0]]} at step {bad_step}; stopping. "
        f"{last_good_checkpoint(self.manager)} (lower config.optimizer.base_lr or check the "
        "input data)."
      )
    rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    eta = (self.num_steps - step) / max(rate, 1e-9)
    lr = float(self.schedule(step - 1))
    logging.info(
      "step %d/%d  loss %.4f  %.2f steps/s  lr %.3g  ETA %s",
      step,
      self.num_steps,
      losses.mean(),
      rate,
      lr,
      _format_seconds(eta),
    )
    self.writer.write_scalars(
      step,
      {
        "train_loss": float(losses.mean()),
        "train_grad_norm": float(self.pending[-1]["grad_norm"]),
        "train_learning_rate": lr,
        "train_steps_per_sec": rate,
      },
    )
    self.pending.clear()
    self.last_time, self.last_step = now, step


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  state: step_lib.TrainState,
  manager,
  writer: metric_writers.MetricWriter,
  *,
  model,
  tx,
  mesh: jax.sharding.Mesh,
  class_embeddings: np.ndarray,
  train_classes: Sequence[int],
  num_unseen: int,
  make_batches: Callable[[int], Iterator[dict[str, np.ndarray]]],
) -> tuple[step_lib.TrainState, bool]:
  """Runs the training loop from state.step to config.train.num_steps.

  Checkpoints every config.train.checkpoint_every_steps and at the end. A non-finite loss
  stops the run with its step number; parameters are checked before every save, and a save
  that fails stops the run at the next step (checkpoint.CheckpointError, naming the last good
  step). SIGTERM saves the current step and stops early.

  Args:
    config: the run's config.
    workdir: the run's folder.
    state: the state to continue from (its step is the first step trained).
    manager: the Orbax checkpoint manager of the workdir.
    writer: metric writer.
    model: the network.
    tx: its optimiser.
    mesh: device mesh; batches are split over its 'data' axis.
    class_embeddings: [num_classes, d_w] class embedding matrix.
    train_classes: label values trained on, in training-label order.
    num_unseen: self-training: how many trailing train_classes get pseudo-labels (else 0).
    make_batches: start step -> this process's share of each global batch from that step.

  Returns:
    The final state, and whether training stopped early on SIGTERM.
  """
  cfg = config.train
  start_step = int(state.step)
  num_steps = cfg.num_steps
  if start_step >= num_steps:
    logging.info("Checkpoint step %d >= num_steps %d: nothing to train.", start_step, num_steps)
    return state, False
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  devices = mesh.devices.size
  padded = batching.padded_batch_size(cfg.batch_size, devices, cfg.accumulation_steps)
  batching.log_padding(cfg.batch_size, padded, devices)
  # The data stream is a function of the seed and the step: a resumed run continues it exactly.
  batches = make_batches(start_step)
  step_fn = jax.jit(
    functools.partial(
      step_lib.train_step,
      model=model,
      tx=tx,
      config=config,
      train_classes=np.asarray(train_classes),
      num_unseen=num_unseen,
    ),
    donate_argnums=(0,),
    out_shardings=(replicated, replicated),
  )
  class_embeddings = jax.device_put(class_embeddings, replicated)
  rng = jax.device_put(jax.random.key_data(jax.random.key(config.seed + 1)), replicated)
  rng = jax.random.wrap_key_data(rng)
  schedule = optim.create_learning_rate_schedule(config.optimizer, num_steps)
  logging.info(
    "Training steps %d..%d, global batch %d (%d rows with any padding: %d per process, %d per "
    "device), mesh %s, %s trainable parameters.",
    start_step,
    num_steps,
    cfg.batch_size,
    padded,
    padded // jax.process_count(),
    padded // devices,
    dict(mesh.shape),
    f"{sum(x.size for x in jax.tree.leaves(state.params)):,}",
  )

  log = TrainLog(config, writer, schedule, start_step, manager, workdir)
  with jax.set_mesh(mesh), PreemptionSignal(cfg.log_every_steps) as preemption:
    device_batches = prefetch_to_device(batches, batch_sharding)
    first_batch = next(device_batches)
    compiled_step = compile_and_describe(step_fn, state, first_batch, class_embeddings, rng)
    for step in range(start_step + 1, num_steps + 1):
      batch = first_batch if step == start_step + 1 else next(device_batches)
      state, metrics = compiled_step(state, batch, class_embeddings, rng)
      log.add(step, metrics)
      preempted = preemption.should_stop(step)
      if step % cfg.checkpoint_every_steps == 0 or step == num_steps or preempted:
        if not all_finite(state.params):
          raise NonFiniteLossError(
            f"Non-finite parameters at step {step}; not saving them. "
            f"{last_good_checkpoint(manager)}"
          )
        checkpoint.save(manager, step, state)
      else:
        checkpoint.check_saves(manager, step)  # An earlier asynchronous save may have failed.
      if preempted:
        logging.warning("%s: saved step %d and stopping; rerun to resume.", preemption.source, step)
        break
  manager.wait_until_finished()
  checkpoint.check_saves(manager, int(state.step))
  return state, preempted


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 60}m{seconds % 60:02d}s"
