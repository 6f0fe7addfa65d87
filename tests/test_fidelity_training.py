"""Training updates of this project against the official SPNet code run as an oracle.

The official train.py (../shared/spnet_reference/original/, imported through
tests/reference_oracle.py) trains MSC(DeepLabV2(...)): per iteration it sets the learning rate
with its poly_lr_scheduler, sums nn.CrossEntropyLoss(ignore_index=-1) over the four MSC outputs
against the labels its resize_target shrinks to each output, divides by ITER_SIZE, backpropagates
each micro-batch and takes one torch SGD step over the three parameter groups of its get_params.
Its few-label stage (--continue-from) loads the zero-label checkpoint's weights and optimiser
state (the momentum buffers) into a model that scores the novel classes too.

Here the original's own classes and functions run those steps with the hyperparameters of its
yaml configs, and this project runs its real path with the matching configs/*.py: the PyTorch
weights through spnet_jax.interop.convert, spnet_jax.train.optimizer,
spnet_jax.train.step.train_step and, for the few-label stage, an Orbax checkpoint picked up by
spnet_jax.experiment.initial_or_restored_state.
Same random weights, images, labels and class embeddings on both sides; the network is the
ResNet-101 layout with one bottleneck per stage (the full depth only adds compile time). Every
parameter's update (new minus old value) must agree.
"""

import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from configs import coco_flss, coco_zlss, voc_flss, voc_zlss
from spnet_jax import experiment
from spnet_jax.data.splits import IGNORE_LABEL
from spnet_jax.interop import convert
from spnet_jax.models.registry import create_model
from spnet_jax.testing.random_state_dicts import aspp_state_dict, caffe_resnet101_state_dict
from spnet_jax.train import checkpoint
from spnet_jax.train import optimizer as optim
from spnet_jax.train import step as step_lib

from . import reference_oracle

pytestmark = [pytest.mark.slow]  # the official PyTorch code and a JAX ResNet, one step each

reference_oracle.skip_unless_available()
torch = pytest.importorskip("torch")

STAGE_SIZES = (1, 1, 1, 1)  # Bottlenecks in layer2..layer5 (ResNet-101: 3, 4, 23, 3).
ASPP_RATES = (6, 12, 18, 24)
EMBEDDING_DIM = 32  # Width of the class embeddings (SPNet: 600).
# Rows of the class-embedding matrix: the zero-label stage trains SEEN, the few-label stage
# SEEN + NOVEL (SPNet's visible classes, in that order, labels indexing them).
NUM_LABELS = 8
SEEN = (0, 1, 2, 3, 4, 5)
NOVEL = (6, 7)
# MSC outputs 7x7 (scale 1 and the max), 4x4 (0.5) and 5x5 (0.75): the ASPP's rate 6 still
# reaches inside the feature map.
IMAGE_SIZE = 49
IMAGES_PER_MICRO_BATCH = 2
IGNORE_FRACTION = 0.2
IMAGE_STD = 0.2
# The zero-label run that the few-label stage continues ended at this step (SPNet continues from
# checkpoint_20000): its schedule's step count must not leak into stage two.
ZERO_LABEL_STEPS = 20000
# Tolerances (float32, different summation orders): every parameter after the update, and its
# update relative to that update's largest element.
PARAM_RTOL, PARAM_ATOL = 1e-5, 1e-6
UPDATE_TOLERANCE = 1e-3
KINK_TOLERANCE = 5e-2
LOSS_RTOL = 1e-5

# Project config -> (its module, the official yaml of the same recipe).
RECIPES = {
  "voc_zlss": (voc_zlss, "voc12/ZLSS.yaml"),
  "coco_zlss": (coco_zlss, "cocostuff/ZLSS.yaml"),
  "voc_flss": (voc_flss, "voc12/FLSS.yaml"),
  "coco_flss": (coco_flss, "cocostuff/FLSS.yaml"),
}


def original_hyperparameters(name: str) -> dict:
  """The official yaml of recipe `name`."""
  with open(os.path.join(reference_oracle.ORIGINAL, "config", RECIPES[name][1])) as f:
    return yaml.safe_load(f)


