"""Per-modality patch embedding: conv p x p stride p + LayerNorm, one per modality.

Axes: B batch, H/W pixels, Cmax padded input channels, Cm channels of modality m, p patch size,
h = H/p, w = W/p, D embed dim, M modalities.

Tiles of different modalities share one padded pixel tensor (B, H, W, Cmax); every tile is
embedded by its own modality's kernel, chosen from its sensor tag. All M embeddings are computed
and one is selected per tile: the patch embedding is <1% of the encoder's FLOPs, and this keeps
shapes static for any mix of modalities.

Two embeddings (`model.patch_embed`):
  'fixed'    (the paper) one p*p*Cm -> D kernel per modality; a tile's channels past Cm are
             ignored, a missing band can only be zero-filled.
  'spectral' (issue 16) per modality a hypernetwork (MLP F -> H -> H -> p*p*D) generates each
             input channel's p*p -> D kernel from the band's description (a constant table
             built from the sensor registry, `sensor_tables.band_table`: wavelength / bandwidth
             Fourier features, radar frequency, polarisation, component). A tile's embedding is
             the MEAN of its present channels' embeddings (channel mask = the sensor's channels
             x the batch's "channels"); absent channels contribute nothing, whatever their
             pixels hold. The mean (not the sum) keeps the pre-norm scale, and so the weight of
             the bias, the same for 1 or 13 bands, and makes a subset's embedding the average
             of the bands it has (with correlated bands, an estimate of the full set's).
Both end in the per-modality bias + LayerNorm; their parameter trees share those names.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringmoe_jax.objectives.sensor_tables import BandTable, take_fill
from ringmoe_jax.parallel.sharding import constrain_batch, constrain_replicated

PATCH_EMBEDS = ("fixed", "spectral")
HYPER_HIDDEN = 128  # hidden width of the spectral kernel generator


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
    _init_bias_norm(self, len(self.channels), dim, param_dtype)

  def __call__(self, pixels: jax.Array, modality: jax.Array, **_) -> jax.Array:
    p, dt = self.patch_size, self.dtype
    out = None
    for m, c in enumerate(self.channels):
      e = jnp.einsum("bhwk,kd->bhwd", patchify(pixels[..., :c].astype(dt), p),
                     self.kernels[m][...].astype(dt))
      sel = (modality == m)[:, None, None, None]
      out = jnp.where(sel, e, 0 if out is None else out)
    return _bias_norm(self, out, modality, len(self.channels))


def _init_bias_norm(module, m: int, dim: int, param_dtype) -> None:
  module.bias = nnx.Param(jnp.zeros((m, dim), param_dtype), out_sharding=(None, "embed"))
  module.norm_scale = nnx.Param(jnp.ones((m, dim), param_dtype), out_sharding=(None, "embed"))
  module.norm_bias = nnx.Param(jnp.zeros((m, dim), param_dtype), out_sharding=(None, "embed"))


def _bias_norm(module, out: jax.Array, modality: jax.Array, m: int) -> jax.Array:
  """(B, h, w, D) pre-activations + the tile's modality bias, then its modality's LayerNorm."""
  onehot = jax.nn.one_hot(modality, m, dtype=jnp.float32)  # (B, M)
  # The (M, D) tables are split over `fsdp` along D: pin the (B, D) rows to the batch axes
  # (without it, 3 involuntary full rematerialisations at data=2, fsdp=64, expert=4).
  bias, scale, shift = (
      constrain_batch(jnp.einsum("bm,md->bd", onehot, v[...].astype(jnp.float32)))
      for v in (module.bias, module.norm_scale, module.norm_bias))
  x = out.astype(jnp.float32) + bias[:, None, None]
  mu = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.var(x, axis=-1, keepdims=True)
  x = (x - mu) * jax.lax.rsqrt(var + 1e-5)
  return (x * scale[:, None, None] + shift[:, None, None]).astype(module.dtype)


class SpectralPatchEmbed(nnx.Module):
  """(B, H, W, C) pixels + (B,) modality + (B,) sensor ids [+ (B, C) channel mask] ->
  (B, h, w, D); each channel's kernel generated from its band description (module docstring).

  Axes besides the module's: S sensors of the band table, Ct its channels, F descriptor
  features, H hidden width, k = p*p.
  """

  def __init__(self, num_modalities: int, bands: BandTable, patch_size: int, dim: int, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.bands = bands  # static (hashable): part of the graph definition, not a parameter
    self.num_modalities = num_modalities
    self.patch_size = patch_size
    self.dtype = dtype
    m, f, hid, k = num_modalities, bands.features.shape[-1], HYPER_HIDDEN, patch_size ** 2
    init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    self.hyper_w1 = nnx.Param(init(rngs.params(), (m, f, hid), param_dtype),
                              out_sharding=(None, None, None))
    self.hyper_b1 = nnx.Param(jnp.zeros((m, hid), param_dtype), out_sharding=(None, None))
    self.hyper_w2 = nnx.Param(init(rngs.params(), (m, hid, hid), param_dtype),
                              out_sharding=(None, None, None))
    self.hyper_b2 = nnx.Param(jnp.zeros((m, hid), param_dtype), out_sharding=(None, None))
    out_init = nnx.initializers.lecun_normal(in_axis=1, out_axis=(2, 3), batch_axis=(0,))
    # Generated kernels are divided by p: the k = p*p taps sum unit-variance pixels to O(1).
    self.hyper_w3 = nnx.Param(out_init(rngs.params(), (m, hid, k, dim), param_dtype),
                              out_sharding=(None, None, None, "embed"))
    # The modality's band-independent kernel (the generator's output bias).
    self.hyper_b3 = nnx.Param(jnp.zeros((m, k, dim), param_dtype),
                              out_sharding=(None, None, "embed"))
    _init_bias_norm(self, m, dim, param_dtype)

  def kernels(self) -> jax.Array:
    """(S, Ct, k, D) float32 kernel of every (sensor, channel) of the table; 0 where absent."""
    t = self.bands
    s, ct, f = t.features.shape
    feats = jnp.asarray(t.features.reshape(s * ct, f))
    row_mod = np.repeat(t.modality, ct)
    out = jnp.zeros((s * ct,) + self.hyper_b3.shape[1:], jnp.float32)
    for m in range(self.num_modalities):
      rows = np.flatnonzero(row_mod == m)  # static: rows of this modality's sensors
      if not len(rows):
        continue
      h = jax.nn.gelu(feats[rows] @ self.hyper_w1[m].astype(jnp.float32) + self.hyper_b1[m])
      h = jax.nn.gelu(h @ self.hyper_w2[m].astype(jnp.float32) + self.hyper_b2[m])
      kern = jnp.einsum("nh,hkd->nkd", h, self.hyper_w3[m].astype(jnp.float32)) + self.hyper_b3[m]
      out = out.at[rows].set(kern / self.patch_size)
    present = jnp.asarray(t.present.reshape(s * ct))[:, None, None]
    return constrain_replicated((out * present).reshape((s, ct) + out.shape[1:]))

  def channel_weights(self, sensor: jax.Array, c: int,
                      channels: jax.Array | None = None) -> jax.Array:
    """(B, c) float32: 1 / n for each present channel of the tile (n = present count), else 0."""
    present = _fit_channels(take_fill(self.bands.present, sensor, 0.0), c)
    if channels is not None:
      present = present * (channels[:, :c].astype(jnp.float32) > 0)
    n = jnp.sum(present, axis=-1, keepdims=True)
    return present / jnp.maximum(n, 1.0)

  def __call__(self, pixels: jax.Array, modality: jax.Array, *, sensor: jax.Array | None = None,
               channels: jax.Array | None = None) -> jax.Array:
    if sensor is None:
      raise ValueError("model.patch_embed='spectral' needs the tiles' sensor ids (sensor=)")
    p, dt = self.patch_size, self.dtype
    b, hh, ww, c = pixels.shape
    w = self.channel_weights(sensor, c, channels)  # (B, C)
    kern = _fit_channels(take_fill(self.kernels(), sensor, 0.0), c)  # (B, C, k, D)
    kern = constrain_batch(kern * w[:, :, None, None])
    # An absent channel's pixels never enter, not even as NaN * 0.
    x = jnp.where(w[:, None, None, :] > 0, pixels, 0).astype(dt)
    x = x.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 5, 2, 4)  # (B,h,w,C,p,p)
    x = x.reshape(b, hh // p, ww // p, c * p * p)
    out = jnp.einsum("bhwk,bkd->bhwd", x, kern.reshape(b, c * p * p, -1).astype(dt))
    return _bias_norm(self, out, modality, self.num_modalities)


def _fit_channels(x: jax.Array, c: int) -> jax.Array:
  """Axis 1 (table channels Ct) cut or zero-padded to the pixel tensor's c channels."""
  ct = x.shape[1]
  if ct >= c:
    return x[:, :c]
  return jnp.pad(x, [(0, 0), (0, c - ct)] + [(0, 0)] * (x.ndim - 2))
