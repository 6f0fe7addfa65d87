"""Builds a run from its config and drives it: train (resuming), calibrate, evaluate, report."""

import dataclasses
import functools
import os

import jax
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds
from absl import logging
from clu import metric_writers
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spnet_jax import config_validation as validation
from spnet_jax import paths
from spnet_jax import workdir as workdir_lib
from spnet_jax.data import batching, datasets, fewshot, pipeline, splits
from spnet_jax.embeddings import class_embeddings as embeddings
from spnet_jax.errors import UserError
from spnet_jax.evaluation import calibration, eval_panels, eval_report, eval_step, metrics
from spnet_jax.interop import pretrained
from spnet_jax.models.layers import FROZEN_COLLECTION
from spnet_jax.models.registry import SegmentationNet, create_model
from spnet_jax.train import checkpoint
from spnet_jax.train import loop as train
from spnet_jax.train import optimizer as optim
from spnet_jax.train import step as step_lib

MODES = ("train_and_evaluate", "evaluate")
PREDICTION_IMAGES = 3  # Test images shown in TensorBoard after evaluation.


@dataclasses.dataclass
class RunSetup:
  """Everything a run needs besides its state, built once from the config."""

  config: ml_collections.ConfigDict
  split: splits.ClassSplit
  class_embeddings: np.ndarray
  builder: tfds.core.DatasetBuilder
  mesh: jax.sharding.Mesh
  model: SegmentationNet
  tx: optax.GradientTransformation
  pool: fewshot.FewShotPool | None = None  # Few-label training: the image pool.

  @property
  def train_classes(self) -> tuple[int, ...]:
    """Classes trained with labels, in training-label order (seen + val, then novel)."""
    if self.pool:
      return self.pool.visible_classes
    if self.config.selftrain.fraction > 0:
      # Self-training scores the unseen classes too; they follow the trained ones.
      return self.split.train_classes + self.split.unseen
    return self.split.train_classes


def create_setup(config: ml_collections.ConfigDict) -> RunSetup:
  """Validates the config and builds split, embeddings, dataset, mesh, model and optimiser."""
  validation.validate_config(config)
  builder = datasets.get_builder(config)
  split = run_split(config)
  class_embeddings = embeddings.load_class_embeddings(config, split)
  mesh = step_lib.create_mesh()
  model = create_model(config.model, class_embeddings.shape[1], split.num_classes)
  tx = optim.create_optimizer(config.optimizer, config.train.num_steps)
  pool = create_pool(config, builder, split) if config.fewshot.n else None
  return RunSetup(config, split, class_embeddings, builder, mesh, model, tx, pool)


def run_split(config: ml_collections.ConfigDict) -> splits.ClassSplit:
  """The class split a run trains and evaluates on (val held out as unseen in a calibration run)."""
  split = splits.get_split(config.data.name, config.data.split)
  if config.data.get("hold_out_val_classes"):
    return split.holding_out_val()
  return split.excluding_val() if config.data.get("exclude_val_classes") else split


def create_pool(
  config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, split: splits.ClassSplit
) -> fewshot.FewShotPool:
  """The few-label image pool of config.fewshot (per-class lists built once and saved)."""
  cfg = config.fewshot
  if cfg.spnet_pickle:
    lists = fewshot.lists_from_spnet_pickle(cfg.spnet_pickle, cfg.spnet_train_ids)
  else:
    lists = fewshot.load_or_build_class_image_lists(
      builder, config.data.train_split, split.num_classes, cfg.lists
    )
  spnet_pool = cfg.get("pool_entries", "distinct") == "spnet"
  pool = fewshot.build_pool(
    lists,
    split,
    cfg.n,
    cfg.offset,
    keep_duplicates=spnet_pool,
    seen_draw_order=split.seen + split.val if spnet_pool else None,
  )
  logging.info(
    "Few-label pool: n=%d, offset=%d, %d entries (seen and novel classes %s).",
    pool.n,
    pool.offset,
    len(pool.entries),
    split.names(split.unseen),
  )
  return pool


