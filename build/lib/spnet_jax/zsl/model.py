"""The SPNet classifier on fixed features: scores phi(x)^T V w_c, trained over seen classes (eq. 8).

V [D, d_w] is the only trainable parameter (a plain array); the class attribute matrix W [C, d_w]
is an argument of every function, never a parameter, so the optimiser cannot touch it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

FEATURE_NORMS = ("l2", "standardize", "none")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class FeatureTransform:
  """Feature normalisation; 'standardize' keeps the statistics of the features trained on."""

  kind: str
  mean: np.ndarray | None = None
  std: np.ndarray | None = None

  def __call__(self, features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32)
    if self.kind == "l2":
      return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if self.kind == "standardize":
      return (features - self.mean) / self.std
    return features


def fit_feature_transform(kind: str, train_features: np.ndarray) -> FeatureTransform:
  """The normalisation `kind` (FEATURE_NORMS), with statistics from the training features only."""
  if kind not in FEATURE_NORMS:
    raise ValueError(f"Unknown feature normalisation {kind!r}; valid: {list(FEATURE_NORMS)}.")
  if kind != "standardize":
    return FeatureTransform(kind)
  mean = train_features.mean(axis=0, dtype=np.float64).astype(np.float32)
  # Constant dimensions (ReLU features that never fire) keep unit scale instead of dividing by 0.
  std = train_features.std(axis=0, dtype=np.float64).astype(np.float32)
  return FeatureTransform(kind, mean, np.where(std > 1e-6, std, 1.0))


def normalize_attributes(attributes: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (the xlsa17 'att' already are; other files may not be)."""
  attributes = np.asarray(attributes, np.float32)
  return attributes / np.maximum(np.linalg.norm(attributes, axis=1, keepdims=True), 1e-12)


def scores(v: jax.Array, features: jax.Array, attributes: jax.Array) -> jax.Array:
  """s[n, c] = phi(x_n)^T V w_c for features [N, D], V [D, d] and attributes [C, d]."""
  return (features @ v) @ attributes.T


def seen_class_loss(
  v: jax.Array,
  features: jax.Array,
  labels: jax.Array,
  seen_attributes: jax.Array,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Mean of -log softmax over the seen classes only (paper eq. 8).

  Args:
    v: [D, d] the linear map V.
    features: [B, D] image features.
    labels: [B] index of each image's class among the rows of `seen_attributes`.
    seen_attributes: [S, d] attribute vectors of the seen classes.
    mask: [B] 1 for real examples, 0 for padding (None: all real).

  Returns:
    The masked mean cross-entropy (0 for an all-padding batch).
  """
  logits = scores(v, features, seen_attributes)
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if mask is None:
    return per_example.mean()
  return (per_example * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int):
  """optax transform of config.optimizer: coupled weight decay (an L2 term) then Adam or SGD."""
  if config.schedule == "cosine":
    lr = optax.cosine_decay_schedule(config.lr, max(total_steps, 1))
  else:
    lr = config.lr
  if config.name == "adam":
    base = optax.adam(lr)
  else:
    base = optax.sgd(lr, momentum=config.momentum or None)
  return optax.chain(optax.add_decayed_weights(config.weight_decay), base)


def fit(
  features: np.ndarray,
  labels: np.ndarray,
  attributes: np.ndarray,
  config: ml_collections.ConfigDict,
  seed: int,
  log_name: str,
  writer=None,
) -> tuple[jax.Array, list[float]]:
  """Trains V on (already normalised) features of the seen classes.

  Args:
    features: [N, D] training features.
    labels: [N] index of each image's class among the rows of `attributes`.
    attributes: [S, d] the seen classes' attribute vectors (the softmax runs over these only).
    config: the run config (config.train and config.optimizer are read).
    seed: seeds the minibatch order.
    log_name: metric name of the epoch loss (e.g. 'train_loss').
    writer: optional CLU metric writer for the epoch losses.

  Returns:
    V [D, d] and the mean training loss of every epoch.

  Raises:
    FloatingPointError: the loss became non-finite (lower config.optimizer.lr).
  """
  num, batch = len(labels), min(config.train.batch_size, len(labels))
  steps_per_epoch = -(-num // batch)
  tx = create_optimizer(config.optimizer, config.train.epochs * steps_per_epoch)
  # The objective is convex in V, so a zero start loses nothing and makes runs reproducible.
  v = jnp.zeros((features.shape[1], attributes.shape[1]), jnp.float32)
  opt_state = tx.init(v)

  @jax.jit
  def train_epoch(v, opt_state, features, labels, attributes, order, mask):
    def step(carry, batch):
      v, opt_state = carry
      index, weight = batch
      loss, grad = jax.value_and_grad(seen_class_loss)(
        v, features[index], labels[index], attributes, weight
      )
      updates, opt_state = tx.update(grad, opt_state, v)
      return (optax.apply_updates(v, updates), opt_state), loss * weight.sum()

    (v, opt_state), losses = jax.lax.scan(step, (v, opt_state), (order, mask))
    return v, opt_state, losses.sum() / mask.sum()

  features, labels = jnp.asarray(features), jnp.asarray(labels, jnp.int32)
  attributes = jnp.asarray(attributes)
  rng = np.random.default_rng(seed)
  # The last minibatch is padded (weight 0) so that every image counts once per epoch.
  padding = steps_per_epoch * batch - num
  mask = np.concatenate([np.ones(num, np.float32), np.zeros(padding, np.float32)])
  mask = jnp.asarray(mask.reshape(steps_per_epoch, batch))
  history = []
  for epoch in range(1, config.train.epochs + 1):
    order = np.concatenate([rng.permutation(num), np.zeros(padding, np.int64)])
    order = jnp.asarray(order.reshape(steps_per_epoch, batch), jnp.int32)
    v, opt_state, loss = train_epoch(v, opt_state, features, labels, attributes, order, mask)
    loss = float(loss)
    if not np.isfinite(loss):
      raise FloatingPointError(
        f"{log_name} is {loss} at epoch {epoch}: lower config.optimizer.lr "
        f"(now {config.optimizer.lr})."
      )
    history.append(loss)
    if writer is not None:
      writer.write_scalars(epoch, {log_name: loss})
    if epoch % config.train.log_every_epochs == 0 or epoch == config.train.epochs:
      logging.info("%s epoch %d/%d: %.4f", log_name, epoch, config.train.epochs, loss)
  return v, history
