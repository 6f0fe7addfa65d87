"""The per-conv benchmark lists the network's real convs and times both ways on tiny shapes."""

import subprocess
import sys

import jax
import jax.numpy as jnp

from spnet_jax import conv_benchmark
from spnet_jax.models import resnet


def test_conv_list_matches_the_resnet_at_this_size():
  convs = conv_benchmark.resnet101_aspp_convs(161)
  by_name = {conv.name: conv for conv in convs}
  x = jax.ShapeDtypeStruct((1, 161, 161, 3), jnp.float32)
  features = jax.eval_shape(
    lambda x: resnet.DeepLabResNet().init_with_output(jax.random.key(0), x)[0], x
  )
  assert features.shape == (1, 21, 21, 2048)
  assert by_name["aspp 3x3 d24"].size == by_name["layer5 3x3 d4"].size == 21
  assert by_name["layer2 3x3 d1"].size == 41  # 161 -> stem 81 -> ceil-mode pool 41.
  assert by_name["layer3 reduce 1x1 (1st)"].stride == 2
  # Every conv of ResNet-101 once per occurrence: 1 stem + 4 shortcuts + 3 per block + ASPP 4.
  assert sum(conv.count for conv in convs) == 1 + 4 + 3 * (3 + 4 + 23 + 3) + 4


def test_time_conv_reports_every_part_both_ways():
  shape = conv_benchmark.ConvShape("tiny", 9, 4, 5, 3, 1, 2, 1)
  figures = conv_benchmark.time_conv(shape, batch=1, warmup=0, steps=1)
  for part in ("forward", "input_grad", "kernel_grad"):
    for method in ("native", "taps"):
      assert figures[f"{part}_{method}_s"] > 0


def test_command_prints_the_table(tmp_path):
  out = tmp_path / "convs.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "spnet_jax.conv_benchmark",
      "--image_size",
      "17",
      "--batch",
      "1",
      "--steps",
      "1",
      "--warmup",
      "0",
      "--json",
      str(out),
    ],
    capture_output=True,
    text=True,
    check=True,
    timeout=600,
  )
  assert "aspp 3x3 d24" in result.stdout and "one pass, weighted" in result.stdout
  assert out.exists()
