"""The per-conv benchmark lists the network's real convs and times both ways on tiny shapes."""

import json
import math
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spnet_jax.bench import conv_benchmark, timing
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


def test_time_conv_reports_every_part_both_ways(monkeypatch):
  # Records what each figure timed: its result and the seconds of every timed call.
  timed = []

  def recording_time_calls(call, warmup, steps):
    result = jax.block_until_ready(call())
    seconds = timing.time_calls(call, warmup, steps)
    timed.append((result, seconds))
    return seconds

  monkeypatch.setattr(conv_benchmark, "time_calls", recording_time_calls)
  shape = conv_benchmark.ConvShape("tiny", 9, 4, 5, 3, 1, 2, 1)
  figures = conv_benchmark.time_conv(shape, batch=2, warmup=0, steps=3)
  parts = ("forward", "input_grad", "kernel_grad")
  keys = [f"{part}_{method}_s" for method in ("native", "taps") for part in parts]
  assert list(figures) == keys and len(timed) == 6
  results = {}
  for key, (result, seconds) in zip(keys, timed, strict=True):
    assert len(seconds) == 3 and all(math.isfinite(t) and t > 0 for t in seconds)
    assert figures[key] == statistics.median(seconds)
    results[key] = np.asarray(jax.tree.leaves(result)[0])
  # A 3x3 conv with dilation 2 of a [2, 9, 9, 4] input to 5 features: its output, the gradient
  # of the input and of the kernel; the taps compute the same numbers as XLA's convolution.
  shapes = {"forward": (2, 9, 9, 5), "input_grad": (2, 9, 9, 4), "kernel_grad": (3, 3, 4, 5)}
  for part, expected in shapes.items():
    native, taps = results[f"{part}_native_s"], results[f"{part}_taps_s"]
    assert native.shape == taps.shape == expected
    np.testing.assert_allclose(taps, native, rtol=1e-4, atol=1e-4 * np.abs(native).max())


def test_command_prints_the_table(tmp_path):
  out = tmp_path / "convs.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "spnet_jax.bench.conv_benchmark",
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
  with open(out) as f:
    written = json.load(f)
  assert (written["image_size"], written["batch"]) == (17, 1)
  convs = conv_benchmark.resnet101_aspp_convs(17)
  assert [row["name"] for row in written["convs"]] == [conv.name for conv in convs]
  assert [row["count"] for row in written["convs"]] == [conv.count for conv in convs]
  # Each total weights a conv's median by how often it occurs in one pass.
  totals = written["weighted_totals_s"]
  assert len(totals) == 6
  for key, total in totals.items():
    expected = sum(row["count"] * row[key] for row in written["convs"])
    assert math.isfinite(total) and total == pytest.approx(expected, rel=1e-12)
    assert all(row[key] > 0 for row in written["convs"])
