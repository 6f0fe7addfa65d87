"""Times a config's training step, MSC evaluation and input pipeline; FLOPs, FLOP/s and MFU.

  python -m spnet_jax.bench.benchmark --config configs/coco_zlss.py [--config.model.dtype=bfloat16]
      [--steps 10] [--peak_tflops 989] [--torch] [--json BENCH.json] [--profile_dir DIR]

The model, optimiser and jitted step are the ones training builds from the config; inputs are
random arrays of the training crop (or --image_size), so no dataset is needed except for the
input-pipeline part (--parts input, with a prepared dataset or --fake_images N). FLOPs come from
the compiled executable's cost analysis; MFU divides the achieved FLOP/s by --peak_tflops, or by
the datasheet dense bf16 peak of a known accelerator. --torch also times the PyTorch reference
network (spnet_jax/testing/torch_reference.py) on the same weights, inputs and thread count
and prints the ratio (ResNet-101 + ASPP projection only).
"""

import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from spnet_jax import cli
from spnet_jax.bench import host
from spnet_jax.bench.timing import time_calls
from spnet_jax.data import splits
from spnet_jax.evaluation import calibrated_prediction
from spnet_jax.models import msc
from spnet_jax.models.conv_policy import conv_method
from spnet_jax.models.layers import FROZEN_COLLECTION
from spnet_jax.models.registry import create_model
from spnet_jax.train import optimizer as optim
from spnet_jax.train import step

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
flags.DEFINE_list("parts", ["train", "eval"], "What to time: train, eval, input.")
flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported); 0: compile only.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("image_size", 0, "Training crop side (0: the config's crop or init size).")
flags.DEFINE_integer("eval_size", 0, "Evaluation input side (0: data.eval.warp_size or train).")
flags.DEFINE_integer("embedding_dim", 600, "Width of the random class embeddings.")
flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for MFU (0: datasheet or none).")
flags.DEFINE_bool("torch", False, "Also time the PyTorch reference of the same network.")
flags.DEFINE_integer("fake_images", 0, "Input part: generate this many fake images first.")
flags.DEFINE_bool(
  "measure_peak",
  True,
  "Time a large matmul in the model dtype; its TFLOP/s is the peak of last resort.",
)
flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
flags.DEFINE_string("profile_dir", "", "Write a JAX profiler trace of 3 training steps here.")
flags.DEFINE_string("hlo_file", "", "Write the compiled training step's HLO text here.")
flags.mark_flags_as_required(["config"])

# Datasheet dense (no sparsity) bf16 peaks per device, in TFLOP/s, by jax device_kind prefix.
PEAK_BF16_TFLOPS = (
  ("NVIDIA H100 PCIe", 756.0),
  ("NVIDIA H100", 989.0),  # SXM / HBM3.
  ("NVIDIA H200", 989.0),
  ("NVIDIA A100", 312.0),
  ("NVIDIA L4", 121.0),
  ("TPU v4", 275.0),
  ("TPU v5 lite", 197.0),
  ("TPU v5e", 197.0),
  ("TPU v5p", 459.0),
  ("TPU v5", 459.0),
  ("TPU v6 lite", 918.0),
  ("TPU v6e", 918.0),
)


def peak_tflops(device: jax.Device, given: float) -> tuple[float | None, str]:
  """Peak TFLOP/s of one device and where the figure comes from."""
  if given > 0:
    return given, "--peak_tflops"
  for prefix, value in PEAK_BF16_TFLOPS:
    if device.device_kind.startswith(prefix):
      return value, f"datasheet dense bf16 peak of {device.device_kind}"
  return None, f"unknown for {device.device_kind!r}: pass --peak_tflops"


def matmul_tflops(dtype: str, size: int = 0, repeats: int = 5) -> float:
  """Measured TFLOP/s of one device on a large square matmul: a practical peak.

  size 0: 8192 on accelerators (a 4096 product is too short to hide the dispatch), 4096 on CPUs.
  """
  size = size or (4096 if jax.default_backend() == "cpu" else 8192)
  # Random operands: zeros or ones can run faster than real data.
  x = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(lambda a: a @ a).lower(x).compile()
  seconds = time_calls(lambda: matmul(x), warmup=1, steps=repeats)
  return 2 * size**3 / statistics.median(seconds) / 1e12


def xla_flops(stage) -> float:
  """FLOPs of one call of a lowered or compiled function (XLA cost analysis; NaN if none)."""
  cost = stage.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", float("nan")))


