"""The TPU ahead-of-time compile command (spnet_jax/bench/tpu_compile.py).

The compile test needs libtpu (requirements-dev.txt installs it on Linux x86-64) but no TPU:
libtpu describes the slice and XLA compiles for it on the host. Where libtpu cannot load, it is
skipped with the reason.
"""

import os
import re

import jax
import numpy as np
import pytest

from configs import shapes_zlss
from spnet_jax.bench import tpu_compile
from spnet_jax.data import batching

from .conftest import ROOT

# conftest's persistent compilation cache stores compile-only TPU executables but cannot load them
# back without a TPU client: JAX warns and compiles again.
pytestmark = pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache")

# A small multi-host slice: 8 v5e chips over 2 hosts of 4 (libtpu's default host bounds).
SLICE = tpu_compile.get_topology("v5e:2x4")

_HLO = """\
HloModule step, entry_computation_layout={()->f32[]}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%body (p: (s32[], f32[256])) -> (s32[], f32[256]) {
  %p = (s32[], f32[256]{0}) parameter(0)
  %g = f32[256]{0:T(256)} get-tuple-element(%p), index=1
  %all-reduce.1 = f32[256]{0:T(256)} all-reduce(%g), replica_groups={}, to_apply=%add
  ROOT %t = (s32[], f32[256]{0}) tuple(%i, %all-reduce.1)
}

%cond (p: (s32[], f32[256])) -> pred[] {
  %p = (s32[], f32[256]{0}) parameter(0)
  %bound = s32[]{:T(128)} constant(3)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %bound), direction=LT
}

%scan_body (p: (s32[], f32[256])) -> (s32[], f32[256]) {
  %p = (s32[], f32[256]{0}) parameter(0)
  %g = f32[256]{0:T(256)} get-tuple-element(%p), index=1
  %all-gather.1 = f32[512]{0} all-gather(%g), dimensions={0}
  ROOT %t = (s32[], f32[256]{0}) tuple(%i, %g)
}

ENTRY %main (x: bf16[8,128]) -> f32[] {
  %x = bf16[8,128]{1,0} parameter(0)
  %while.1 = (s32[], f32[256]{0}) while(%init), condition=%cond, body=%body, \
backend_config={"known_trip_count":{"n":"2"}}
  %while.2 = (s32[], f32[256]{0}) while(%init), condition=%cond, body=%scan_body
  %all-reduce-start = (f32[100]{0}, bf16[10,10]{1,0}) all-reduce-start(%a, %b), to_apply=%add
  %all-reduce-done = (f32[100]{0}, bf16[10,10]{1,0}) all-reduce-done(%all-reduce-start)
  %all-gather-start = (bf16[1,128]{1,0}, bf16[8,128]{1,0}) all-gather-start(%y), dimensions={0}
  %all-gather-done = bf16[8,128]{1,0} all-gather-done(%all-gather-start)
  ROOT %r = f32[] constant(0)
}
"""


def test_collective_bytes_counts_loops_and_async_pairs_once_each():
  summary = tpu_compile.collective_bytes(_HLO)
  # In the loop of known trip count 2: 256 floats twice; the async pair: 400 + 200 bytes once.
  assert summary["all-reduce"] == {"instructions": 2, "bytes": 2 * 1024 + 600, "largest": 1024}
  # An all-gather-start's tuple is (operand, result): its result counts, once. The loop without
  # a trip count runs while `i < 3`: 3 times 512 floats.
  assert summary["all-gather"]["bytes"] == 8 * 128 * 2 + 3 * 512 * 4


def test_topology_names():
  assert tpu_compile.get_topology("v4-32").topology_name == "v4:2x2x4"
  assert tpu_compile.get_topology("v5e:2x2").chip.hbm_bytes == 16 * 2**30
  with pytest.raises(ValueError, match="Unknown topology"):
    tpu_compile.get_topology("v9-8")


def test_without_libtpu_says_what_to_install(monkeypatch):
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  monkeypatch.setattr(tpu_compile.importlib.util, "find_spec", lambda name: None)
  install = re.escape(f'pip install "{tpu_compile.libtpu_requirement()}"')
  with pytest.raises(tpu_compile.LibtpuUnavailable, match=install):
    tpu_compile.topology_devices(SLICE)


def test_requirements_pin_the_libtpu_of_the_installed_jax():
  with open(os.path.join(ROOT, "requirements-dev.txt")) as f:
    pins = [line.split(";")[0].strip() for line in f if line.startswith("libtpu")]
  assert pins == [tpu_compile.libtpu_requirement()]  # What jax[tpu] pins, e.g. libtpu==0.0.42.*


@pytest.fixture(scope="module")
def compiled_shapes():
  """The shapes config's steps compiled for SLICE, with the paper's batch: 10 in 2 micro-batches."""
  try:
    tpu_compile.topology_devices(SLICE)
  except tpu_compile.LibtpuUnavailable as error:
    pytest.skip(str(error))
  config = shapes_zlss.get_config()
  config.train.batch_size = 10  # 5 per micro-batch, padded to 8: one row per chip.
  config.train.accumulation_steps = 2
  config.model.width, config.model.dilations = 16, (1, 2)  # A smaller net compiles faster.
  results = tpu_compile.compile_for(config, SLICE, ("train", "eval"), embedding_dim=0)
  setup = tpu_compile.create_setup(config, 0)
  return {r["step"]: r for r in results}, setup


def test_compiles_for_a_multi_host_slice_with_the_padded_batch(compiled_shapes):
  results, _ = compiled_shapes
  train, evaluation = results["train"], results["eval"]
  assert (train["chips"], train["hosts"], train["device_kind"]) == (8, 2, "TPU v5 lite")
  assert train["rows"] == batching.padded_batch_size(10, 8, 2) == 16
  assert (evaluation["rows"], evaluation["images"]) == (64, 64)
  for r in (train, evaluation):
    assert 0 < r["total_bytes"] < r["hbm_bytes"] == 16 * 2**30
    assert r["argument_bytes"] > 0 and r["temp_bytes"] >= 0
    # XLA's count on the chip (the accumulation loop counted once) is of the order of the
    # model FLOPs per chip (both micro-batches, counted on the host CPU).
    assert 0.2 < r["xla_flops"] / r["model_flops_per_chip"] < 2.0
  # The train state is donated: its buffers alias the outputs.
  assert train["alias_bytes"] > 0.9 * train["output_bytes"]
  table = tpu_compile.format_table([train, evaluation]).splitlines()
  assert len(table) == 3 and table[1].startswith("v5e:2x4") and "all-reduce" in table[1]


def test_gradient_all_reduce_moves_the_parameters_in_float32(compiled_shapes):
  results, setup = compiled_shapes
  params = jax.eval_shape(
    lambda: setup.model.init(
      jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32), setup.class_embeddings
    )
  )["params"]
  count = sum(x.size for x in jax.tree.leaves(params))
  all_reduce = results["train"]["collectives"]["all-reduce"]
  # One float32 gradient per parameter and step (after the accumulation loop), plus a few
  # scalars (the loss's pixel count). XLA may reduce two identical gradients once (the tiny
  # head's two branch biases get the same gradient): 2% covers that at 185 k parameters.
  assert 0.98 * 4 * count < all_reduce["bytes"] < 1.02 * 4 * count
  assert all_reduce["largest"] > 0.9 * 4 * count  # Combined into one tuple all-reduce.