def project_config(name: str):
  """configs/<name>.py with IMAGES_PER_MICRO_BATCH images per micro-batch."""
  config = RECIPES[name][0].get_config()
  assert config.train.accumulation_steps == original_hyperparameters(name)["ITER_SIZE"]
  config.train.batch_size = IMAGES_PER_MICRO_BATCH * config.train.accumulation_steps
  config.data.init_image_size = IMAGE_SIZE
  return config


def small_model(config):
  """The model configs/*.py describe (ResNet-101, ASPP, projection), with STAGE_SIZES."""
  model = create_model(config.model, EMBEDDING_DIM, NUM_LABELS)
  return model.clone(backbone=model.backbone.clone(stage_sizes=STAGE_SIZES))


def make_batch(config, seed: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Images [B, S, S, 3] (network input) and labels [B, S, S] (-1: ignore) of one update."""
  rng = np.random.default_rng(seed)
  shape = (config.train.batch_size, IMAGE_SIZE, IMAGE_SIZE)
  images = (IMAGE_STD * rng.standard_normal((*shape, 3))).astype(np.float32)
  labels = rng.integers(0, num_classes, shape)
  labels[rng.random(shape) < IGNORE_FRACTION] = -1
  return images, labels


# ----------------------------------------------------------------------------------------------
# The original's side.


def original_model(models, class_embeddings: np.ndarray, state_dict):
  """Its MSC(DeepLabV2) with STAGE_SIZES, in training mode with BatchNorm frozen (freeze_bn)."""
  net = models.DeepLabV2(
    n_classes=EMBEDDING_DIM,
    n_blocks=list(STAGE_SIZES),
    pyramids=list(ASPP_RATES),
    class_emb=torch.from_numpy(class_embeddings),
  )
  model = models.MSC(scale=net, pyramids=[0.5, 0.75])
  model.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()}, strict=True)
  model.train()
  model.scale.freeze_bn()
  return model


def original_optimizer(train, model, hyper: dict):
  """torch SGD over its get_params groups with their rates and weight decay, as train.py."""
  groups = [("1x", 1, hyper["WEIGHT_DECAY"]), ("10x", 10, hyper["WEIGHT_DECAY"]), ("20x", 20, 0.0)]
  return torch.optim.SGD(
    [
      {"params": train.get_params(model, key=key), "lr": factor * hyper["LR"], "weight_decay": wd}
      for key, factor, wd in groups
    ],
    momentum=hyper["MOMENTUM"],
  )


def original_update(train, model, optimizer, hyper: dict, iteration: int, images, labels) -> float:
  """Iteration `iteration` (from 1) of train.py's loop; returns its iter_loss.

  Micro-batch i holds images i, i + ITER_SIZE, ... (the micro-batches spnet_jax.train.step takes).
  """
  train.poly_lr_scheduler(
    optimizer=optimizer,
    init_lr=hyper["LR"],
    iter=iteration - 1,
    lr_decay_iter=hyper["LR_DECAY"],
    max_iter=hyper["ITER_MAX"],
    power=hyper["POLY_POWER"],
  )
  optimizer.zero_grad()
  criterion = torch.nn.CrossEntropyLoss(ignore_index=-1)
  iter_size = hyper["ITER_SIZE"]
  iter_loss = 0.0
  for i in range(iter_size):
    data = torch.from_numpy(np.ascontiguousarray(images[i::iter_size].transpose(0, 3, 1, 2)))
    target = torch.from_numpy(labels[i::iter_size].copy())
    outputs = model(data)
    loss = sum(criterion(out, train.resize_target(target, out.size(2))) for out in outputs)
    loss = loss / float(iter_size)
    loss.backward()
    iter_loss += loss.item()
  optimizer.step()
  return iter_loss


def numpy_state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# This project's side.


@functools.cache
def small_model_variables() -> dict[str, jax.ShapeDtypeStruct]:
  """Flat {'collection/.../leaf': shape} of small_model (the same for every recipe here)."""
  model = small_model(voc_zlss.get_config())
  images = jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  embeddings = jax.ShapeDtypeStruct((2, EMBEDDING_DIM), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images, embeddings)
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes), sep="/")


def converted(state_dict) -> tuple[dict, dict]:
  """(variables, metadata) of an original state dict, by spnet_jax.interop.convert.

  convert_state_dict checks a file against ResNet-101's variables; here it checks against the
  small model's (the key mapping and the layouts are the converter's own).
  """
  expected = small_model_variables()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(convert, "expected_variables", lambda *args, **kwargs: expected)
    variables, metadata = convert.convert_state_dict(
      {"state_dict": state_dict}, "spnet", "resnet101", classifier="projection"
    )
  assert metadata["initialised_fresh"] == []
  return variables, metadata


def converted_params(state_dict) -> dict[str, np.ndarray]:
  return flat_numpy(converted(state_dict)[0]["params"])


def start_run(config, model, tx, class_embeddings, workdir: str):
  """The state a run of `config` starts from (experiment.initial_or_restored_state)."""
  mesh = step_lib.create_mesh()
  setup = experiment.RunSetup(config, None, class_embeddings, None, mesh, model, tx)
  manager = checkpoint.create_manager(workdir, max_to_keep=1)
  try:
    return experiment.initial_or_restored_state(setup, manager)
  finally:
    manager.close()


def jit_train_step(config, model, tx, train_classes):
  return jax.jit(
    lambda state, batch, embeddings: step_lib.train_step(
      state,
      batch,
      embeddings,
      jax.random.key(0),
      model=model,
      tx=tx,
      config=config,
      train_classes=np.asarray(train_classes),
    )
  )


def jax_batch(images, labels) -> dict[str, jax.Array]:
  labels = np.where(labels < 0, IGNORE_LABEL, labels).astype(np.int32)
  return {"image": jnp.asarray(images), "label": jnp.asarray(labels)}


def with_schedule_count(opt_state, count: int):
  """opt_state with every learning-rate schedule's step count set to `count`."""
  is_schedule = lambda node: isinstance(node, optax.ScaleByScheduleState)
  return jax.tree.map(
    lambda node: (
      node._replace(count=jnp.full_like(node.count, count)) if is_schedule(node) else node
    ),
    opt_state,
    is_leaf=is_schedule,
  )