def initial_or_restored_state(
  setup: RunSetup, manager, step: int | None = None, fallback: bool = False
):
  """The latest checkpoint (or `step`) if there is one, else new parameters.

  Every checkpoint is verified (checkpoint.restore); with `fallback` (a training rerun) a
  damaged latest one is set aside for the newest good one. New parameters come from
  config.model.init_checkpoint (converted weights) where given, and are freshly initialised
  otherwise (and for every variable the converted weights lack).
  """
  config, mesh = setup.config, setup.mesh
  replicated = NamedSharding(mesh, P())
  init = step_lib.train_state_init(
    setup.model, setup.tx, config.data.init_image_size, setup.class_embeddings
  )
  rng = jax.random.key(config.seed)
  abstract = checkpoint.abstract_train_state(init, replicated)
  restored = checkpoint.restore(manager, abstract, step, fallback=fallback)
  if restored is not None:
    logging.info("Restored checkpoint step %d from %s.", int(restored.step), manager.directory)
    return restored
  state = jax.jit(init, out_shardings=replicated)(rng)
  start_workdir = config.fewshot.init_workdir or config.selftrain.init_workdir
  if start_workdir:
    keep = bool(config.fewshot.n and config.fewshot.get("keep_optimizer_state", False))
    state = start_from_zero_label_run(state, abstract, start_workdir, setup.tx, keep)
  elif config.model.init_checkpoint:
    state = pretrained.load_into_state(state, config, setup.tx)
  count = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Initialised %s parameters (trainable).", f"{count:,}")
  return state


def start_from_zero_label_run(state, abstract, source: str, tx, keep_optimizer_state: bool = False):
  """Few-label or self-training stage: the zero-label run's weights at step 0.

  Args:
    state: the freshly initialised state of this stage.
    abstract: its abstract state (shapes and shardings) to restore into.
    source: the zero-label run's workdir (its latest checkpoint is used).
    tx: this stage's optimiser.
    keep_optimizer_state: continue the zero-label run's optimiser state (SGD momentum), as
      SPNet's --continue-from does, with the learning-rate schedule back at step 0; False
      starts from a fresh optimiser state.

  Returns:
    The state to train from.
  """
  manager = checkpoint.create_manager(source, max_to_keep=1)
  try:
    restored = checkpoint.restore(manager, abstract)
  finally:
    manager.close()
  if restored is None:
    raise UserError(
      f"{source!r} (config.fewshot/selftrain.init_workdir) holds no checkpoint: train the "
      "zero-label model there first (the same config without fewshot / selftrain)."
    )
  logging.info(
    "Stage two starts from %s, step %d, with %s optimiser state.",
    source,
    int(restored.step),
    "its" if keep_optimizer_state else "a fresh",
  )
  if keep_optimizer_state:
    opt_state = optim.restart_schedule(restored.opt_state)
  else:
    opt_state = jax.jit(tx.init)(restored.params)
  return state.replace(params=restored.params, frozen=restored.frozen, opt_state=opt_state)


def training_layout(config: ml_collections.ConfigDict, mesh) -> batching.BatchLayout:
  """This process's rows of each global training batch, padded to fit the mesh's devices."""
  return batching.batch_layout(
    config.train.batch_size,
    mesh.devices.size,
    jax.process_count(),
    jax.process_index(),
    config.train.accumulation_steps,
  )


def training_batches(setup: RunSetup, start_step: int):
  """The run's training stream from start_step: the few-label pool, or the training split."""
  config = setup.config
  layout = training_layout(config, setup.mesh)
  if setup.pool:
    return fewshot.create_fewshot_iterator(
      config.data, setup.builder, setup.pool, layout, config.seed, start_step
    )
  # Labels of the trained classes only: with self-training the unseen classes' pixels must stay
  # ignore pixels, for the pseudo-labels to fill (their ground truth is never seen).
  return pipeline.create_train_iterator(
    config.data,
    setup.builder,
    setup.split.train_classes,
    layout,
    config.seed,
    start_step=start_step,
  )


