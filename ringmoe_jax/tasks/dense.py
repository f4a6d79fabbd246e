"""Dense-prediction losses shared by segmentation and change detection.

Axes: B batch, H/W pixels, K classes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ringmoe_jax.data.task_pipeline import IGNORE


def pixel_cross_entropy(logits: jax.Array, target: jax.Array, weight: jax.Array,
                        class_weights: jax.Array | None = None) -> jax.Array:
  """Mean CE over labelled pixels: logits (B, H, W, K), target (B, H, W) int (255 ignored),
  weight (B,) (0 = padding example). class_weights (K,): per-class pixel weights."""
  keep = (target != IGNORE) & (weight[:, None, None] > 0)
  safe = jnp.where(keep, target, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  w = keep.astype(jnp.float32)
  if class_weights is not None:
    w = w * class_weights[safe]
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def soft_dice_loss(logits: jax.Array, target: jax.Array, weight: jax.Array,
                   positive: int = 1, eps: float = 1.0) -> jax.Array:
  """1 - soft Dice of class `positive` over the batch's labelled pixels (a rare class, such as
  change, gets a gradient however few pixels it has)."""
  keep = ((target != IGNORE) & (weight[:, None, None] > 0)).astype(jnp.float32)
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., positive] * keep
  t = (target == positive).astype(jnp.float32) * keep
  return 1.0 - (2.0 * jnp.sum(p * t) + eps) / (jnp.sum(p) + jnp.sum(t) + eps)


def pixel_accuracy(logits: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  keep = (target != IGNORE) & (weight[:, None, None] > 0)
  hit = (jnp.argmax(logits, -1) == target) & keep
  return jnp.sum(hit) / jnp.maximum(jnp.sum(keep), 1)
