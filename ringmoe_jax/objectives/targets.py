"""Reconstruction targets per modality.

Axes: B batch, H/W pixels, Cmax padded input channels, Ko padded target channels.

Target kinds:
  'pixels': the tile's normalised pixels (the modality's own channels).
  'span':   total polarimetric power |HH|^2 + |HV|^2 + |VH|^2 + |VV|^2 of a quad-pol complex
            tile (channels HH.re, HH.im, HV.re, HV.im, VH.re, VH.im, VV.re, VV.im, physical
            units), in dB, standardised per image over valid pixels (RingMoE's physics target).
  'span_complex': 9 channels: the span (channel 0, as 'span') plus the 8 complex channels
            (1..8, normalised), the latter scored phase-invariantly (`physics.
            phase_invariant_complex_loss`), not by L1.
  'reflectance': optical / MS in physical reflectance divided by `physics.reflectance_unit`
            (the tile's calibrated values, one scale for every sensor, unlike the per-sensor
            standardised 'pixels'); the decoder predicts reflectance in that unit.
  'log_intensity': SAR-L2: the decoder predicts log backscatter (natural log, linear
            intensity); scored by the Gamma NLL of the observed intensity, no pixel target.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

TARGET_KINDS = ("pixels", "span", "span_complex", "reflectance", "log_intensity")
# Modalities each kind makes sense for (None: any).
KIND_MODALITIES = {"pixels": None, "span": ("sar_l1",), "span_complex": ("sar_l1",),
                   "reflectance": ("opt", "ms"), "log_intensity": ("sar_l2",)}


def target_channels(kind: str, in_channels: int) -> int:
  """Decoder output channels for a modality of `in_channels` with target `kind`."""
  if kind in ("pixels", "reflectance", "log_intensity"):
    return in_channels
  if kind in ("span", "span_complex"):
    if in_channels != 8:
      raise ValueError(f"target 'span' needs 8 quad-pol channels (re/im of HH, HV, VH, VV), "
                       f"got {in_channels}")
    return 1 if kind == "span" else 9
  raise ValueError(f"unknown target kind {kind!r}; expected one of {TARGET_KINDS}")


def span_db(raw: jax.Array, valid: jax.Array) -> jax.Array:
  """raw (B, H, W, 8) complex quad-pol -> (B, H, W, 1) per-image standardised span in dB."""
  span = jnp.sum(jnp.square(raw[..., :8].astype(jnp.float32)), axis=-1)
  db = 10.0 * jnp.log10(span + 1e-6)
  v = valid.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(v, axis=(1, 2), keepdims=True), 1.0)
  mu = jnp.sum(db * v, axis=(1, 2), keepdims=True) / n
  var = jnp.sum(jnp.square(db - mu) * v, axis=(1, 2), keepdims=True) / n
  return ((db - mu) * jax.lax.rsqrt(var + 1e-6) * v)[..., None]


def modality_target(kind: str, c: int, pixels: jax.Array, raw: jax.Array, valid: jax.Array,
                    reflectance_unit: float = 0.1) -> jax.Array:
  """Target (B, H, W, target_channels(kind, c)) of every tile as if it were of this modality.

  For 'log_intensity' there is no pixel target: zeros (the Gamma NLL uses raw intensity)."""
  if kind == "pixels":
    return pixels[..., :c].astype(jnp.float32)
  if kind == "span":
    return span_db(raw, valid)
  if kind == "span_complex":
    return jnp.concatenate([span_db(raw, valid), pixels[..., :8].astype(jnp.float32)], -1)
  if kind == "reflectance":
    return raw[..., :c].astype(jnp.float32) / reflectance_unit
  if kind == "log_intensity":
    return jnp.zeros(pixels.shape[:3] + (c,), jnp.float32)
  raise ValueError(f"unknown target kind {kind!r}; expected one of {TARGET_KINDS}")


def build_targets(kinds: Sequence[str], in_channels: Sequence[int], pixels: jax.Array,
                  raw: jax.Array, valid: jax.Array, modality: jax.Array,
                  max_out: int, reflectance_unit: float = 0.1) -> jax.Array:
  """Per-tile targets (B, H, W, Ko), each tile by its own modality's kind, zero-padded."""
  out = jnp.zeros(pixels.shape[:3] + (max_out,), jnp.float32)
  for m, (kind, c) in enumerate(zip(kinds, in_channels)):
    t = modality_target(kind, c, pixels, raw, valid, reflectance_unit)
    t = jnp.pad(t, ((0, 0), (0, 0), (0, 0), (0, max_out - t.shape[-1])))
    out = jnp.where((modality == m)[:, None, None, None], t, out)
  return out
