"""Building blocks shared by the heads: conv / linear with logical names, conv-norm-act,
bilinear resize, a light FPN.

Axes: B batch, h/w a level's grid, C channels.

Normalisation is a LayerNorm over the channels of each pixel ("LN2d", as in ConvNeXt and the
ViTDet simple FPN), not mmseg's BatchNorm: it uses no batch statistics, so a head is
deterministic, has no mutable state to keep in sync across devices or checkpoints, and gives a
tile the same output whatever else is in the batch. It is also independent of the map's size
(GroupNorm normalises over the pixels too), so it stays well defined on the 1x1 map of the PPM's
global bin and gives the same numbers for a tile in sliding-window inference.

Everything computes in float32: heads are small next to the encoder, and the dense per-pixel
softmaxes (bins, tokenizer, logits) are where bf16 rounding would hurt.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.parallel.sharding import constrain_batch

F32 = jnp.float32


def conv(cin: int, cout: int, k: int, *, rngs: nnx.Rngs, use_bias: bool = True,
         names=("embed", "mlp"), kernel_init=None) -> nnx.Conv:
  """k x k conv, SAME padding, kernel (k, k, cin, cout) named (None, None, *names).

  The spatial taps are never split; the channel dims take the logical names (a dim that the
  mesh does not divide stays replicated, so any width is safe).
  """
  init = kernel_init or nnx.initializers.kaiming_normal()  # He init: a ReLU follows
  return nnx.Conv(cin, cout, (k, k), padding="SAME", use_bias=use_bias, dtype=F32,
                  param_dtype=F32, rngs=rngs,
                  kernel_init=nnx.with_partitioning(init, (None, None) + tuple(names)),
                  bias_init=nnx.with_partitioning(nnx.initializers.zeros, (names[1],)))


def linear(din: int, dout: int, *, rngs: nnx.Rngs, names=("embed", "mlp"),
           kernel_init=None, use_bias: bool = True) -> nnx.Linear:
  """Linear din -> dout, kernel named `names`, bias named names[1]."""
  init = kernel_init or nnx.initializers.lecun_normal()
  return nnx.Linear(din, dout, use_bias=use_bias, dtype=F32, param_dtype=F32, rngs=rngs,
                    kernel_init=nnx.with_partitioning(init, tuple(names)),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, (names[1],)))


def layer_norm(dim: int, *, rngs: nnx.Rngs, name: str | None = "mlp") -> nnx.LayerNorm:
  """LayerNorm over the last (channel) axis; scale / bias named like the layer feeding it."""
  return nnx.LayerNorm(dim, epsilon=1e-5, dtype=F32, param_dtype=F32, rngs=rngs,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones, (name,)),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros, (name,)))


class ConvNormAct(nnx.Module):
  """conv k x k (no bias: the norm has one) -> channel LayerNorm -> ReLU.

  (B, h, w, cin) -> (B, h, w, cout), float32.
  """

  def __init__(self, cin: int, cout: int, k: int = 1, *, rngs: nnx.Rngs):
    self.conv = conv(cin, cout, k, use_bias=False, rngs=rngs)
    self.norm = layer_norm(cout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.norm(self.conv(x.astype(F32))))
    # A channel-split kernel would leave the activation channel-sharded; pin it back to the
    # batch axes (as the encoder does) so XLA never has to replicate it to re-shard.
    return constrain_batch(y)


def resize(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear (B, h, w, C) -> (B, H, W, C), half-pixel centres (mmseg's align_corners=False).

  A no-op when the size already matches. Shrinking (a 6x6 PPM bin on a 1x1 map) is
  antialiased by jax.image.resize, i.e. averages, which is what a down-sample should do.
  """
  x = x.astype(F32)
  size = tuple(int(s) for s in size)
  if x.shape[1:3] == size:
    return x
  return jax.image.resize(x, (x.shape[0],) + size + (x.shape[-1],), method="bilinear")


class LightFPN(nnx.Module):
  """The 4 levels fused on the stride-4 grid: per-level 1x1 ConvNormAct to `channels`,
  bilinear up-sampling to level 0's grid, sum, one 3x3 ConvNormAct.

  feats: [(B, H/4, W/4, dims[0]), ..., (B, H/32, W/32, dims[3])] -> (B, H/4, W/4, channels).

  The sum (not UperNet's concat + top-down path) keeps it light: one lateral per level and one
  3x3 conv at the finest grid, enough for heads whose own stage (tokens, bins) does the work.
  """

  def __init__(self, dims: Sequence[int], channels: int, *, rngs: nnx.Rngs):
    self.dims = tuple(dims)
    self.laterals = nnx.List([ConvNormAct(d, channels, 1, rngs=rngs) for d in self.dims])
    self.smooth = ConvNormAct(channels, channels, 3, rngs=rngs)

  def __call__(self, feats: Sequence[jax.Array]) -> jax.Array:
    if len(feats) != len(self.dims):
      raise ValueError(f"{len(feats)} levels given, the head was built for {len(self.dims)}")
    size = feats[0].shape[1:3]
    fused = sum(resize(lat(f), size) for lat, f in zip(self.laterals, feats))
    return self.smooth(fused)
