"""Tests for spnet_jax/train/optimizer.py against hand-written PyTorch SGD/Adam update rules."""

import math

import jax
import ml_collections
import numpy as np
import optax
import pytest

from spnet_jax.train import optimizer

MULTIPLIERS = {"backbone_kernel": 1.0, "backbone_bias": 2.0, "head_kernel": 10.0, "head_bias": 20.0}
LEAF_GROUPS = {
  ("backbone", "conv", "kernel"): "backbone_kernel",
  ("backbone", "conv", "bias"): "backbone_bias",
  ("embedding_head", "c0", "conv", "kernel"): "head_kernel",
  ("embedding_head", "c0", "conv", "bias"): "head_bias",
}


def make_config(**overrides) -> ml_collections.ConfigDict:
  """config.optimizer like configs/shapes_zlss.py, with DeepLab-v2 SGD settings."""
  cfg = ml_collections.ConfigDict(
    {
      "name": "sgd",
      "base_lr": 0.1,
      "schedule": "poly",
      "warmup_steps": 100,
      "final_lr_fraction": 0.01,
      "poly_power": 0.9,
      "momentum": 0.9,
      "adam_b1": 0.9,
      "adam_b2": 0.999,
      "adam_eps": 1e-8,
      "weight_decay": 5e-4,
      "decay_biases": False,
      "grad_clip_norm": 0.0,
      "lr_multipliers": ml_collections.ConfigDict(MULTIPLIERS),
    }
  )
  cfg.update(overrides)
  return cfg


def make_params() -> dict:
  return {
    "backbone": {"conv": {"kernel": np.array([[1.0, -2.0]]), "bias": np.array([0.5, 0.0])}},
    "embedding_head": {
      "c0": {"conv": {"kernel": np.array([0.3, -0.7, 2.0]), "bias": np.array([0.2])}}
    },
  }


def make_grads(step: int) -> dict:
  sign = 1.0 if step == 0 else -0.5
  return {
    "backbone": {
      "conv": {"kernel": sign * np.array([[0.5, 0.25]]), "bias": np.array([-1.0, 2.0]) * sign}
    },
    "embedding_head": {
      "c0": {"conv": {"kernel": np.array([0.1, 0.0, -0.2]) + step, "bias": np.array([-1.0])}}
    },
  }


def leaf(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return np.asarray(tree, np.float64)


def poly_lr(step: int) -> float:
  return 0.1 * (1 - step / 10) ** 0.9


def run_optimizer(cfg: ml_collections.ConfigDict, steps: int = 2) -> dict:
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), make_params())
  tx = optimizer.create_optimizer(cfg, 10)
  state = tx.init(params)
  for step in range(steps):
    grads = jax.tree.map(lambda x: np.asarray(x, np.float32), make_grads(step))
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def reference_sgd(path: tuple[str, ...], steps: int = 2) -> np.ndarray:
  """torch.optim.SGD(momentum=0.9, weight_decay on kernels only) with the poly schedule."""
  group = LEAF_GROUPS[path]
  p = leaf(make_params(), path)
  buf = None
  for step in range(steps):
    d = leaf(make_grads(step), path)
    if group.endswith("kernel"):
      d = d + 5e-4 * p
    buf = d.copy() if buf is None else 0.9 * buf + d
    p = p - poly_lr(step) * MULTIPLIERS[group] * buf
  return p


def reference_adam(path: tuple[str, ...], steps: int = 2) -> np.ndarray:
  """torch.optim.Adam (coupled weight_decay on kernels only) with the poly schedule."""
  group = LEAF_GROUPS[path]
  p = leaf(make_params(), path)
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  for step in range(steps):
    d = leaf(make_grads(step), path)
    if group.endswith("kernel"):
      d = d + 5e-4 * p
    m = 0.9 * m + 0.1 * d
    v = 0.999 * v + 0.001 * d * d
    bias1 = 1 - 0.9 ** (step + 1)
    bias2 = 1 - 0.999 ** (step + 1)
    denom = np.sqrt(v) / math.sqrt(bias2) + 1e-8
    p = p - poly_lr(step) * MULTIPLIERS[group] / bias1 * m / denom
  return p


