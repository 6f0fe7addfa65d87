"""Compiles a config's sharded train and eval steps for Cloud TPU slices, on a host without TPUs.

  python -m spnet_jax.bench.tpu_compile --config configs/voc_zlss.py \
      [--topologies v5e-8,v4-8,v4-32,v5e-16] [--config.model.dtype=bfloat16] [--json OUT.json]

Needs libtpu (`pip install "libtpu==0.0.42.*"`, the version jax[tpu] 0.10.2 pins), not a TPU:
libtpu describes a slice's chips and XLA compiles for them on the host CPU. The model, optimiser
and jitted steps are the ones training builds (train/loop.py, evaluation/eval_step.py), on a
1-D 'data' mesh over the slice's chips, with abstract inputs (nothing is allocated). The global
batch is padded to whole micro-batches per chip as training pads it (data/batching.py). Per
chip it prints the compiled program's memory against the chip's HBM, XLA's FLOP count, the model
FLOPs and the bytes every collective moves per step, read from the compiled HLO.

Class embeddings are random rows of --embedding_dim (600: fastText + word2vec) where a config
reads them from files; the shapes config's attribute embeddings are built as training does.
"""

import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from spnet_jax import cli
from spnet_jax.data import batching, splits
from spnet_jax.embeddings import class_embeddings as embeddings
from spnet_jax.evaluation import calibration, eval_step
from spnet_jax.models import conv_policy
from spnet_jax.models.layers import FROZEN_COLLECTION
from spnet_jax.models.registry import SegmentationNet, create_model
from spnet_jax.train import checkpoint, step
from spnet_jax.train import optimizer as optim

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation's per-chip figures (Cloud TPU documentation)."""

  hbm_bytes: int
  peak_bf16_tflops: float