def eval_local_batch(config: ml_collections.ConfigDict, mesh) -> int:
  """Evaluation images per process and batch: config.eval.batch_size padded to the devices."""
  padded = batching.padded_batch_size(config.eval.batch_size, mesh.devices.size)
  return padded // jax.process_count()


def evaluate_split(setup: RunSetup, state, split_name: str, tasks) -> dict[str, np.ndarray]:
  """The run's confusion matrices on a TFDS split (eval_step.compute_confusions)."""
  config = setup.config
  batches = pipeline.create_eval_batches(
    config.data,
    setup.builder,
    split_name,
    splits.eval_label_table(setup.split),
    eval_local_batch(config, setup.mesh),
  )
  return eval_step.compute_confusions(
    {"params": state.params, FROZEN_COLLECTION: state.frozen},
    batches,
    setup.class_embeddings,
    model=setup.model,
    tasks=tasks,
    mesh=setup.mesh,
    msc_scales=tuple(config.model.msc_scales),
  )


def create_eval_tasks(setup: RunSetup) -> eval_step.EvalTasks:
  """What the run is scored on: its split's classes, every gamma of the sweep."""
  config = setup.config
  return eval_step.create_tasks(
    setup.split,
    gamma_grid(config),
    learned_classifier=config.model.classifier != "projection",
    # Classes trained with real labels: calibration subtracts gamma from these.
    trained_classes=setup.pool.visible_classes if setup.pool else None,
  )


def calibrate_and_evaluate(setup: RunSetup, state) -> tuple[dict, dict[str, np.ndarray]]:
  """Chooses gamma on the calibration split, then evaluates the test split.

  Returns the results (as written to results.json) and the test split's confusion matrices.

  Gamma is the best-H point of a sweep on config.eval.calibration_split (images the model
  never trained on, and never the test split), unless config.eval.gamma_file gives it (tuned on
  held-out classes); the test scores at the sweep's gamma are then reported beside it.
  """
  config = setup.config
  tasks = create_eval_tasks(setup)
  calibration_split = config.eval.calibration_split
  sweep = None
  if calibration_split:
    sweep_conf = evaluate_split(setup, state, calibration_split, tasks)
    sweep = eval_report.choose_gamma(sweep_conf["gzlss"], tasks, setup.split)
    sweep["split"] = calibration_split
  if config.eval.gamma_file:
    gamma, source = calibration.read_gamma(config.eval.gamma_file)
  elif sweep:
    gamma, source = sweep["best_gamma"], f"best H on the '{calibration_split}' split"
    if config.data.hold_out_val_classes:
      source += " with the val classes held out as unseen"
  else:
    gamma, source = float(config.eval.gamma), "config.eval.gamma"
  test_conf = evaluate_split(setup, state, config.eval.test_split, tasks)
  results = {
    "dataset": config.data.name,
    "class_split": config.data.split,
    "test_split": config.eval.test_split,
    "step": int(state.step),
    "protocol": protocol_name(config),
    "classes": {
      "seen": setup.split.names(setup.split.seen),
      "val": setup.split.names(setup.split.val),
      "unseen": setup.split.names(setup.split.unseen),
    },
    # Zero-label models are scored on ZLSS / GZLSS, few-label ones on FLSS / GFLSS: the same
    # computations (unseen classes only / every class) after different training.
    "tasks": ["FLSS", "GFLSS"] if setup.pool else ["ZLSS", "GZLSS"],
    "fewshot": (
      {
        "n": setup.pool.n,
        "offset": setup.pool.offset,
        "pool_size": len(setup.pool.entries),
        "pool_entries": config.fewshot.get("pool_entries", "distinct"),
      }
      if setup.pool
      else None
    ),
    "gamma_grid": list(tasks.gammas),
    "gamma_sweep": sweep,
    "test": eval_report.summarize(test_conf, tasks, setup.split, gamma, source),
  }
  if config.eval.gamma_file and sweep:
    # For comparison with the held-out classes' gamma: what the validation images would choose.
    at_sweep = test_conf["gzlss"][list(tasks.gammas).index(sweep["best_gamma"])]
    results["test"]["gzlss"]["calibrated_on_validation_images"] = {
      "gamma": sweep["best_gamma"],
      "gamma_source": f"best H on the '{calibration_split}' split (reported for comparison)",
      **metrics.generalized_scores(at_sweep, setup.split.train_classes, setup.split.unseen),
    }
  return results, test_conf


