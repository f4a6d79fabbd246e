"""Per-modality patch embedding: conv p x p stride p + LayerNorm, one per modality.

Axes: B batch, H/W pixels, Cmax padded input channels, Cm channels of modality m, p patch size,
h = H/p, w = W/p, D embed dim, M modalities.

Tiles of different modalities share one padded pixel tensor (B, H, W, Cmax); every tile is
embedded by its own modality's kernel, chosen from its sensor tag. All M embeddings are computed
and one is selected per tile: the patch embedding is <1% of the encoder's FLOPs, and this keeps
shapes static for any mix of modalities.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.parallel.sharding import constrain_batch


def patchify(x: jax.Array, p: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/p, W/p, p*p*C), patch pixels in (row, col, channel) order."""
  b, hh, ww, c = x.shape
  x = x.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, hh // p, ww // p, p * p * c)


class ModalityPatchEmbed(nnx.Module):
  """(B, H, W, Cmax) pixels + (B,) modality ids -> (B, h, w, D) normalised embeddings."""

  def __init__(self, channels: Sequence[int], patch_size: int, dim: int, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.channels = tuple(int(c) for c in channels)
    self.patch_size = patch_size
    self.dtype = dtype
    self.kernels = nnx.List([
        nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (patch_size * patch_size * c, dim),
                                                  param_dtype), out_sharding=(None, "embed"))
        for c in self.channels])
    m = len(self.channels)
    self.bias = nnx.Param(jnp.zeros((m, dim), param_dtype), out_sharding=(None, "embed"))
    self.norm_scale = nnx.Param(jnp.ones((m, dim), param_dtype), out_sharding=(None, "embed"))
    self.norm_bias = nnx.Param(jnp.zeros((m, dim), param_dtype), out_sharding=(None, "embed"))

  def __call__(self, pixels: jax.Array, modality: jax.Array) -> jax.Array:
    p, dt = self.patch_size, self.dtype
    out = None
    for m, c in enumerate(self.channels):
      e = jnp.einsum("bhwk,kd->bhwd", patchify(pixels[..., :c].astype(dt), p),
                     self.kernels[m][...].astype(dt))
      sel = (modality == m)[:, None, None, None]
      out = jnp.where(sel, e, 0 if out is None else out)
    onehot = jax.nn.one_hot(modality, len(self.channels), dtype=jnp.float32)  # (B, M)
    # The (M, D) tables are split over `fsdp` along D: pin the (B, D) rows to the batch axes
    # (without it, 3 involuntary full rematerialisations at data=2, fsdp=64, expert=4).
    bias, scale, shift = (
        constrain_batch(jnp.einsum("bm,md->bd", onehot, v[...].astype(jnp.float32)))
        for v in (self.bias, self.norm_scale, self.norm_bias))
    x = out.astype(jnp.float32) + bias[:, None, None]
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    x = (x - mu) * jax.lax.rsqrt(var + 1e-5)
    return (x * scale[:, None, None] + shift[:, None, None]).astype(dt)
