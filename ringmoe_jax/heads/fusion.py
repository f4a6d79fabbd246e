"""Fusion of co-registered views (optical + SAR of one place) into one feature pyramid.

Axes: B batch, V views, h/w a level's grid, C a level's channels.

`models/features.encode_views` returns per-level (B, V, h, w, C) maps; a segmentation head wants
(B, h, w, C). Per level, the V maps are concatenated along the channels and mixed by a 1x1 conv
(V C -> C): each view keeps its own weights (an optical and a SAR channel mean different
things), and the fused map has the encoder's width, so any head built for the encoder's dims
runs on it unchanged.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringmoe_jax.heads.layers import F32, linear


def _mean_of_views_init(num_views: int):
  """Kernel (V C, C) = [I / V; ...; I / V]: the fused map starts as the mean of the views, so
  the head sees features with the encoder's statistics from step 0 (a random mix of V C
  channels would not be), and every entry still gets its own gradient."""
  def init(key, shape, dtype=F32):
    del key
    vc, c = shape
    assert vc == num_views * c, (shape, num_views)
    return jnp.asarray(np.tile(np.eye(c, dtype=np.float32) / num_views, (num_views, 1)), dtype)
  return init


class ViewFusion(nnx.Module):
  """[(B, V, h_i, w_i, C_i)] per level -> [(B, h_i, w_i, C_i)], float32.

  num_views == 1: the identity (the single view's maps, squeezed), no parameters.
  """

  def __init__(self, dims: Sequence[int], num_views: int, *, rngs: nnx.Rngs):
    self.dims = tuple(dims)
    self.num_views = int(num_views)
    if self.num_views < 1:
      raise ValueError(f"num_views={num_views}")
    if self.num_views == 1:
      self.mix = None
    else:
      # (V C) in -> C out: the wide input dim takes 'mlp', the output 'embed' (the encoder
      # features' name), like PatchMerging's 4C -> 2C reduction.
      self.mix = nnx.List([
          linear(self.num_views * d, d, rngs=rngs, names=("mlp", "embed"),
                 kernel_init=_mean_of_views_init(self.num_views))
          for d in self.dims])

  def __call__(self, feats: Sequence[jax.Array]) -> list[jax.Array]:
    if len(feats) != len(self.dims):
      raise ValueError(f"{len(feats)} levels given, the fusion was built for {len(self.dims)}")
    for f, d in zip(feats, self.dims):
      if f.ndim != 5 or f.shape[1] != self.num_views or f.shape[-1] != d:
        raise ValueError(f"level of shape {f.shape}; expected (B, {self.num_views}, h, w, {d})")
    if self.mix is None:
      return [f[:, 0].astype(F32) for f in feats]
    out = []
    for f, mix in zip(feats, self.mix):
      b, v, h, w, c = f.shape
      # Channel order view-major (view 0's C, then view 1's ...), matching the kernel's rows.
      x = f.astype(F32).transpose(0, 2, 3, 1, 4).reshape(b, h, w, v * c)
      out.append(mix(x))
    return out
