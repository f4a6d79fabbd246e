"""UperNet semantic segmentation head (mmseg's UPerHead, with channel LayerNorm for BatchNorm).

Axes: B batch, H/W input pixels, h_i/w_i level i's grid (stride 4 * 2^i), C_i = dims[i],
Ch = channels, S a pool scale, K classes.

    PPM:  level 3 -> adaptive average pool to S x S for S in pool_scales -> 1x1 ConvNormAct
          -> bilinear back to (h3, w3); concat with level 3 -> 3x3 ConvNormAct -> Ch.
    FPN:  1x1 ConvNormAct laterals on levels 0..2, the PPM output as level 3's; top-down sum
          (each coarser level up-sampled onto the next finer); 3x3 ConvNormAct on levels 0..2.
    Fuse: all 4 levels up-sampled to (h0, w0) = (H/4, W/4), concat (4 Ch) -> 3x3 ConvNormAct
          -> 1x1 conv to K.

Norms are per-pixel LayerNorms (see layers.py: no batch statistics, so no mutable state and the
same result on any device split). mmseg's Dropout2d(0.1) before the classifier and its
auxiliary FCN head on stage 3 are left to the task (the latter is one ConvNormAct + conv on
feats[2]).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringmoe_jax.heads.layers import F32, ConvNormAct, conv, resize


def adaptive_pool_matrix(n: int, out: int) -> np.ndarray:
  """(out, n) averaging matrix of PyTorch's adaptive pooling along one axis.

  Bin i covers [floor(i n / out), ceil((i + 1) n / out)): bins may overlap when out does not
  divide n, and each covers >= 1 element even when out > n (a 6x6 pool of a 1x1 map repeats it).
  """
  m = np.zeros((out, n), np.float32)
  for i in range(out):
    lo, hi = (i * n) // out, -((-(i + 1) * n) // out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x: jax.Array, out: int | tuple[int, int]) -> jax.Array:
  """(B, h, w, C) -> (B, oh, ow, C): the mean of each adaptive bin, for any h, w, oh, ow.

  A rectangular bin's mean is the row-mean of its column-means, so the pooling is two small
  static matrices applied along h and w: static shapes, exact (no integral-image cancellation
  of large sums), and plain matmuls for XLA and autodiff.
  """
  oh, ow = (out, out) if isinstance(out, int) else out
  ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], oh))
  pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], ow))
  return jnp.einsum("ih,bhwc,jw->bijc", ph, x.astype(F32), pw,
                    precision=jax.lax.Precision.HIGHEST)


def upsample_logits(logits: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear (B, h, w, K) -> (B, H, W, K) float32, e.g. the head's stride-4 logits to the
  label grid before the per-pixel loss (mmseg resizes logits, never labels)."""
  return resize(logits, size)


class PPM(nnx.Module):
  """Pyramid pooling on the last level: (B, h, w, C) -> (B, h, w, C + len(scales) Ch)."""

  def __init__(self, dim: int, channels: int, scales: Sequence[int], *, rngs: nnx.Rngs):
    self.scales = tuple(int(s) for s in scales)
    self.convs = nnx.List([ConvNormAct(dim, channels, 1, rngs=rngs) for _ in self.scales])

  def __call__(self, x: jax.Array) -> jax.Array:
    size = x.shape[1:3]
    outs = [x.astype(F32)]
    for s, c in zip(self.scales, self.convs):
      outs.append(resize(c(adaptive_avg_pool(x, s)), size))
    return jnp.concatenate(outs, axis=-1)


class UperNetHead(nnx.Module):
  """feats [(B, H/4, W/4, C0), (B, H/8, W/8, C1), (B, H/16, W/16, C2), (B, H/32, W/32, C3)]
  -> logits (B, H/4, W/4, K), float32. `upsample_logits` takes them to (H, W)."""

  def __init__(self, dims: Sequence[int], channels: int, num_classes: int,
               pool_scales: Sequence[int] = (1, 2, 3, 6), *, rngs: nnx.Rngs):
    self.dims = tuple(dims)
    if len(self.dims) < 2:
      raise ValueError(f"UperNet needs >= 2 levels, got dims={self.dims}")
    self.ppm = PPM(self.dims[-1], channels, pool_scales, rngs=rngs)
    self.bottleneck = ConvNormAct(self.dims[-1] + len(tuple(pool_scales)) * channels, channels,
                                  3, rngs=rngs)
    self.laterals = nnx.List([ConvNormAct(d, channels, 1, rngs=rngs) for d in self.dims[:-1]])
    self.fpn_convs = nnx.List([ConvNormAct(channels, channels, 3, rngs=rngs)
                               for _ in self.dims[:-1]])
    self.fuse = ConvNormAct(len(self.dims) * channels, channels, 3, rngs=rngs)
    # mmseg's normal(std=0.01) classifier: near-uniform first predictions without a dead
    # (all-zero) gradient into the decoder.
    self.cls = conv(channels, num_classes, 1, rngs=rngs, names=("embed", None),
                    kernel_init=nnx.initializers.normal(0.01))

  def __call__(self, feats: Sequence[jax.Array]) -> jax.Array:
    if len(feats) != len(self.dims):
      raise ValueError(f"{len(feats)} levels given, the head was built for {len(self.dims)}")
    lats = [lat(f) for lat, f in zip(self.laterals, feats[:-1])]
    lats.append(self.bottleneck(self.ppm(feats[-1])))
    for i in range(len(lats) - 1, 0, -1):  # top-down: coarse context into every finer level
      lats[i - 1] = lats[i - 1] + resize(lats[i], lats[i - 1].shape[1:3])
    outs = [c(x) for c, x in zip(self.fpn_convs, lats[:-1])] + [lats[-1]]
    size = outs[0].shape[1:3]
    fused = self.fuse(jnp.concatenate([resize(o, size) for o in outs], axis=-1))
    return self.cls(fused)