def protocol_name(config: ml_collections.ConfigDict) -> str:
  """How test images and labels were sized, for the report."""
  if config.data.eval.full_resolution:
    size = config.data.eval.warp_size
    return f"full resolution (input warped to {size}x{size}, logits upsampled to original labels)"
  if config.data.eval.warp_size:
    size = config.data.eval.warp_size
    return f"labels and images warped to {size}x{size}"
  return "native resolution"


def gamma_grid(config: ml_collections.ConfigDict) -> list[float]:
  """The calibration sweep: 0, step, ..., max, and config.eval.gamma."""
  grid = calibration.gamma_grid("linear", config.eval.gamma_step, config.eval.gamma_max)
  return sorted(set(grid) | {round(float(config.eval.gamma), 6)})


def write_results(
  workdir: str,
  results: dict,
  confusions: dict[str, np.ndarray],
  setup: RunSetup,
  writer: metric_writers.MetricWriter,
) -> None:
  """Writes results.json, confusions.npz and summary scalars (process 0), prints the table.

  confusions.npz holds the test split's matrices [C, C + 1] (rows: ground truth, columns:
  prediction, last column: no prediction): 'zlss', and 'gzlss' with one matrix per gamma of
  results['gamma_grid']; and 'class_images' [C], the number of test images with each class.
  The scalars include every class's IoU: eval_zlss_iou/<class> (unseen classes),
  eval_gzlss_iou/<class> and eval_gzlss_calibrated_iou/<class> (every evaluated class).
  """
  test = results["test"]
  scalars = {
    "eval_zlss_unseen_miou": test["zlss"]["unseen_miou"],
    **{
      f"eval_gzlss_{k}": test["gzlss"]["uncalibrated"][k]
      for k in ("seen_miou", "unseen_miou", "harmonic")
    },
    **{
      f"eval_gzlss_calibrated_{k}": test["gzlss"]["calibrated"][k]
      for k in ("seen_miou", "unseen_miou", "harmonic", "gamma")
    },
  }
  per_class = {
    "eval_zlss_iou": test["zlss"]["per_class_iou"],
    "eval_gzlss_iou": test["gzlss"]["per_class_iou_uncalibrated"],
    "eval_gzlss_calibrated_iou": test["gzlss"]["per_class_iou_calibrated"],
  }
  for prefix, values in per_class.items():
    # A class absent from ground truth and predictions has no IoU (None): no point to draw.
    scalars.update({f"{prefix}/{k}": v for k, v in values.items() if v is not None})
  writer.write_scalars(results["step"], scalars)
  writer.flush()
  if jax.process_index() != 0:
    return
  paths.save_arrays(os.path.join(workdir, "confusions.npz"), **confusions)
  if setup.config.data.hold_out_val_classes and results["gamma_sweep"]:
    held_out = setup.split.names(setup.split.unseen)
    written = calibration.write_sweep(workdir, results["gamma_sweep"], held_out, results["step"])
    print(f"Wrote {written}: use it with --config.eval.gamma_file={written}", flush=True)
  path = os.path.join(workdir, workdir_lib.RESULTS_FILE)
  workdir_lib.write_json(path, results)
  print(eval_report.format_report(results, setup.split), flush=True)
  print(f"Wrote {path}", flush=True)