# ----------------------------------------------------------------------------------------------
# Comparison.


def flat_numpy(tree) -> dict[str, np.ndarray]:
  return flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, tree), sep="/")


def update_errors(ours_before, ours_after, theirs_before, theirs_after) -> dict[str, np.ndarray]:
  """Per parameter: |our update - their update| / max |their update|, elementwise.

  Each side rounds the updated parameter to float32 (half a unit in the last place of the new
  value), so the updates are compared beyond one such unit: backbone updates are about 1e-4 of
  their weights, and that rounding alone is a few 1e-3 of them.
  """
  errors = {}
  for name, theirs in theirs_after.items():
    their_update = theirs - theirs_before[name]
    our_update = ours_after[name] - ours_before[name]
    scale = np.abs(their_update).max()
    assert scale > 0, f"The original did not update {name}."
    rounding = np.spacing(np.maximum(np.abs(theirs), np.abs(ours_after[name])))
    errors[name] = np.maximum(np.abs(our_update - their_update) - rounding, 0.0) / scale
  return errors


def assert_same_update(
  jax_before, jax_after, torch_before, torch_after, same_start: bool = True
) -> dict:
  """Asserts that both sides start alike and end within tolerance; returns the worst errors.

  same_start: the parameters before the update are identical (else they agree to the
  tolerance, as after an earlier update of each side).

  A ReLU input within float32 noise of zero (there are always some, ~1e-6) can fall on
  different sides in the two frameworks and move that pixel's gradient from one output channel
  of the conv before it: a few elements may then be off by up to KINK_TOLERANCE, while
  99% of each parameter's elements must agree to UPDATE_TOLERANCE.
  """
  ours_before, ours_after = flat_numpy(jax_before), flat_numpy(jax_after)
  theirs_before, theirs_after = converted_params(torch_before), converted_params(torch_after)
  assert set(ours_after) == set(theirs_after)
  for name, theirs in theirs_after.items():
    if same_start:
      np.testing.assert_array_equal(ours_before[name], theirs_before[name], err_msg=name)
    np.testing.assert_allclose(
      ours_before[name], theirs_before[name], rtol=PARAM_RTOL, atol=PARAM_ATOL, err_msg=name
    )
    np.testing.assert_allclose(
      ours_after[name], theirs, rtol=PARAM_RTOL, atol=PARAM_ATOL, err_msg=name
    )
  errors = update_errors(ours_before, ours_after, theirs_before, theirs_after)
  typical = {name: float(np.quantile(e, 0.99)) for name, e in errors.items()}
  largest = {name: float(e.max()) for name, e in errors.items()}
  for name in errors:
    assert typical[name] < UPDATE_TOLERANCE, f"{name}: 1% of the update off by {typical[name]:.2e}"
    assert largest[name] < KINK_TOLERANCE, f"{name}: update off by up to {largest[name]:.2e}"
  param_error = max(float(np.abs(ours_after[k] - theirs_after[k]).max()) for k in theirs_after)
  return {
    "update_99%": max(typical.values()),
    "update_max": max(largest.values()),
    "head_update_max": max(v for k, v in largest.items() if k.startswith("embedding_head")),
    "param_abs": param_error,
  }


