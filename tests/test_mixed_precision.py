"""bfloat16 compute with float32 parameters: losses stay within a stated tolerance of float32."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from configs import shapes_zlss
from spnet_jax.data import shapes, splits
from spnet_jax.embeddings import class_embeddings as embeddings
from spnet_jax.models.registry import create_model
from spnet_jax.train import optimizer, step

# bfloat16 keeps 8 bits of mantissa: ~0.4% per op; a loss over many pixels stays within 2%.
RELATIVE_TOLERANCE = 2e-2


def _batch(count: int = 8) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  pairs = [shapes.render_example(rng) for _ in range(count)]
  table = splits.remap_table(splits.get_split("shapes", "default").train_classes)
  return {
    "image": np.stack([2 * image - 1 for image, _ in pairs]).astype(np.float32),
    "label": table[np.stack([label for _, label in pairs])],
  }


def _operand_dtypes(jaxpr) -> collections.Counter:
  """(conv or matmul primitive, operand dtypes) -> count, over a jaxpr and every nested one."""
  counts = collections.Counter()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      counts[eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)] += 1
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax_core.ClosedJaxpr):
          counts.update(_operand_dtypes(sub.jaxpr))
        elif isinstance(sub, jax_core.Jaxpr):
          counts.update(_operand_dtypes(sub))
  return counts


def test_bfloat16_losses_match_float32_within_tolerance():
  config = shapes_zlss.get_config()
  config.model.width = 16
  config.model.dilations = (1, 2)
  config.model.atrous_conv = "dilated"  # One XLA convolution per conv on every platform.
  config.model.conv_kernel_grad = "native"
  config.optimizer.schedule = "constant"
  config.optimizer.base_lr = 1e-3
  split = splits.get_split("shapes", "default")
  class_embeddings = jnp.asarray(embeddings.attribute_embeddings(split.class_names))
  class_embeddings = class_embeddings / jnp.linalg.norm(class_embeddings, axis=1, keepdims=True)
  batch = _batch()
  tx = optimizer.create_optimizer(config.optimizer, 10)
  losses, ops = {}, {}
  for dtype in ("float32", "bfloat16"):
    config.model.dtype = dtype
    model = create_model(config.model, class_embeddings.shape[1], split.num_classes)
    state = step.create_train_state(model, tx, jax.random.key(0), 64, class_embeddings)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    jitted_step = jax.jit(
      lambda s, b, m=model: step.train_step(
        s,
        b,
        class_embeddings,
        jax.random.key(1),
        model=m,
        tx=tx,
        config=config,
        train_classes=np.asarray(split.train_classes),
      )
    )
    ops[dtype] = _operand_dtypes(jax.make_jaxpr(jitted_step)(state, batch).jaxpr)
    history = []
    for _ in range(5):
      state, metrics = jitted_step(state, batch)
      history.append(float(metrics["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state) if x.ndim)
    losses[dtype] = np.array(history)
  # What the train step runs in each dtype. 2 stems, 2 x 2 block convs and 2 ASPP branches: 8
  # forward convs, 8 kernel gradients and 7 input gradients (none for the image), all of them in
  # the compute dtype; so is the projection onto the embeddings and its gradient. The bilinear
  # upsampling of the float32 logits to the labels (2 matmuls and their 2 transposes) stays f32.
  f32, bf16 = ("float32", "float32"), ("bfloat16", "bfloat16")
  assert ops["float32"] == {("conv_general_dilated", f32): 23, ("dot_general", f32): 2 + 4}
  assert ops["bfloat16"] == {
    ("conv_general_dilated", bf16): 23,
    ("dot_general", bf16): 2,
    ("dot_general", f32): 4,
  }
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=RELATIVE_TOLERANCE)
  assert losses["bfloat16"][-1] < losses["bfloat16"][0]
