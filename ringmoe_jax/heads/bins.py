"""Adaptive-bins depth / height head (AdaBins, Binsformer) and its losses.

Axes: B batch, H/W label pixels, h/w the stride-4 grid (H/4, W/4), Ch channels, NB bins.

    LightFPN (4 levels -> (B, h, w, Ch))
    bins:    global mean of the fused map (B, Ch) -> MLP -> softmax over NB -> widths (sum 1,
             floored) -> centres c_k = min + (max - min) (cumsum(w)_k - w_k / 2)   (B, NB)
    pixels:  1x1 conv -> softmax over NB per pixel -> depth = sum_k p_k c_k        (B, h, w)

The depth is a convex combination of centres that lie strictly inside (min, max), so it never
leaves the range, whatever the weights; per-image widths let a scene spend its bins where its
depths are (AdaBins' point: an urban scene and open sea want very different bins).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.heads.layers import F32, LightFPN, conv, linear

# Every bin keeps at least this share (before renormalising) of the range, as AdaBins' eps:
# no centre collapses onto its neighbour, so the centres stay strictly increasing.
MIN_WIDTH_SHARE = 1e-3


class AdaptiveBinsHead(nnx.Module):
  """feats (4 levels) -> depth (B, H/4, W/4) in (min_depth, max_depth), centres (B, NB)
  increasing; float32. Up-sample depth[..., None] with `upernet.upsample_logits` if needed."""

  def __init__(self, dims: Sequence[int], channels: int, num_bins: int = 64,
               min_depth: float = 1e-3, max_depth: float = 100.0, *, rngs: nnx.Rngs):
    if not 0 <= min_depth < max_depth:
      raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
    self.num_bins = int(num_bins)
    self.min_depth, self.max_depth = float(min_depth), float(max_depth)
    self.fpn = LightFPN(dims, channels, rngs=rngs)
    self.bins_fc1 = linear(channels, channels, rngs=rngs, names=("embed", "mlp"))
    # Zero-init: the first bins are uniform over the range (a sane prior) and move from there.
    self.bins_fc2 = linear(channels, self.num_bins, rngs=rngs, names=("mlp", None),
                           kernel_init=nnx.initializers.zeros)
    # Small init: near-uniform pixel probabilities, so the first depths sit mid-range.
    self.pixel_logits = conv(channels, self.num_bins, 1, rngs=rngs, names=("embed", None),
                             kernel_init=nnx.initializers.normal(0.01))

  def centres(self, pooled: jax.Array) -> jax.Array:
    """Pooled features (B, Ch) -> bin centres (B, NB), increasing, in (min, max)."""
    w = jax.nn.softmax(self.bins_fc2(jax.nn.gelu(self.bins_fc1(pooled))), axis=-1)
    w = (w + MIN_WIDTH_SHARE) / (1.0 + self.num_bins * MIN_WIDTH_SHARE)
    span = self.max_depth - self.min_depth
    return self.min_depth + span * (jnp.cumsum(w, axis=-1) - 0.5 * w)

  def __call__(self, feats: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    x = self.fpn([f.astype(F32) for f in feats])                   # (B, h, w, Ch)
    centres = self.centres(x.mean(axis=(1, 2)))                    # (B, NB)
    prob = jax.nn.softmax(self.pixel_logits(x), axis=-1)           # (B, h, w, NB)
    depth = jnp.einsum("bhwk,bk->bhw", prob, centres)
    return depth, centres


def _masked_mean(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean of x over mask (0 where the mask is empty) and the count."""
  n = mask.sum()
  return jnp.where(mask, x, 0.0).sum() / jnp.maximum(n, 1), n


def silog_loss(pred: jax.Array, target: jax.Array, valid: jax.Array,
               lam: float = 0.85) -> jax.Array:
  """Scale-invariant log loss, 10 sqrt(mean(d^2) - lam mean(d)^2), d = log pred - log target,
  over the valid pixels of the whole batch (the depth toolbox / AdaBins convention, weight 10).

  pred, target, valid: (B, H, W) (any equal shapes); a pixel counts where valid is true and
  both depths are finite and > 0 (a log needs it: nDSM ground at 0 m cannot enter a log loss).
  No valid pixel: 0. The loss and its gradient are finite everywhere (invalid pixels enter no
  log, and the square root has gradient 0 at 0, e.g. pred == target).
  """
  pred, target = pred.astype(F32), target.astype(F32)
  mask = (valid.astype(bool) & jnp.isfinite(pred) & jnp.isfinite(target)
          & (pred > 0) & (target > 0))
  # Double where: an invalid pixel's log(0) / log(NaN) must not reach the gradient either.
  d = jnp.log(jnp.where(mask, pred, 1.0)) - jnp.log(jnp.where(mask, target, 1.0))
  mean_d2, n = _masked_mean(d * d, mask)
  mean_d, _ = _masked_mean(d, mask)
  var = jnp.maximum(mean_d2 - lam * mean_d * mean_d, 0.0)  # >= (1 - lam) mean_d2 >= 0 exactly
  pos = (var > 0) & (n > 0)
  return jnp.where(pos, 10.0 * jnp.sqrt(jnp.where(pos, var, 1.0)), 0.0)


def l1_loss(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean |pred - target| over the valid pixels (valid and both finite); none valid: 0."""
  pred, target = pred.astype(F32), target.astype(F32)
  mask = valid.astype(bool) & jnp.isfinite(pred) & jnp.isfinite(target)
  err = jnp.abs(jnp.where(mask, pred, 0.0) - jnp.where(mask, target, 0.0))
  return _masked_mean(err, mask)[0]