# ----------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def oracle():
  """The original's train module and libs.models; their .cuda() calls are no-ops meanwhile."""
  with reference_oracle.cuda_as_cpu():
    yield reference_oracle.import_original_train(), reference_oracle.import_original_models()


@pytest.fixture(scope="module")
def class_embeddings() -> np.ndarray:
  rng = np.random.default_rng(7)
  embeddings = rng.standard_normal((NUM_LABELS, EMBEDDING_DIM)).astype(np.float32)
  return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def initial_state_dict() -> dict[str, np.ndarray]:
  """Random weights of the small network under the original's keys (an MSC's `scale.`)."""
  backbone = caffe_resnet101_state_dict(seed=0, shortcut="proj")
  blocks = tuple(
    f"layer{i}.block{n}." for i, size in enumerate(STAGE_SIZES, 2) for n in range(1, size + 1)
  )
  backbone = {k: v for k, v in backbone.items() if k.startswith(("layer1.", *blocks))}
  head = aspp_state_dict(seed=1, out=EMBEDDING_DIM, prefix="aspp.stages.c")
  return {f"scale.{k}": v for k, v in {**backbone, **head}.items()}


@pytest.fixture(scope="module")
def zero_label_updates(oracle, class_embeddings, initial_state_dict, tmp_path_factory):
  """name -> the first update of zero-label recipe `name` on both sides (each made once).

  This project's run starts from the original's weights converted to a folder
  (config.model.init_checkpoint), as a run from converted SPNet/deeplab weights does.
  """
  train, models = oracle
  init_checkpoint = str(tmp_path_factory.mktemp("converted"))
  convert.save_converted(init_checkpoint, *converted(initial_state_dict))
  done = {}

  def update(name: str) -> dict:
    if name in done:
      return done[name]
    hyper, config = original_hyperparameters(name), project_config(name)
    images, labels = make_batch(config, seed=10, num_classes=len(SEEN))

    model = original_model(models, class_embeddings[list(SEEN)], initial_state_dict)
    optimizer = original_optimizer(train, model, hyper)
    torch_loss = original_update(train, model, optimizer, hyper, 1, images, labels)

    config.model.init_checkpoint = init_checkpoint
    jax_model = small_model(config)
    tx = optim.create_optimizer(config.optimizer, config.train.num_steps)
    workdir = str(tmp_path_factory.mktemp(name))
    state = start_run(config, jax_model, tx, class_embeddings, workdir)
    step_fn = jit_train_step(config, jax_model, tx, SEEN)
    new_state, metrics = step_fn(state, jax_batch(images, labels), jnp.asarray(class_embeddings))
    done[name] = {
      "config": config,
      "torch_model": model,
      "torch_optimizer": optimizer,
      "torch_loss": torch_loss,
      "jax_before": state.params,
      "jax_state": new_state,
      "jax_loss": float(metrics["loss"]),
    }
    return done[name]

  return update


# ----------------------------------------------------------------------------------------------
# Tests.