def write_prediction_images(
  setup: RunSetup, state, writer: metric_writers.MetricWriter, count: int = PREDICTION_IMAGES
) -> None:
  """TensorBoard images eval_predictions/<i>: image | ground truth | GZLSS prediction.

  The first `count` test images; process 0 alone computes and writes them.
  """
  if jax.process_index() != 0:
    return
  config = setup.config
  table = splits.eval_label_table(setup.split)
  batches = pipeline.create_eval_batches(
    config.data, setup.builder, config.eval.test_split, table, count
  )
  batch = next(batches)
  batches.close()
  panels = eval_panels.prediction_panels(
    {"params": state.params, FROZEN_COLLECTION: state.frozen},
    batch,
    setup.class_embeddings,
    model=setup.model,
    tasks=create_eval_tasks(setup),
    msc_scales=tuple(config.model.msc_scales),
    image_mode=config.data.image_mode,
    class_names=setup.split.class_names,
  )
  writer.write_images(int(state.step), {f"eval_predictions/{i}": p for i, p in enumerate(panels)})
  writer.flush()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The main job: train (resuming from the latest checkpoint), then calibrate and evaluate.

  With config.mode == 'evaluate' no training happens: the latest checkpoint in the workdir (or
  config.eval.checkpoint_step) is restored and evaluated.

  Returns:
    The results dict also written to `workdir`/results.json.
  """
  setup = create_setup(config)
  recorded = paths.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE))
  if config.mode == "evaluate" and not recorded and not config.model.init_checkpoint:
    raise UserError(
      f"config.mode='evaluate' needs a trained workdir, and {workdir} holds no run (no "
      f"{workdir_lib.CONFIG_FILE}): train first, or evaluate converted weights with "
      "--config.model.init_checkpoint=DIR."
    )
  # Stops before touching a file when the workdir holds another run or is in use.
  with workdir_lib.claim(workdir, config) as overrides:
    writer = workdir_lib.create_writer(workdir)
    manager = checkpoint.create_manager(workdir, config.train.max_checkpoints)
    try:
      return _run(setup, workdir, writer, manager, overrides)
    finally:
      manager.close()
      writer.close()


def _run(setup: RunSetup, workdir: str, writer, manager, overrides: dict) -> dict:
  """train_and_evaluate on a claimed workdir."""
  config = setup.config
  logging.info(
    "Mesh %s over %d devices (%d processes).",
    dict(setup.mesh.shape),
    jax.device_count(),
    jax.process_count(),
  )
  if config.mode == "evaluate":
    if manager.latest_step() is None and not config.model.init_checkpoint:
      raise UserError(
        f"config.mode='evaluate' needs a checkpoint, and {manager.directory} has "
        "none: train first (config.mode='train_and_evaluate'), or evaluate converted weights "
        "with --config.model.init_checkpoint=DIR."
      )
    state = initial_or_restored_state(setup, manager, config.eval.checkpoint_step or None)
  else:
    state = initial_or_restored_state(setup, manager, fallback=True)
    state, preempted = train.train(
      config,
      workdir,
      state,
      manager,
      writer,
      model=setup.model,
      tx=setup.tx,
      mesh=setup.mesh,
      class_embeddings=setup.class_embeddings,
      train_classes=setup.train_classes,
      # Self-training: the trailing unseen classes of train_classes get pseudo-labels.
      num_unseen=len(setup.split.unseen) if config.selftrain.fraction > 0 else 0,
      make_batches=functools.partial(training_batches, setup),
    )
    if preempted:
      return {"preempted_at_step": int(state.step)}
  results, confusions = calibrate_and_evaluate(setup, state)
  # Evaluation-only fields this command changed from the run's config.json.
  results["config_overrides"] = overrides
  write_results(workdir, results, confusions, setup, writer)
  write_prediction_images(setup, state, writer)
  return results
