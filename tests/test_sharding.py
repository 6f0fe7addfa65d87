"""A training step sharded over 4 fake CPU devices matches the same step on 1 device."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

_SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from configs import shapes_zlss
from spnet_jax.train import optimizer
from spnet_jax.train import step
from spnet_jax.models.registry import create_model

assert jax.device_count() == 4, jax.devices()
config = shapes_zlss.get_config()
config.model.width = 8
config.model.dilations = (1, 2)
config.train.batch_size = 8
config.model.atrous_conv, config.model.conv_kernel_grad = sys.argv[1:3]
model = create_model(config.model, embedding_dim=9, num_classes=17)
tx = optimizer.create_optimizer(config.optimizer, 10)
embeddings = jax.random.normal(jax.random.key(1), (17, 9))
rng = np.random.default_rng(0)
batch = {"image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
         "label": rng.integers(0, 13, size=(8, 32, 32)).astype(np.int32)}
batch["label"][:, :4] = 255

def run(devices, accumulation):
  config.train.accumulation_steps = accumulation
  mesh = Mesh(np.array(devices), ("data",))
  state = step.create_train_state(model, tx, jax.random.key(0), 32, embeddings)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  sharded = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()}
  jitted_step = jax.jit(
    lambda s, b: step.train_step(
      s, b, embeddings, jax.random.key(5), model=model, tx=tx, config=config,
      train_classes=np.arange(13),
    )
  )
  losses = []
  for _ in range(3):
    state, metrics = jitted_step(state, sharded)
    losses.append(float(metrics["loss"]))
  assert len(sharded["image"].sharding.device_set) == len(devices)
  return np.array(losses), state

one, state_one = run(jax.devices()[:1], 1)
four, state_four = run(jax.devices(), 1)
np.testing.assert_allclose(four, one, rtol=1e-5)
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
             state_one.params, state_four.params)
# Two micro-batches of 4 give the update of one batch of 8 (no batch statistics to differ).
accumulated, state_acc = run(jax.devices(), 2)
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
             state_one.params, state_acc.params)
print("losses", one, four, accumulated)
"""


# 'taps' also shards the custom-VJP kernel gradients (its matmuls contract the batch axis).
@pytest.mark.parametrize("conv_method", [("auto", "auto"), ("taps", "taps")])
def test_sharded_step_matches_single_device(conv_method):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  env["PYTHONPATH"] = ROOT
  result = subprocess.run(
    [sys.executable, "-c", _SCRIPT, *conv_method],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "losses" in result.stdout