@pytest.mark.parametrize("name", ["voc_zlss", "coco_zlss"])
def test_zero_label_update_equals_the_originals(name, zero_label_updates, initial_state_dict):
  """VOC (one batch) and COCO-Stuff (two accumulated micro-batches) recipes, step 0."""
  run = zero_label_updates(name)
  np.testing.assert_allclose(run["jax_loss"], run["torch_loss"], rtol=LOSS_RTOL)
  errors = assert_same_update(
    run["jax_before"],
    run["jax_state"].params,
    initial_state_dict,
    numpy_state_dict(run["torch_model"]),
  )
  print(f"{name}: loss {run['jax_loss']:.6f} (original {run['torch_loss']:.6f}); {errors}")


@pytest.mark.parametrize(("name", "zero_label"), [("voc_flss", "voc_zlss")])
def test_few_label_update_continues_like_the_original(
  name, zero_label, zero_label_updates, oracle, class_embeddings, tmp_path
):
  """Stage two from a zero-label checkpoint with momentum: SPNet's --continue-from."""
  train, models = oracle
  start = zero_label_updates(zero_label)
  hyper, config = original_hyperparameters(name), project_config(name)
  visible = list(SEEN + NOVEL)
  images, labels = make_batch(config, seed=20, num_classes=len(visible))

  # The original: checkpoint {'state_dict', 'optimizer'}, a model over the visible classes that
  # loads both, then its first few-label iteration.
  path = str(tmp_path / "checkpoint_20000.pth.tar")
  torch.save(
    {
      "iteration": ZERO_LABEL_STEPS,
      "state_dict": start["torch_model"].state_dict(),
      "optimizer": start["torch_optimizer"].state_dict(),
    },
    path,
  )
  saved = torch.load(path)
  model = original_model(models, class_embeddings[visible], saved["state_dict"])
  optimizer = original_optimizer(train, model, hyper)
  optimizer.load_state_dict(saved["optimizer"])
  torch_before = numpy_state_dict(model)
  torch_loss = original_update(train, model, optimizer, hyper, 1, images, labels)

  # This project: the zero-label state as its run saves it at ZERO_LABEL_STEPS, then stage two
  # built from configs/<name>.py the way a run starts.
  zero_label_state = start["jax_state"]
  zero_label_state = zero_label_state.replace(
    step=jnp.asarray(ZERO_LABEL_STEPS, jnp.int32),
    opt_state=with_schedule_count(zero_label_state.opt_state, ZERO_LABEL_STEPS),
  )
  source = str(tmp_path / "zlss")
  manager = checkpoint.create_manager(source, max_to_keep=1)
  checkpoint.save(manager, ZERO_LABEL_STEPS, zero_label_state)
  manager.wait_until_finished()
  manager.close()

  config.fewshot.init_workdir = source
  model_jax = small_model(config)
  tx = optim.create_optimizer(config.optimizer, config.train.num_steps)
  embeddings = jnp.asarray(class_embeddings)
  step_fn = jit_train_step(config, model_jax, tx, visible)

  def stage_two(keep_optimizer_state: bool):
    config.fewshot.keep_optimizer_state = keep_optimizer_state
    workdir = str(tmp_path / f"flss_{keep_optimizer_state}")
    state = start_run(config, model_jax, tx, class_embeddings, workdir)
    assert int(state.step) == 0
    new_state, metrics = step_fn(state, jax_batch(images, labels), embeddings)
    return state.params, new_state.params, float(metrics["loss"])

  assert RECIPES[name][0].get_config().fewshot.keep_optimizer_state
  jax_before, jax_after, jax_loss = stage_two(keep_optimizer_state=True)
  np.testing.assert_allclose(jax_loss, torch_loss, rtol=LOSS_RTOL)
  torch_after = numpy_state_dict(model)
  errors = assert_same_update(jax_before, jax_after, torch_before, torch_after, same_start=False)
  print(f"{name}: loss {jax_loss:.6f} (original {torch_loss:.6f}); {errors}")

  # Without the momentum the update is far off: the comparison above can fail.
  _, fresh_after, _ = stage_two(keep_optimizer_state=False)
  theirs_before, theirs_after = converted_params(torch_before), converted_params(torch_after)
  fresh_errors = update_errors(
    flat_numpy(jax_before), flat_numpy(fresh_after), theirs_before, theirs_after
  )
  smallest = min(float(e.max()) for e in fresh_errors.values())
  print(f"{name} with a fresh optimiser: every update off by at least {smallest:.3f}")
  assert smallest > KINK_TOLERANCE
