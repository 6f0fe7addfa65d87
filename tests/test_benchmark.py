"""The benchmark command's pieces: timing, FLOPs, MFU, and the PyTorch side on the same network."""

import math
import statistics

import jax
import numpy as np
import pytest

from configs import shapes_zlss, voc_zlss
from spnet_jax.bench import benchmark, host, timing


class _FakeDevice:
  def __init__(self, kind):
    self.device_kind = kind


def test_peak_from_the_flag_the_datasheet_or_none():
  assert benchmark.peak_tflops(_FakeDevice("NVIDIA H100 80GB HBM3"), 0.0)[0] == 989.0
  assert benchmark.peak_tflops(_FakeDevice("NVIDIA H100 PCIe"), 0.0)[0] == 756.0
  assert benchmark.peak_tflops(_FakeDevice("TPU v5 lite"), 0.0)[0] == 197.0
  assert benchmark.peak_tflops(_FakeDevice("cpu"), 2.5) == (2.5, "--peak_tflops")
  value, source = benchmark.peak_tflops(_FakeDevice("cpu"), 0.0)
  assert value is None and "--peak_tflops" in source


def _conv_flops(size, in_features, out_features, kernel, stride=1, dilation=1, batch=1) -> int:
  """2 x the multiply-adds of a caffe-padded square conv, counting only taps that read the input.

  XLA's cost analysis counts no multiply with padding (test_model_flops_by_hand), and counts an
  input or kernel gradient as many FLOPs as the forward.
  """
  pad = dilation * (kernel - 1) // 2
  out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
  taps = sum(0 <= i * stride - pad + t * dilation < size for i in range(out) for t in range(kernel))
  return 2 * batch * in_features * out_features * taps**2


def _upsample_flops(batch, size, out, channels) -> int:
  """Bilinear [B, size, size, C] -> [B, out, out, C]: a matmul along the height, then the width."""
  return 2 * batch * channels * (out * size * size + out * out * size)


def test_measured_matmul_peak_is_2n3_over_the_median_call(monkeypatch):
  timed = []

  def recording_time_calls(call, warmup, steps):
    assert (warmup, steps) == (1, 3)
    result = jax.block_until_ready(call())
    assert result.shape == (256, 256)
    timed.extend(timing.time_calls(call, warmup, steps))
    return timed

  monkeypatch.setattr(benchmark, "time_calls", recording_time_calls)
  tflops = benchmark.matmul_tflops("float32", size=256, repeats=3)
  assert len(timed) == 3 and all(math.isfinite(t) and t > 0 for t in timed)
  assert tflops == pytest.approx(2 * 256**3 / statistics.median(timed) / 1e12, rel=1e-12)


def test_summary_figures_by_hand():
  figures = benchmark.summarize("train", [0.3, 0.1, 0.2], 5.0, 4e12, 8, peak=10.0)
  assert figures["median_step_s"] == pytest.approx(0.2)
  assert figures["images_per_s"] == pytest.approx(40.0)
  assert figures["achieved_tflops"] == pytest.approx(20.0)
  assert figures["mfu"] == pytest.approx(2.0)
  assert benchmark.summarize("eval", [1.0], 1.0, 1e9, 1, peak=None)["mfu"] is None


def test_model_flops_by_hand():
  a, b = np.ones((64, 128), np.float32), np.ones((128, 32), np.float32)
  assert benchmark.model_flops(lambda x, y: x @ y, a, b) == 2 * 64 * 128 * 32
  images, kernel = np.ones((2, 10, 10, 3), np.float32), np.ones((3, 3, 3, 4), np.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  assert benchmark.model_flops(conv, images, kernel) == 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)
  # With caffe padding, taps that read the padding are not counted: along each axis the 6
  # outputs of a 3-tap conv with dilation 2 and padding 2 read 2 + 2 + 3 + 3 + 2 + 2 = 14 pixels.
  padded = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  images = np.ones((2, 6, 6, 3), np.float32)
  assert benchmark.model_flops(padded, images, kernel) == 2 * 2 * 3 * 4 * 14**2
  assert _conv_flops(6, 3, 4, 3, dilation=2, batch=2) == 2 * 2 * 3 * 4 * 14**2
  strided = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  images = np.ones((2, 9, 9, 3), np.float32)
  assert benchmark.model_flops(strided, images, kernel) == _conv_flops(9, 3, 4, 3, 2, batch=2)