@pytest.mark.parametrize("path", list(LEAF_GROUPS))
def test_sgd_two_steps_match_pytorch(path):
  params = run_optimizer(make_config(name="sgd"))
  np.testing.assert_allclose(leaf(params, path), reference_sgd(path), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("path", list(LEAF_GROUPS))
def test_adam_two_steps_match_pytorch(path):
  params = run_optimizer(make_config(name="adam"))
  np.testing.assert_allclose(leaf(params, path), reference_adam(path), rtol=1e-5, atol=1e-7)


def test_sgd_hand_numbers():
  params = run_optimizer(make_config(name="sgd"), steps=1)
  # Backbone kernel 1.0, grad 0.5, decay 5e-4: 1 - 0.1 * (0.5 + 5e-4 * 1) = 0.94995.
  np.testing.assert_allclose(params["backbone"]["conv"]["kernel"][0, 0], 0.94995, rtol=1e-6)
  # Head bias 0.2, grad -1, no decay, lr x20: 0.2 + 0.1 * 20 = 2.2.
  np.testing.assert_allclose(params["embedding_head"]["c0"]["conv"]["bias"][0], 2.2, rtol=1e-6)
  params = run_optimizer(make_config(name="sgd"), steps=2)
  # Step 2: buf = 0.9 * (-1) + (-1) = -1.9; lr = 0.1 * 0.9 ** 0.9 = 0.0909532.
  lr1 = 0.1 * 0.9**0.9
  np.testing.assert_allclose(
    params["embedding_head"]["c0"]["conv"]["bias"][0], 2.2 + lr1 * 20 * 1.9, rtol=1e-6
  )


def test_decay_biases_applies_weight_decay_to_biases():
  params = run_optimizer(make_config(name="sgd", momentum=0.0, decay_biases=True), steps=1)
  # Backbone bias 0.5, grad -1, decay 5e-4, lr x2: 0.5 - 0.2 * (-1 + 2.5e-4).
  np.testing.assert_allclose(params["backbone"]["conv"]["bias"][0], 0.5 + 0.2 * 0.99975, rtol=1e-6)


def test_grad_clip_norm_scales_all_gradients():
  cfg = make_config(
    name="sgd", schedule="constant", momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0
  )
  params = run_optimizer(cfg, steps=1)
  grads = make_grads(0)
  norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grads)))
  assert norm > 1.0
  for path, group in LEAF_GROUPS.items():
    expected = leaf(make_params(), path) - 0.1 * MULTIPLIERS[group] * leaf(grads, path) / norm
    np.testing.assert_allclose(leaf(params, path), expected, rtol=1e-5, atol=1e-7)


def test_param_group_labels():
  for path, group in LEAF_GROUPS.items():
    assert optimizer.param_group(path) == group
  assert optimizer.param_group(("classifier", "Dense_0", "bias")) == "head_bias"
  groups = optimizer.param_groups(make_params())
  assert groups == {
    "backbone": {"conv": {"kernel": "backbone_kernel", "bias": "backbone_bias"}},
    "embedding_head": {"c0": {"conv": {"kernel": "head_kernel", "bias": "head_bias"}}},
  }


def test_poly_schedule():
  schedule = optimizer.create_learning_rate_schedule(make_config(), 10)
  for step, expected in [(0, 0.1), (1, 0.1 * 0.9**0.9), (5, 0.1 * 0.5**0.9), (10, 0.0)]:
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6, atol=1e-9)


def test_warmup_cosine_schedule():
  cfg = make_config(schedule="warmup_cosine", base_lr=2e-3, warmup_steps=100)
  schedule = optimizer.create_learning_rate_schedule(cfg, 2000)
  end = 2e-5
  cases = [
    (0, 0.0),
    (50, 1e-3),
    (100, 2e-3),
    # Half-way through the cosine part: the mean of peak and end.
    (1050, (2e-3 + end) / 2),
    (100 + 1900 // 4, end + (2e-3 - end) * 0.5 * (1 + math.cos(math.pi * 475 / 1900))),
    (2000, end),
    (5000, end),
  ]
  for step, expected in cases:
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-10)


def test_constant_schedule():
  schedule = optimizer.create_learning_rate_schedule(make_config(schedule="constant"), 10)
  for step in (0, 3, 10, 50):
    np.testing.assert_allclose(float(schedule(step)), 0.1, rtol=1e-7)


@pytest.mark.parametrize(
  ("overrides", "field"),
  [({"name": "rmsprop"}, "config.optimizer.name"), ({"schedule": "step"}, "schedule")],
)
def test_unknown_names_raise(overrides, field):
  with pytest.raises(ValueError, match=field):
    optimizer.create_optimizer(make_config(**overrides), 10)
