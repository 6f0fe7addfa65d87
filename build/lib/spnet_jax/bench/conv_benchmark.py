"""Times each kind of convolution of DeepLab-v2 ResNet-101 + ASPP, computed each way.

  python -m spnet_jax.bench.conv_benchmark [--image_size 161] [--batch 2] [--steps 5] [--json F]

For every distinct conv of the network at this input size (stem, the three convs of a
bottleneck in each stage, the ASPP branches) it times the forward pass, the input gradient and
the kernel gradient with XLA's own convolution and with the taps of CaffeConv's ConvMethod
(`layers.conv_by_taps` for dilated forwards, `kernel_grad.kernel_grad_by_taps`), and sums them
weighted by how often the conv occurs in one pass at this scale. This is the evidence behind
the CPU defaults of config.model.atrous_conv / conv_kernel_grad (BENCHMARKS.md).
"""

import json
import statistics
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from spnet_jax import cli
from spnet_jax.bench import host
from spnet_jax.bench.timing import time_calls
from spnet_jax.models import kernel_grad, lax_conv, layers

_STAGE_BLOCKS = (3, 4, 23, 3)  # ResNet-101: bottlenecks in layer2..layer5.
_ASPP_RATES = (6, 12, 18, 24)


class ConvShape(NamedTuple):
  name: str
  size: int  # Input height = width.
  in_features: int
  out_features: int
  kernel: int
  stride: int
  dilation: int
  count: int  # Occurrences in one pass of the network.


def resnet101_aspp_convs(image_size: int, head_features: int = 600) -> list[ConvShape]:
  """The distinct convs of DeepLab-v2 ResNet-101 (caffe: stride in the 1x1 reduce) + ASPP."""
  stem_out = (image_size - 1) // 2 + 1
  pooled = -(-(stem_out - 1) // 2) + 1  # 3x3/2 max-pool, pad 1, ceil mode.
  small = (pooled - 1) // 2 + 1  # layer3 onwards (output stride 8).
  convs = [ConvShape("stem 7x7/2", image_size, 3, 64, 7, 2, 1, 1)]
  stages = ((pooled, 64, 256, 1, 1), (pooled, 128, 512, 2, 1), (small, 256, 1024, 1, 2))
  stages += ((small, 512, 2048, 1, 4),)
  prev = 64
  stage_shapes = zip(stages, _STAGE_BLOCKS, strict=True)
  for number, ((size, mid, out, stride, dilation), blocks) in enumerate(stage_shapes, start=2):
    out_size = (size - 1) // stride + 1
    convs += [
      ConvShape(f"layer{number} shortcut 1x1", size, prev, out, 1, stride, 1, 1),
      ConvShape(f"layer{number} reduce 1x1 (1st)", size, prev, mid, 1, stride, 1, 1),
      ConvShape(f"layer{number} reduce 1x1", out_size, out, mid, 1, 1, 1, blocks - 1),
      ConvShape(f"layer{number} 3x3 d{dilation}", out_size, mid, mid, 3, 1, dilation, blocks),
      ConvShape(f"layer{number} increase 1x1", out_size, mid, out, 1, 1, 1, blocks),
    ]
    prev = out
  for rate in _ASPP_RATES:
    convs.append(ConvShape(f"aspp 3x3 d{rate}", small, 2048, head_features, 3, 1, rate, 1))
  return convs


def _conv_fns(shape: ConvShape):
  """(native, taps) convs of `shape` with lax.conv_general_dilated's (x, kernel) signature."""
  pad = shape.dilation * (shape.kernel - 1) // 2
  kwargs = dict(
    window_strides=(shape.stride, shape.stride),
    padding=((pad, pad), (pad, pad)),
    rhs_dilation=(shape.dilation, shape.dilation),
  )

  def native(x, kernel):
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, lax_conv.NHWC)
    return jax.lax.conv_general_dilated(x, kernel, dimension_numbers=numbers, **kwargs)

  forward = layers.conv_by_taps if shape.dilation > 1 and shape.stride == 1 else None
  with_taps = kernel_grad.with_kernel_grad_by_taps(forward)

  def taps(x, kernel):
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, lax_conv.NHWC)
    return with_taps(x, kernel, dimension_numbers=numbers, **kwargs)

  return native, taps


