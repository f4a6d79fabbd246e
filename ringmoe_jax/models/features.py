"""The one place fine-tuning calls the encoder: multi-view batches in, per-view features out.

Axes: B batch, V views (co-registered tiles of one place: fused modalities, or the before /
after images of a change pair), H/W pixels, Cmax padded channels, h_i/w_i and C_i the grid and
channels of stage i (strides 4, 8, 16, 32 for the 4-stage Swin).

Views are folded into the batch ((B, V, ...) -> (B*V, ...)), so one encoder pass embeds every
view with its own modality's patch embedding and routing (Siamese weights for change pairs),
and the tokens of all views share the MoE's capacity like a pre-training batch does.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _fold(x: jax.Array) -> jax.Array:
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _unfold(x: jax.Array, b: int, v: int) -> jax.Array:
  return x.reshape((b, v) + x.shape[1:])


def pooled_features(last: jax.Array, token_valid: jax.Array) -> jax.Array:
  """Mean of the last-stage map over its valid tokens: (N, h, w, C), (N, h, w) -> (N, C)."""
  w = token_valid.astype(jnp.float32)[..., None]
  total = jnp.sum(last.astype(jnp.float32) * w, axis=(1, 2))
  return total / jnp.maximum(jnp.sum(w, axis=(1, 2)), 1.0)


def token_valid_at(valid: jax.Array, h: int, w: int) -> jax.Array:
  """(N, H, W) pixel validity -> (N, h, w): a token is valid if any of its pixels is."""
  n, hh, ww = valid.shape
  return valid.reshape(n, h, hh // h, w, ww // w).max(axis=(2, 4)) > 0


def encode_views(encoder, batch: dict[str, jax.Array], *, train: bool,
                 frozen: bool = False) -> tuple[list[jax.Array], jax.Array, dict[str, Any]]:
  """Encodes every view of a task batch.

  Args:
    encoder: a `RingMoEEncoder`.
    batch: `pixels` (B, V, H, W, Cmax), `valid` (B, V, H, W), `modality` and `sensor` (B, V).
    train: training routing (capacity_factor) vs evaluation routing.
    frozen: the encoder is not fine-tuned: it runs in evaluation mode (eval routing capacity,
      no dropout) and its features carry no gradient, so no encoder gradient is ever computed.

  Returns:
    feats: per stage (B, V, h_i, w_i, C_i); pooled: (B, V, C_last), the mean of the last stage
    over tokens with at least one valid pixel; aux: the encoder's (balance_loss, routing).
  """
  b, v = batch["pixels"].shape[:2]
  valid = _fold(batch["valid"])
  feats, aux = encoder(_fold(batch["pixels"]), _fold(batch["modality"]),
                       sensor=_fold(batch["sensor"]), valid=valid,
                       train=train and not frozen)
  if frozen:
    feats = [jax.lax.stop_gradient(f) for f in feats]
  last = feats[-1]
  pooled = pooled_features(last, token_valid_at(valid, last.shape[1], last.shape[2]))
  return [_unfold(f, b, v) for f in feats], _unfold(pooled, b, v), aux