def model_flops(fn, *args) -> float:
  """XLA's FLOP count of `fn(*args)` per device, counted on the host CPU backend.

  GPU executables hand convolutions to cuDNN as custom calls, which XLA's cost analysis does
  not count (and a GPU lowering reports no count at all), so the program is lowered for the
  CPU, without compiling, on abstract copies of the arguments. The global count is divided by
  the device count (data parallel: every device runs 1/n of the batch).
  """
  try:
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  except RuntimeError:  # JAX_PLATFORMS without cpu.
    return xla_flops(jax.jit(fn).lower(*args)) / jax.device_count()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), args)
  return xla_flops(jax.jit(fn).lower(*abstract)) / jax.device_count()


def summarize(name, seconds, compile_s, flops, images, peak) -> dict:
  """Median step time and the figures derived from it (None without timed steps)."""
  median = statistics.median(seconds) if seconds else None
  # XLA's cost analysis counts the per-device (SPMD-partitioned) program: MFU is per device.
  achieved = flops / median if median else None
  return {
    "part": name,
    "compile_s": compile_s,
    "median_step_s": median,
    "steps_timed": len(seconds),
    "images_per_s": images / median if median else None,
    "flops_per_step": flops,
    "achieved_tflops": achieved / 1e12 if achieved else None,
    "mfu": achieved / (peak * 1e12) if peak and achieved else None,
  }


def random_inputs(config, image_size: int, num_labels: int, batch: int, seed: int = 0) -> dict:
  """Images in the config's value range and labels with 10% ignore pixels."""
  rng = np.random.default_rng(seed)
  images = rng.normal(
    0.0, 50.0 if config.data.image_mode == "caffe_bgr" else 0.5, (batch, image_size, image_size, 3)
  )
  labels = rng.integers(0, num_labels, (batch, image_size, image_size))
  labels[rng.random(labels.shape) < 0.1] = splits.IGNORE_LABEL
  return {"image": images.astype(np.float32), "label": labels.astype(np.int32)}