def time_conv(shape: ConvShape, batch: int, warmup: int, steps: int) -> dict:
  """Median seconds of forward, input gradient and kernel gradient, native and by taps."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, shape.size, shape.size, shape.in_features)), jnp.float32)
  kernel = jnp.asarray(
    rng.normal(size=(shape.kernel, shape.kernel, shape.in_features, shape.out_features)) * 0.01,
    jnp.float32,
  )
  figures = {}
  for method, conv in zip(("native", "taps"), _conv_fns(shape), strict=True):
    out_grad = jnp.ones_like(conv(x, kernel))
    parts = {
      "forward": jax.jit(conv),
      "input_grad": jax.jit(lambda x, k, g, conv=conv: jax.vjp(lambda x_: conv(x_, k), x)[1](g)),
      "kernel_grad": jax.jit(lambda x, k, g, conv=conv: jax.vjp(lambda k_: conv(x, k_), k)[1](g)),
    }
    for part, fn in parts.items():
      args = (x, kernel) if part == "forward" else (x, kernel, out_grad)
      seconds = time_calls(lambda fn=fn, args=args: fn(*args), warmup, steps)
      figures[f"{part}_{method}_s"] = statistics.median(seconds)
  return figures


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flags_ = flags.FLAGS
  if flags_.steps < 1:
    raise app.UsageError(f"--steps {flags_.steps}: time at least one call (5 or more).")
  print(
    f"{jax.devices()[0].device_kind} ({host.usable_cores()} cores), jax {jax.__version__}; "
    f"ResNet-101 + ASPP convs at {flags_.image_size}px, batch {flags_.batch}, float32; "
    f"median of {flags_.steps} calls, ms"
  )
  header = f"{'conv':<26}{'x':>3} {'size':>5} {'fwd':>15} {'input grad':>15} {'kernel grad':>15}"
  print(header + "\n" + " " * 35 + "  native / taps" * 3)
  rows, totals = [], {}
  for shape in resnet101_aspp_convs(flags_.image_size):
    figures = time_conv(shape, flags_.batch, flags_.warmup, flags_.steps)
    rows.append({**shape._asdict(), **figures})
    for key, seconds in figures.items():
      totals[key] = totals.get(key, 0.0) + shape.count * seconds
    cells = "".join(
      f"{1e3 * figures[f'{part}_native_s']:8.1f} /{1e3 * figures[f'{part}_taps_s']:5.1f}"
      for part in ("forward", "input_grad", "kernel_grad")
    )
    print(f"{shape.name:<26}{shape.count:>3} {shape.size:>5} {cells}", flush=True)
  cells = "".join(
    f"{1e3 * totals[f'{part}_native_s']:8.0f} /{1e3 * totals[f'{part}_taps_s']:5.0f}"
    for part in ("forward", "input_grad", "kernel_grad")
  )
  print(f"{'one pass, weighted':<35}{cells}")
  if flags_.json:
    result = {"image_size": flags_.image_size, "batch": flags_.batch, "convs": rows}
    with open(flags_.json, "w") as f:
      json.dump({**result, "weighted_totals_s": totals}, f, indent=2)
    print(f"Wrote {flags_.json}")


def _define_flags():
  flags.DEFINE_integer("image_size", 161, "Input side of the network.")
  flags.DEFINE_integer("batch", 2, "Batch size.")
  flags.DEFINE_integer("steps", 5, "Timed calls per figure (the median is reported).")
  flags.DEFINE_integer("warmup", 1, "Untimed calls after compilation.")
  flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")


def run() -> None:
  """The `spnet-conv-benchmark` command (also `python -m` of this module)."""
  cli.run(main, __doc__, _define_flags)


if __name__ == "__main__":
  run()
