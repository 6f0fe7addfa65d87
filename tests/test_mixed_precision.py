"""bfloat16 compute with float32 parameters: losses stay within a stated tolerance of float32."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import shapes_zlss
from spnet_jax import embeddings, optimizer, step
from spnet_jax.data import shapes, splits
from spnet_jax.models import create_model

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


def test_bfloat16_losses_match_float32_within_tolerance():
  config = shapes_zlss.get_config()
  config.model.width = 16
  config.model.dilations = (1, 2)
  config.optimizer.schedule = "constant"
  config.optimizer.base_lr = 1e-3
  split = splits.get_split("shapes", "default")
  class_embeddings = jnp.asarray(embeddings.attribute_embeddings(split.class_names))
  class_embeddings = class_embeddings / jnp.linalg.norm(class_embeddings, axis=1, keepdims=True)
  batch = _batch()
  tx = optimizer.create_optimizer(config.optimizer, 10)
  losses = {}
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
    history = []
    for _ in range(5):
      state, metrics = jitted_step(state, batch)
      history.append(float(metrics["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state) if x.ndim)
    losses[dtype] = np.array(history)
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=RELATIVE_TOLERANCE)
  assert losses["bfloat16"][-1] < losses["bfloat16"][0]
