"""Reconstruction targets per modality.

Axes: B batch, H/W pixels, Cmax padded input channels, Ko padded target channels.

Target kinds:
  'pixels': the tile's normalised pixels (the modality's own channels).
  'span':   total polarimetric power |HH|^2 + |HV|^2 + |VH|^2 + |VV|^2 of a quad-pol complex
            tile (channels HH.re, HH.im, HV.re, HV.im, VH.re, VH.im, VV.re, VV.im, physical
            units), in dB, standardised per image over valid pixels (RingMoE's physics target).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

TARGET_KINDS = ("pixels", "span")


def target_channels(kind: str, in_channels: int) -> int:
  if kind == "pixels":
    return in_channels
  if kind == "span":
    if in_channels != 8:
      raise ValueError(f"target 'span' needs 8 quad-pol channels (re/im of HH, HV, VH, VV), "
                       f"got {in_channels}")
    return 1
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


def build_targets(kinds: Sequence[str], in_channels: Sequence[int], pixels: jax.Array,
                  raw: jax.Array, valid: jax.Array, modality: jax.Array,
                  max_out: int) -> jax.Array:
  """Per-tile targets (B, H, W, Ko), each tile by its own modality's kind, zero-padded."""
  out = jnp.zeros(pixels.shape[:3] + (max_out,), jnp.float32)
  for m, (kind, c) in enumerate(zip(kinds, in_channels)):
    if kind == "pixels":
      t = pixels[..., :c].astype(jnp.float32)
    else:
      t = span_db(raw, valid)
    t = jnp.pad(t, ((0, 0), (0, 0), (0, 0), (0, max_out - t.shape[-1])))
    out = jnp.where((modality == m)[:, None, None, None], t, out)
  return out