def test_model_flops_count_native_convs_whatever_the_config_runs():
  counts = []
  methods = (("dilated", "native"), ("space_to_batch", "native"), ("taps", "taps"))
  for atrous_conv, kernel_grad in methods:
    config = shapes_zlss.get_config()
    config.model.width, config.model.dilations = 8, (1, 2)
    config.model.atrous_conv, config.model.conv_kernel_grad = atrous_conv, kernel_grad
    bench = benchmark.Bench(config, image_size=32, embedding_dim=8)
    counts.append(bench.step_flops())
    if atrous_conv == "dilated":  # On a CPU the executable counts about the same (fusions).
      compiled = bench.train_step()[0]
      assert counts[-1] == pytest.approx(benchmark.xla_flops(compiled), rel=0.02)
  assert counts[0] == counts[1] == counts[2]
  config.train.batch_size, config.train.accumulation_steps = 4, 2
  two_micro_batches = benchmark.Bench(config, image_size=32, embedding_dim=8).step_flops()
  config.train.accumulation_steps = 1
  one_batch = benchmark.Bench(config, image_size=32, embedding_dim=8).step_flops()
  assert two_micro_batches == one_batch  # Not halved by XLA counting the scan body once.


def test_train_and_eval_parts_time_the_configs_step():
  config = shapes_zlss.get_config()
  config.model.width = 8
  config.model.dilations = (1, 2)
  config.train.batch_size = 2
  bench = benchmark.Bench(config, image_size=32, embedding_dim=8)
  figures, losses = benchmark.time_training(bench, peak=1.0, warmup=1, steps=2)
  median = figures["median_step_s"]
  assert figures["steps_timed"] == 2 and math.isfinite(median) and median > 0
  assert len(losses) == 3 and np.all(np.isfinite(losses))
  # FLOPs by hand, per 32x32 image: the tiny net at width 8 (2 stride-2 stems, 2 blocks of two
  # 3x3 convs with dilations 1 and 2, at 8x8) and ASPP rates 1 and 2 to 8 embedding channels.
  convs = _conv_flops(32, 3, 4, 3, stride=2) + _conv_flops(16, 4, 8, 3, stride=2)
  convs += sum(_conv_flops(8, 8, 8, 3, dilation=d) for d in (1, 1, 2, 2, 1, 2))
  # Training, batch 2, 13 train classes: forward, kernel gradients and input gradients (none
  # for the image) of the convs; the projection and its feature gradient; the logits upsampled
  # to the labels and back.
  train = 2 * (3 * convs - _conv_flops(32, 3, 4, 3, stride=2))
  train += 2 * (2 * 2 * 64 * 13 * 8) + 2 * _upsample_flops(2, 8, 32, 13)
  # The rest (bias, ReLU, softmax cross-entropy, Adam: a few FLOPs per element) is far less.
  assert train <= figures["flops_per_step"] <= 1.5 * train
  assert figures["flops_per_step"] == bench.step_flops()
  assert figures["images_per_s"] == pytest.approx(2 / median)
  assert figures["achieved_tflops"] == pytest.approx(figures["flops_per_step"] / median / 1e12)
  assert figures["mfu"] == pytest.approx(figures["achieved_tflops"] / 1.0)
  evaluation = benchmark.time_evaluation(bench, 32, None, warmup=1, steps=1)
  # Evaluation, the config's batch of 64, all 17 classes: the forward and the upsampling to the
  # input size (then an argmax, a few FLOPs per score).
  batch = config.eval.batch_size
  forward = batch * (convs + 2 * 64 * 17 * 8) + _upsample_flops(batch, 8, 32, 17)
  assert forward <= evaluation["flops_per_step"] <= 1.5 * forward
  assert evaluation["steps_timed"] == 1 and evaluation["mfu"] is None
  assert evaluation["images_per_s"] == pytest.approx(batch / evaluation["median_step_s"])
  table = benchmark.format_table([figures, evaluation])
  assert table.splitlines()[1].startswith("train") and table.splitlines()[2].startswith("eval")


def test_pytorch_side_runs_the_same_network_and_loss():
  pytest.importorskip("torch")
  from spnet_jax.bench import torch_benchmark

  config = voc_zlss.get_config()
  config.train.batch_size = 2
  config.train.accumulation_steps = 2
  variables = torch_benchmark.converted_variables(config, 8)
  bench = benchmark.Bench(config, image_size=33, embedding_dim=8, variables=variables)
  ours = bench.first_loss()
  theirs = benchmark.torch_side_by_side(bench, [ours], warmup=0, steps=1)
  # Same weights, inputs, MSC outputs, label resizing and accumulation: the same first loss.
  assert theirs["first_loss"] == pytest.approx(ours, rel=1e-4)
  assert theirs["jax_first_loss"] == ours
  assert theirs["threads"] == host.usable_cores() and theirs["steps_timed"] == 1
  assert theirs["median_step_s"] == theirs["step_s"][0] and math.isfinite(theirs["median_step_s"])


def test_pytorch_side_names_what_it_supports():
  pytest.importorskip("torch")
  from spnet_jax.bench import torch_benchmark

  with pytest.raises(ValueError, match="backbone='tiny'"):
    torch_benchmark.random_state_dict(shapes_zlss.get_config(), 8)
