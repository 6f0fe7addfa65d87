"""The benchmark command's pieces: timing, FLOPs, MFU, and the PyTorch side on the same network."""

import jax
import numpy as np
import pytest

from configs import shapes_zlss, voc_zlss
from spnet_jax import benchmark


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


def test_measured_matmul_peak_is_positive():
  assert benchmark.matmul_tflops("float32", size=256, repeats=2) > 0


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
  assert figures["steps_timed"] == 2 and figures["median_step_s"] > 0
  assert figures["flops_per_step"] > 0 and 0 < figures["mfu"]
  assert len(losses) == 3 and np.all(np.isfinite(losses))
  evaluation = benchmark.time_evaluation(bench, 32, None, warmup=1, steps=1)
  assert evaluation["flops_per_step"] > 0 and evaluation["mfu"] is None
  table = benchmark.format_table([figures, evaluation])
  assert table.splitlines()[1].startswith("train") and table.splitlines()[2].startswith("eval")


def test_pytorch_side_runs_the_same_network_and_loss():
  pytest.importorskip("torch")
  from spnet_jax import torch_benchmark

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
  assert theirs["median_step_s"] > 0 and theirs["threads"] >= 1


def test_pytorch_side_names_what_it_supports():
  pytest.importorskip("torch")
  from spnet_jax import torch_benchmark

  with pytest.raises(ValueError, match="backbone='tiny'"):
    torch_benchmark.random_state_dict(shapes_zlss.get_config(), 8)