def class_embeddings(num_classes: int, dim: int) -> np.ndarray:
  rng = np.random.default_rng(1)
  vectors = rng.standard_normal((num_classes, dim)).astype(np.float32)
  return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class Bench:
  """The config's model, optimiser, train step and an initial state on random inputs.

  `variables` (e.g. converted PyTorch weights) replace the random initialisation.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    image_size: int,
    embedding_dim: int,
    variables: dict | None = None,
  ):
    self.config = config
    self.split = splits.get_split(config.data.name, config.data.split)
    self.train_classes = np.asarray(self.split.train_classes)
    self.embeddings = class_embeddings(self.split.num_classes, embedding_dim)
    self.model = create_model(config.model, embedding_dim, self.split.num_classes)
    # Model FLOPs are counted on native convs and gradients, however the config computes them
    # (taps skip padding), and without accumulation: XLA counts a loop body once.
    self.counting_config = ml_collections.ConfigDict(config.to_dict())
    self.counting_config.model.atrous_conv = "dilated"
    self.counting_config.model.conv_kernel_grad = "native"
    self.counting_config.train.accumulation_steps = 1
    self.counting_model = create_model(
      self.counting_config.model, embedding_dim, self.split.num_classes
    )
    self.tx = optim.create_optimizer(config.optimizer, config.train.num_steps)
    self.mesh = step.create_mesh()
    self.image_size = image_size
    if variables is None:
      init = functools.partial(step.create_train_state, self.model, self.tx, image_size=image_size)
      self.state = jax.jit(init)(jax.random.key(0), class_embeddings=self.embeddings)
    else:
      params = variables["params"]
      self.state = step.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=variables.get(FROZEN_COLLECTION, {}),
        opt_state=self.tx.init(params),
      )
    self.batch = random_inputs(config, image_size, len(self.train_classes), config.train.batch_size)

  def first_loss(self) -> float:
    """The loss of the first step (mean over micro-batches), without compiling the step."""
    k = self.config.train.accumulation_steps
    loss = jax.jit(
      functools.partial(
        step.loss_fn,
        model=self.model,
        config=self.config,
        class_embeddings=jnp.asarray(self.embeddings),
        train_classes=jnp.asarray(self.train_classes),
      )
    )
    images, labels = self.batch["image"], self.batch["label"]
    rng = jax.random.key(1)
    return float(
      np.mean(
        [loss(self.state.params, self.state, images[j::k], labels[j::k], rng) for j in range(k)]
      )
    )

  def _step_fn(self, model, config):
    return functools.partial(
      step.train_step, model=model, tx=self.tx, config=config, train_classes=self.train_classes
    )

  def _step_args(self):
    batch = step.make_global_batch(self.batch, NamedSharding(self.mesh, P("data")))
    return self.state, batch, self.embeddings, jax.random.key(1)

  def step_flops(self) -> float:
    """Model FLOPs of one training step per device (no compilation)."""
    return model_flops(self._step_fn(self.counting_model, self.counting_config), *self._step_args())

  def train_step(self):
    """(compiled step, its arguments after the state, compile seconds)."""
    args = self._step_args()
    step_fn = jax.jit(self._step_fn(self.model, self.config), donate_argnums=(0,))
    with jax.set_mesh(self.mesh):
      start = time.perf_counter()
      compiled = step_fn.lower(*args).compile()
    return compiled, args[1:], time.perf_counter() - start


def time_training(
  bench: Bench,
  peak: float | None,
  warmup: int,
  steps: int,
  hlo_file: str = "",
  profile_dir: str = "",
) -> tuple[dict, list[float]]:
  """Times the jitted train step; returns its figures and the loss of every call."""
  flops = bench.step_flops()
  compiled, (batch, emb, rng), compile_s = bench.train_step()
  losses = []

  def call():
    bench.state, metrics = compiled(bench.state, batch, emb, rng)
    losses.append(metrics["loss"])
    return metrics["loss"]

  with jax.set_mesh(bench.mesh):
    seconds = time_calls(call, warmup, steps)
  if hlo_file:
    with open(hlo_file, "w") as f:
      f.write(compiled.as_text())
  if profile_dir:
    # The Perfetto JSON (plugins/profile/*/perfetto_trace.json.gz) opens without TensorBoard.
    with jax.set_mesh(bench.mesh), jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      for _ in range(3):
        jax.block_until_ready(call())
  figures = summarize("train", seconds, compile_s, flops, bench.config.train.batch_size, peak)
  return figures, [float(x) for x in losses]


def time_evaluation(
  bench: Bench, eval_size: int, peak: float | None, warmup: int, steps: int
) -> dict:
  """The evaluation forward: MSC logits over every class, resized to the input, argmax."""
  config = bench.config
  candidates = jnp.asarray(bench.split.eval_classes)
  calibrated = np.isin(bench.split.eval_classes, bench.split.train_classes)
  scales = tuple(config.model.msc_scales)
  variables = {"params": bench.state.params, "batch_stats": bench.state.frozen}

  def forward(model, variables, images, embeddings):
    logits_fn = lambda x: step.logits_for_classes(model, variables, x, embeddings, candidates)
    fused = msc.multi_scale_logits(logits_fn, images, scales)[-1]
    logits = msc.resize_logits(fused, *images.shape[1:3])
    return calibrated_prediction.calibrated_choice(logits, calibrated, gamma=0.0)

  batch = config.eval.batch_size
  images = random_inputs(config, eval_size, 2, batch)["image"]
  images = jax.device_put(images, NamedSharding(bench.mesh, P("data")))
  args = (variables, images, bench.embeddings)
  flops = model_flops(functools.partial(forward, bench.counting_model), *args)
  with jax.set_mesh(bench.mesh):
    start = time.perf_counter()
    compiled = jax.jit(functools.partial(forward, bench.model)).lower(*args).compile()
    compile_s = time.perf_counter() - start
    seconds = time_calls(lambda: compiled(*args), warmup, steps)
  return summarize("eval", seconds, compile_s, flops, batch, peak)


def time_input(config) -> dict:
  """images/s of the tf.data training stream (input_benchmark), as a row of the table."""
  from spnet_jax.bench import input_benchmark  # TensorFlow only for this part.

  figures = input_benchmark.measure(config, FLAGS.fake_images, batches=20, warmup=3)
  return {
    "part": "input",
    "images_per_s": figures["images_per_sec"],
    "images_per_s_per_core": figures["images_per_sec_per_core"],
    "cores": figures["cores"],
  }


def torch_side_by_side(bench: Bench, jax_losses: list[float], warmup: int, steps: int) -> dict:
  """The PyTorch reference train step on the same weights, inputs and threads."""
  from spnet_jax.bench import torch_benchmark

  figures = torch_benchmark.time_training(
    bench.config,
    bench.batch,
    bench.train_classes,
    bench.embeddings,
    warmup=warmup,
    steps=steps,
    threads=host.usable_cores(),
  )
  figures["jax_first_loss"] = jax_losses[0] if jax_losses else None
  return figures


def format_table(rows: list[dict]) -> str:
  """One line per timed part."""
  lines = [
    f"{'part':<10} {'compile s':>9} {'step ms':>9} {'images/s':>9} {'GFLOP/step':>11} "
    f"{'TFLOP/s':>8} {'MFU':>6}"
  ]

  def number(value, scale=1.0, digits=1):
    return "-" if value is None else f"{value * scale:.{digits}f}"

  for r in rows:
    mfu = r.get("mfu")
    lines.append(
      f"{r['part']:<10} {number(r.get('compile_s')):>9} {number(r.get('median_step_s'), 1e3):>9} "
      f"{number(r.get('images_per_s'), digits=2):>9} {number(r.get('flops_per_step'), 1e-9):>11} "
      f"{number(r.get('achieved_tflops'), digits=3):>8} "
      f"{'-' if mfu is None else f'{100 * mfu:.1f}%':>6}"
    )
  return "\n".join(lines)


def environment() -> dict:
  device = jax.devices()[0]
  import flax

  return {
    "date": time.strftime("%Y-%m-%d"),
    "device_kind": device.device_kind,
    "platform": device.platform,
    "devices": jax.device_count(),
    "cores": host.usable_cores(),
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "flax": flax.__version__,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  image_size = FLAGS.image_size or config.data.train.crop_size or config.data.init_image_size
  eval_size = FLAGS.eval_size or config.data.eval.warp_size or image_size
  if FLAGS.torch and FLAGS.steps < 1:
    raise app.UsageError("--torch compares timed steps: use --steps >= 1 (5 or more).")
  unknown = set(FLAGS.parts) - {"train", "eval", "input"}
  if unknown:
    raise app.UsageError(f"--parts {sorted(unknown)}: valid parts are train, eval, input.")
  peak, peak_source = peak_tflops(jax.devices()[0], FLAGS.peak_tflops)
  env = environment()
  if FLAGS.measure_peak:
    env["matmul_tflops"] = matmul_tflops(config.model.dtype)
    if peak is None:
      peak = env["matmul_tflops"]
      peak_source = f"measured {config.model.dtype} matmul: {peak:.3f} TFLOP/s"
  print(
    f"{env['device_kind']} x{env['devices']} ({env['cores']} cores), jax {env['jax']}; "
    f"{config.model.backbone}, dtype {config.model.dtype}, batch {config.train.batch_size} "
    f"(x{config.train.accumulation_steps} accumulation) at {image_size}px, MSC "
    f"{tuple(config.model.msc_scales)}, convs: {conv_method(config.model)}; "
    f"peak: {peak_source}",
    flush=True,
  )
  rows, result = [], {"environment": env, "peak_tflops": peak, "peak_source": peak_source}
  bench, variables = None, None
  if FLAGS.torch:
    from spnet_jax.bench import torch_benchmark

    # Both frameworks start from the same random PyTorch state dict.
    variables = torch_benchmark.converted_variables(config, FLAGS.embedding_dim)
  if "train" in FLAGS.parts or "eval" in FLAGS.parts or FLAGS.torch:
    bench = Bench(config, image_size, FLAGS.embedding_dim, variables)
  losses = []
  if "train" in FLAGS.parts or FLAGS.torch:
    figures, losses = time_training(
      bench, peak, FLAGS.warmup, FLAGS.steps, FLAGS.hlo_file, FLAGS.profile_dir
    )
    rows.append(figures)
  if "eval" in FLAGS.parts:
    rows.append(time_evaluation(bench, eval_size, peak, FLAGS.warmup, FLAGS.steps))
  if "input" in FLAGS.parts:
    rows.append(time_input(config))
  result["parts"] = rows
  print(format_table(rows))
  if FLAGS.torch:
    theirs = torch_side_by_side(bench, losses, FLAGS.warmup, FLAGS.steps)
    ratio = rows[0]["median_step_s"] / theirs["median_step_s"]
    theirs["jax_over_torch_step_time"] = ratio
    result["torch"] = theirs
    print(
      f"PyTorch {theirs['torch_version']} ({theirs['threads']} threads): median step "
      f"{1e3 * theirs['median_step_s']:.1f} ms over {theirs['steps_timed']} steps; JAX "
      f"{1e3 * rows[0]['median_step_s']:.1f} ms -> JAX/PyTorch step time {ratio:.2f} "
      f"({'JAX faster' if ratio < 1 else 'PyTorch faster'}); first-step loss JAX "
      f"{theirs['jax_first_loss']:.4f}, PyTorch {theirs['first_loss']:.4f}"
    )
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=2)
    print(f"Wrote {FLAGS.json}")


def run() -> None:
  """The `spnet-benchmark` command (also `python -m` of this module)."""
  cli.run(main, __doc__)


if __name__ == "__main__":
  run()