# https://cloud.google.com/tpu/docs/v5e: 16 GB HBM2 and 197 bf16 TFLOP/s per chip.
# https://cloud.google.com/tpu/docs/v4: 32 GiB HBM2 and 275 bf16 TFLOP/s per chip.
CHIPS = {"v5e": Chip(16 * GIB, 197.0), "v4": Chip(32 * GIB, 275.0)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice: libtpu's topology name and options, named as Cloud TPU names the slice."""

  name: str
  topology_name: str  # libtpu's, e.g. 'v5e:2x4'.
  options: tuple[tuple[str, object], ...] = ()  # get_topology_desc keyword arguments.

  @property
  def chip(self) -> Chip:
    return CHIPS[self.topology_name.split(":")[0]]


# Cloud TPU names: v5e counts chips, v4 counts TensorCores (2 per chip, one JAX device per chip
# in megacore mode, as JAX uses v4). v5e hosts hold 8 chips (https://cloud.google.com/tpu/docs/v5e:
# 2x4 is 1 host, 4x4 is 2, 4x8 is 4), v4 hosts 4 (libtpu's default).
_V5E_HOSTS = (("chips_per_host_bounds", (2, 4, 1)),)
_MEGACORE = (("chip_config_name", "megacore"),)
TOPOLOGIES = {
  "v5e-8": Topology("v5e-8", "v5e:2x4", _V5E_HOSTS),
  "v5e-16": Topology("v5e-16", "v5e:4x4", _V5E_HOSTS),
  "v5e-32": Topology("v5e-32", "v5e:4x8", _V5E_HOSTS),
  "v4-8": Topology("v4-8", "v4:2x2x1", _MEGACORE),
  "v4-32": Topology("v4-32", "v4:2x2x4", _MEGACORE),
}

FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
  flags.DEFINE_list(
    "topologies",
    ["v5e-8", "v4-8", "v4-32", "v5e-16"],
    f"Slices to compile for: {', '.join(TOPOLOGIES)}, or a libtpu name such as v5e:2x2.",
  )
  flags.DEFINE_list("parts", ["train", "eval"], "Steps to compile: train, eval.")
  flags.DEFINE_integer("embedding_dim", 600, "Width of the random class embeddings.")
  flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
  flags.DEFINE_string("hlo_dir", "", "Write each compiled step's HLO text into this folder.")
  flags.mark_flags_as_required(["config"])


class LibtpuUnavailable(RuntimeError):
  """libtpu is not installed or cannot load on this host."""


def libtpu_requirement() -> str:
  """The libtpu version jax[tpu] pins for the installed jax, as a pip requirement."""
  for requirement in importlib.metadata.requires("jax") or []:
    if requirement.startswith("libtpu") and 'extra == "tpu"' in requirement:
      return requirement.split(";")[0].strip()
  return "libtpu"


def get_topology(name: str) -> Topology:
  """A slice of TOPOLOGIES, or one named as libtpu names it ('v5e:2x2', 'v4:2x2x2').

  A libtpu name gets libtpu's hosts; v4 chips run in megacore mode, as JAX runs them.
  """
  if name in TOPOLOGIES:
    return TOPOLOGIES[name]
  chip = name.split(":")[0]
  if ":" in name and chip in CHIPS:
    return Topology(name, name, _MEGACORE if chip == "v4" else ())
  raise ValueError(f"Unknown topology {name!r}; valid: {', '.join(TOPOLOGIES)} or e.g. v5e:2x2.")


def topology_devices(topology: Topology) -> list:
  """The slice's compile-only devices (libtpu describes them; no TPU is needed)."""
  # Read when libtpu loads: no GCE metadata queries, no TPU worker discovery (no TPU VM here).
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # Other JAX processes of the host that found libtpu hold its lockfile, which only guards
  # real chips: a compile-only client needs none.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  install = f'pip install "{libtpu_requirement()}"'
  if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
    raise LibtpuUnavailable(f"libtpu is not installed: {install} (no TPU needed).")
  try:
    description = topologies.get_topology_desc(
      topology_name=topology.topology_name, platform="tpu", **dict(topology.options)
    )
  except Exception as error:  # libtpu reports load and topology errors as several types.
    raise LibtpuUnavailable(
      f"libtpu could not describe {topology.topology_name}: {error} ({install})"
    ) from error
  return list(description.devices)


def create_mesh(devices: list) -> jax.sharding.Mesh:
  """step.create_mesh's 1-D 'data' mesh, over the slice's devices instead of jax.devices()."""
  return jax.sharding.Mesh(np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass
class Setup:
  """What training builds from the config (experiment.create_setup), without any files."""

  config: ml_collections.ConfigDict
  split: splits.ClassSplit
  class_embeddings: np.ndarray
  model: SegmentationNet
  tx: object
  train_classes: tuple[int, ...]
  num_unseen: int


def create_setup(config: ml_collections.ConfigDict, embedding_dim: int) -> Setup:
  """Split, class embeddings, model and optimiser of `config`, its convs resolved for TPUs.

  'auto' conv methods resolve by the platform JAX runs on (here the CPU): they are fixed to
  what they choose on a TPU first. Few-label configs are compiled with the zero-label class
  list (their pool needs the dataset; only the logits' width differs).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.atrous_conv = conv_policy.atrous_method(config.model.atrous_conv, "tpu")
  config.model.conv_kernel_grad = conv_policy.kernel_grad_method(
    config.model.conv_kernel_grad, "tpu"
  )
  split = splits.get_split(config.data.name, config.data.split)
  if config.embeddings.source == "attributes":
    matrix = embeddings.load_class_embeddings(config, split)
  else:
    rows = np.random.default_rng(0).standard_normal((split.num_classes, embedding_dim))
    matrix = embeddings.l2_normalize(rows).astype(np.float32)
  model = create_model(config.model, matrix.shape[1], split.num_classes)
  tx = optim.create_optimizer(config.optimizer, config.train.num_steps)
  train_classes, num_unseen = split.train_classes, 0
  if config.selftrain.fraction > 0:  # As experiment.RunSetup.train_classes.
    train_classes, num_unseen = split.train_classes + split.unseen, len(split.unseen)
  return Setup(config, split, matrix, model, tx, train_classes, num_unseen)


def train_image_size(data: ml_collections.ConfigDict) -> int:
  """Side of the training images the pipeline yields (crop, else warp, else the init size)."""
  return data.train.crop_size or data.train.warp_size or data.init_image_size


def _abstract(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def abstract_state(setup: Setup, sharding) -> step.TrainState:
  init = step.train_state_init(
    setup.model, setup.tx, setup.config.data.init_image_size, setup.class_embeddings
  )
  return checkpoint.abstract_train_state(init, sharding)


def train_arguments(setup: Setup, mesh: jax.sharding.Mesh) -> tuple:
  """Abstract (state, batch, class embeddings, rng) of the training step, as loop.train passes."""
  config = setup.config
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  rows = batching.padded_batch_size(
    config.train.batch_size, mesh.size, config.train.accumulation_steps
  )
  size = train_image_size(config.data)
  batch = {
    "image": _abstract((rows, size, size, 3), jnp.float32, batch_sharding),
    "label": _abstract((rows, size, size), jnp.int32, batch_sharding),
  }
  key = jax.eval_shape(lambda: jax.random.key(0))
  return (
    abstract_state(setup, replicated),
    batch,
    _abstract(setup.class_embeddings.shape, jnp.float32, replicated),
    _abstract(key.shape, key.dtype, replicated),
  )


def train_step_fn(setup: Setup, config: ml_collections.ConfigDict | None = None):
  """The training step as loop.train jits it (state donated, outputs replicated)."""
  return functools.partial(
    step.train_step,
    model=setup.model,
    tx=setup.tx,
    config=config or setup.config,
    train_classes=np.asarray(setup.train_classes),
    num_unseen=setup.num_unseen,
  )


def eval_tasks(setup: Setup) -> eval_step.EvalTasks:
  """What a zero-label run scores (experiment.create_eval_tasks): every gamma of the sweep."""
  config = setup.config
  grid = calibration.gamma_grid("linear", config.eval.gamma_step, config.eval.gamma_max)
  gammas = sorted(set(grid) | {round(float(config.eval.gamma), 6)})
  return eval_step.create_tasks(
    setup.split, gammas, learned_classifier=config.model.classifier != "projection"
  )


def eval_arguments(setup: Setup, mesh: jax.sharding.Mesh, tasks: eval_step.EvalTasks) -> tuple:
  """Abstract (confusions, batch, variables, class embeddings) of one evaluation step."""
  data = setup.config.data
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  rows = batching.padded_batch_size(setup.config.eval.batch_size, mesh.size)
  size = data.eval.warp_size or data.init_image_size
  label_side = data.eval.label_canvas if data.eval.full_resolution else size
  batch = {
    "image": _abstract((rows, size, size, 3), jnp.float32, batch_sharding),
    "label": _abstract((rows, label_side, label_side), jnp.int32, batch_sharding),
    "mask": _abstract((rows,), jnp.bool_, batch_sharding),
  }
  if data.eval.full_resolution:
    batch["label_size"] = _abstract((rows, 2), jnp.int32, batch_sharding)
  c = tasks.num_classes
  confusions = {
    "zlss": _abstract((c, c + 1), jnp.int32, replicated),
    "gzlss": _abstract((len(tasks.gammas), c, c + 1), jnp.int32, replicated),
    "class_images": _abstract((c,), jnp.int32, replicated),
  }
  state = abstract_state(setup, replicated)
  variables = {"params": state.params, FROZEN_COLLECTION: state.frozen}
  embeddings_arg = _abstract(setup.class_embeddings.shape, jnp.float32, replicated)
  return confusions, batch, variables, embeddings_arg


def eval_step_fn(setup: Setup, tasks: eval_step.EvalTasks):
  return functools.partial(
    eval_step.eval_step,
    model=setup.model,
    tasks=tasks,
    msc_scales=tuple(setup.config.model.msc_scales),
  )


def compile_step(fn, args: tuple, mesh: jax.sharding.Mesh, out_shardings):
  """jit(fn, donating the first argument) lowered and compiled for the mesh's devices."""
  jitted = jax.jit(fn, donate_argnums=(0,), out_shardings=out_shardings)
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def model_flops(fn, args: tuple) -> float:
  """XLA's FLOP count of the whole (unpartitioned) step, lowered for the host CPU.

  The TPU executable's count holds a loop body once (an accumulation scan's k micro-batches
  count as one); counting the step without accumulation on the same rows avoids that.
  """
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  cpu_args = jax.tree.map(lambda x: _abstract(x.shape, x.dtype, cpu), args)
  cost = jax.jit(fn).lower(*cpu_args).cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", float("nan")))


# Bytes per element of HLO element types (s4/u4 are packed two to a byte).
_DTYPE_BYTES = {
  "pred": 1,
  "s4": 0.5,
  "u4": 0.5,
  "s8": 1,
  "u8": 1,
  "f8e4m3fn": 1,
  "f8e5m2": 1,
  "bf16": 2,
  "f16": 2,
  "s16": 2,
  "u16": 2,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "f64": 8,
  "s64": 8,
  "u64": 8,
  "c64": 8,
  "c128": 16,
}
COLLECTIVES = (
  "all-reduce",
  "all-gather",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
  "collective-broadcast",
)
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_INSTRUCTION = re.compile(r"^\s+(ROOT )?%[\w.\-]+ = (.*?) ([a-z][a-z0-9\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_CALLEE = re.compile(r"\b(body|condition|calls|to_apply|branch_computations)=\{?%([\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_INT_CONSTANT = re.compile(r"= s32\[\]\S* constant\((\d+)\)")


def shape_bytes(shape: str) -> float:
  """Bytes of an HLO shape (an array or a tuple of arrays), layouts and paddings ignored."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * float(np.prod([int(d) for d in dims.split(",") if d]))
  return total


@dataclasses.dataclass
class _Computation:
  """What collective_bytes needs of one HLO computation."""

  collectives: list = dataclasses.field(default_factory=list)  # (kind, bytes)
  # (callee, runs per run of this computation: a number, or a loop condition's name).
  calls: list = dataclasses.field(default_factory=list)
  loop_bound: int | None = None  # A `counter < N` loop condition's N.


def collective_bytes(hlo_text: str) -> dict[str, dict[str, float]]:
  """Per collective kind: instructions and bytes per step, from a compiled module's HLO text.

  An all-reduce counts the bytes it reduces (its result), an all-gather what it gathers, a
  reduce-scatter what it scatters (the result, per device). Asynchronous pairs count once, by
  the '-start' half's results (its tuple also holds the operands, except an all-reduce's). A
  collective inside a while loop counts once per iteration: XLA's known trip count, else the N
  of a `counter < N` condition (what an accumulation scan compiles to), else once.
  """
  computations, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and line.rstrip().endswith("{"):
      current = computations.setdefault(header.group(1), _Computation())
      entry = header.group(1) if line.startswith("ENTRY") else entry
      continue
    match = _INSTRUCTION.match(line)
    if not match or current is None:
      continue
    root, shape, opcode = match.groups()
    constant = _INT_CONSTANT.search(line)
    if constant:
      current.loop_bound = int(constant.group(1))  # Kept if the root compares with it.
    if root and not (opcode == "compare" and "direction=LT" in line):
      current.loop_bound = None
    callees = dict(_CALLEE.findall(line))
    if opcode == "while":
      trip = _TRIP_COUNT.search(line)
      # The trip count, or the condition computation whose loop bound gives it.
      count = int(trip.group(1)) if trip else callees["condition"]
      current.calls += [(callees["body"], count), (callees["condition"], count)]
    else:
      current.calls += [(callee, 1) for callee in callees.values()]
    kind = opcode.removesuffix("-start")
    if kind in COLLECTIVES and not opcode.endswith("-done"):
      if opcode.endswith("-start") and kind != "all-reduce":
        # (operands, results[, contexts]): the results are the second half of the arrays.
        arrays = [f"{dtype}[{dims}]" for dtype, dims in _ARRAY.findall(shape) if dims]
        shape = " ".join(arrays[len(arrays) // 2 :])
      current.collectives.append((kind, shape_bytes(shape)))
  return _summarize(computations, entry)


def _summarize(computations: dict[str, _Computation], entry: str | None) -> dict:
  """Collectives of every computation, times how often it runs per call of the entry."""
  if entry not in computations:
    return {}
  runs, pending = {entry: 1}, [entry]
  while pending:
    caller = pending.pop()
    for callee, count in computations[caller].calls:
      if isinstance(count, str):  # A while loop: its condition's `counter < N`, else once.
        bound = computations[count].loop_bound if count in computations else None
        count = bound or 1
      if callee in computations and callee not in runs:
        runs[callee] = runs[caller] * count
        pending.append(callee)
  summary = {}
  for name, times in runs.items():
    for kind, size in computations[name].collectives:
      totals = summary.setdefault(kind, {"instructions": 0, "bytes": 0.0, "largest": 0.0})
      totals["instructions"] += 1
      totals["bytes"] += size * times
      totals["largest"] = max(totals["largest"], size)
  return summary


def describe(compiled, hbm_bytes: int) -> dict:
  """Per-chip memory, XLA's FLOPs and the collectives of a compiled step."""
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  # Donated inputs alias outputs: they occupy HBM once.
  total = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )
  return {
    "argument_bytes": memory.argument_size_in_bytes,
    "output_bytes": memory.output_size_in_bytes,
    "alias_bytes": memory.alias_size_in_bytes,
    "temp_bytes": memory.temp_size_in_bytes,
    "code_bytes": memory.generated_code_size_in_bytes,
    "total_bytes": total,
    "hbm_bytes": hbm_bytes,
    "hbm_fraction": total / hbm_bytes,
    "xla_flops": float(cost.get("flops", float("nan"))),
    "collectives": collective_bytes(compiled.as_text()),
  }


def compile_for(config, topology: Topology, parts, embedding_dim: int, hlo_dir: str = "") -> list:
  """Compiles `parts` of config's steps for one slice; one result dict per step."""
  devices = topology_devices(topology)
  mesh = create_mesh(devices)
  setup = create_setup(config, embedding_dim)
  replicated = NamedSharding(mesh, P())
  hosts = len({d.process_index for d in devices})
  common = {"topology": topology.name, "libtpu_topology": topology.topology_name}
  common |= {"chips": len(devices), "hosts": hosts, "device_kind": devices[0].device_kind}
  results = []
  if "train" in parts:
    args = train_arguments(setup, mesh)
    compiled, seconds = compile_step(train_step_fn(setup), args, mesh, (replicated, replicated))
    # Model FLOPs: the same rows without accumulation (one pass over every micro-batch).
    counting = ml_collections.ConfigDict(setup.config.to_dict())
    counting.train.accumulation_steps = 1
    flops = model_flops(train_step_fn(setup, counting), args)
    cfg = setup.config.train
    rows = args[1]["image"].shape[0]
    results.append(
      common
      | {"step": "train", "rows": rows, "images": cfg.batch_size}
      | {"accumulation_steps": cfg.accumulation_steps, "image_size": args[1]["image"].shape[1]}
      | {"compile_s": seconds, "model_flops_per_chip": flops / len(devices)}
      | describe(compiled, topology.chip.hbm_bytes)
    )
    _write_hlo(hlo_dir, topology, "train", compiled)
  if "eval" in parts:
    tasks = eval_tasks(setup)
    args = eval_arguments(setup, mesh, tasks)
    fn = eval_step_fn(setup, tasks)
    compiled, seconds = compile_step(fn, args, mesh, replicated)
    rows = args[1]["image"].shape[0]
    results.append(
      common
      | {"step": "eval", "rows": rows, "images": setup.config.eval.batch_size}
      | {"accumulation_steps": 1, "image_size": args[1]["image"].shape[1]}
      | {"compile_s": seconds, "model_flops_per_chip": model_flops(fn, args) / len(devices)}
      | describe(compiled, topology.chip.hbm_bytes)
    )
    _write_hlo(hlo_dir, topology, "eval", compiled)
  return results


def _write_hlo(hlo_dir: str, topology: Topology, part: str, compiled) -> None:
  if hlo_dir:
    os.makedirs(hlo_dir, exist_ok=True)
    with open(os.path.join(hlo_dir, f"{topology.name.replace(':', '-')}_{part}.hlo.txt"), "w") as f:
      f.write(compiled.as_text())


def _megabytes(size: float) -> str:
  return f"{size / 1e6:,.1f} MB" if size >= 1e5 else f"{size / 1e3:,.1f} kB"


def format_table(rows: list[dict]) -> str:
  """One line per compiled step; memory per chip in GiB, FLOPs per chip, bytes per step."""
  lines = [
    f"{'slice':<8} {'chips':>5} {'hosts':>5} {'step':<5} {'rows':>9} {'args':>6} {'out':>6} "
    f"{'temp':>6} {'total':>6} {'HBM':>4} {'of HBM':>6} {'XLA TF':>7} {'model TF':>8} "
    f"{'compile':>7}  collectives per step (instructions)"
  ]
  for r in rows:
    gib = lambda key, row=r: f"{row[key] / GIB:.2f}"
    collectives = ", ".join(
      f"{kind} {_megabytes(c['bytes'])} ({c['instructions']})"
      for kind, c in sorted(r["collectives"].items())
    )
    lines.append(
      f"{r['topology']:<8} {r['chips']:>5} {r['hosts']:>5} {r['step']:<5} "
      f"{r['rows']:>4} ({r['images']:>2}) {gib('argument_bytes'):>6} {gib('output_bytes'):>6} "
      f"{gib('temp_bytes'):>6} {gib('total_bytes'):>6} {r['hbm_bytes'] // GIB:>4} "
      f"{100 * r['hbm_fraction']:>5.1f}% {r['xla_flops'] / 1e12:>7.3f} "
      f"{r['model_flops_per_chip'] / 1e12:>8.3f} {r['compile_s']:>6.0f}s  {collectives or '-'}"
    )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = set(FLAGS.parts) - {"train", "eval"}
  if unknown:
    raise app.UsageError(f"--parts {sorted(unknown)}: valid parts are train, eval.")
  config = FLAGS.config
  if "JAX_PLATFORMS" not in os.environ:
    # The host's own backend is only needed for abstract shapes: keep it off any TPU it has.
    jax.config.update("jax_platforms", "cpu")
  try:
    slices = [get_topology(name) for name in FLAGS.topologies]
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  libtpu = importlib.metadata.version("libtpu") if importlib.util.find_spec("libtpu") else None
  print(
    f"jax {jax.__version__}, libtpu {libtpu}; {config.model.backbone}, dtype "
    f"{config.model.dtype}, train batch {config.train.batch_size} "
    f"(x{config.train.accumulation_steps} accumulation) at {train_image_size(config.data)}px, "
    f"eval batch {config.eval.batch_size}, MSC {tuple(config.model.msc_scales)}",
    flush=True,
  )
  rows = []
  for topology in slices:
    try:
      compiled = compile_for(config, topology, FLAGS.parts, FLAGS.embedding_dim, FLAGS.hlo_dir)
    except LibtpuUnavailable as error:
      raise SystemExit(f"error: {error}") from None
    print("\n".join(format_table(compiled).splitlines()[1:]), flush=True)
    rows += compiled
    if FLAGS.json:  # After every slice: a long run keeps what it compiled.
      environment = {"jax": jax.__version__, "libtpu": libtpu, "date": time.strftime("%Y-%m-%d")}
      with open(FLAGS.json, "w") as f:
        json.dump({"environment": environment, "steps": rows}, f, indent=2)
  print(format_table(rows))
  if FLAGS.json:
    print(f"Wrote {FLAGS.json}")


def run() -> None:
  """The `spnet-tpu-compile` command (also `python -m` of this module)."""
  cli.run(main, __doc__, _define_flags)


if __name__ == "__main__":
  run()
