"""BIT-style change detection head (Chen et al., "Remote Sensing Image Change Detection with
Transformers"), on the feature pyramids of a before / after pair from one Siamese encoder.

Axes: B batch, h/w the stride-4 grid (H/4, W/4), N = h w pixels, Ch channels, L tokens per
image, T = 2 L tokens of the pair.

    per image:  LightFPN (4 levels -> (B, h, w, Ch)) -> tokenizer: a 1x1 conv gives L spatial
                attention maps, softmax over the N pixels, tokens = attention-weighted sums of
                the pixel features (B, L, Ch).
    pair:       tokens of both images + a positional embedding (per token index, shared by
                the two images) -> `depth` transformer encoder layers over the T tokens.
    per image:  `depth` decoder layers: the image's pixels query its own (context-rich) tokens
                (cross-attention + MLP), so each pixel gets the pair's context.
    pair:       |f_a - f_b| -> 3x3 ConvNormAct -> 1x1 conv -> logits (B, h, w, 2).

Everything is shared between the two images (Siamese), and the token positional embedding does
not say which image a token came from, so the encoder is equivariant to swapping the two token
sets and the decoders of a and b are the same function. With the absolute difference at the
end, the head is symmetric in the pair: logits(a, b) == logits(b, a). Change labels are
symmetric (changed or not, no direction), so this removes an order bias the data cannot
justify. (BIT's own positional embedding covers 2 L tokens and breaks the symmetry.)

Small on purpose: BIT's gain comes from the few-token context (L = 4, one encoder layer),
not from depth; the encoder features are already strong, and the per-pixel cost is the
decoder's N x L cross-attention, linear in N.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.heads.layers import F32, ConvNormAct, LightFPN, conv, layer_norm, linear


class Attention(nnx.Module):
  """Multi-head attention: queries (B, Nq, D), context (B, Nk, D) -> (B, Nq, D)."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    if dim % heads:
      raise ValueError(f"channels {dim} not divisible by heads {heads}")
    self.heads = heads
    self.q = linear(dim, dim, rngs=rngs, names=("embed", "heads"))
    self.k = linear(dim, dim, rngs=rngs, names=("embed", "heads"))
    self.v = linear(dim, dim, rngs=rngs, names=("embed", "heads"))
    self.out = linear(dim, dim, rngs=rngs, names=("heads", "embed"))

  def __call__(self, x: jax.Array, ctx: jax.Array) -> jax.Array:
    b, nq, d = x.shape
    split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, d // self.heads)
    y = jax.nn.dot_product_attention(split(self.q(x)), split(self.k(ctx)), split(self.v(ctx)))
    return self.out(y.reshape(b, nq, d))


class MLP(nnx.Module):
  """(..., D) -> (..., D): Linear D -> 2D, GELU, Linear 2D -> D (BIT's mlp_dim ~ 2 D)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.fc1 = linear(dim, 2 * dim, rngs=rngs, names=("embed", "mlp"))
    self.fc2 = linear(2 * dim, dim, rngs=rngs, names=("mlp", "embed"))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x)))


class EncoderLayer(nnx.Module):
  """Pre-norm self-attention + MLP over the pair's tokens (B, T, D) -> (B, T, D)."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    self.norm1 = layer_norm(dim, rngs=rngs, name="embed")
    self.attn = Attention(dim, heads, rngs=rngs)
    self.norm2 = layer_norm(dim, rngs=rngs, name="embed")
    self.mlp = MLP(dim, rngs=rngs)

  def __call__(self, t: jax.Array) -> jax.Array:
    n = self.norm1(t)
    t = t + self.attn(n, n)
    return t + self.mlp(self.norm2(t))


class DecoderLayer(nnx.Module):
  """Pixels (B, N, D) attend to one image's tokens (B, L, D) -> pixels (B, N, D).

  No pixel self-attention (as in BIT): N^2 would dominate at stride 4, and the tokens already
  carry the global context.
  """

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    self.norm_q = layer_norm(dim, rngs=rngs, name="embed")
    self.norm_kv = layer_norm(dim, rngs=rngs, name="embed")
    self.attn = Attention(dim, heads, rngs=rngs)
    self.norm2 = layer_norm(dim, rngs=rngs, name="embed")
    self.mlp = MLP(dim, rngs=rngs)

  def __call__(self, x: jax.Array, tokens: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm_q(x), self.norm_kv(tokens))
    return x + self.mlp(self.norm2(x))


class ChangeHead(nnx.Module):
  """feats_a, feats_b: the encoder's 4 levels [(B, H/4, W/4, C0), ..., (B, H/32, W/32, C3)] of
  the before and after image -> change logits (B, H/4, W/4, 2), float32, symmetric in (a, b)."""

  def __init__(self, dims: Sequence[int], channels: int, num_tokens: int = 4, depth: int = 1,
               heads: int = 4, *, rngs: nnx.Rngs):
    self.dims = tuple(dims)
    self.num_tokens = int(num_tokens)
    self.fpn = LightFPN(self.dims, channels, rngs=rngs)
    self.token_attn = conv(channels, self.num_tokens, 1, rngs=rngs, names=("embed", None))
    # Per token index, shared by both images (keeps the swap symmetry); small init as in ViT.
    self.token_pos = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (self.num_tokens, channels), F32),
        out_sharding=(None, "embed"))
    self.encoder = nnx.List([EncoderLayer(channels, heads, rngs=rngs) for _ in range(depth)])
    self.decoder = nnx.List([DecoderLayer(channels, heads, rngs=rngs) for _ in range(depth)])
    self.classifier = ConvNormAct(channels, channels, 3, rngs=rngs)
    self.cls = conv(channels, 2, 1, rngs=rngs, names=("embed", None),
                    kernel_init=nnx.initializers.normal(0.01))

  def tokenize(self, x: jax.Array) -> jax.Array:
    """Pixel features (B, h, w, D) -> tokens (B, L, D): L softmax-over-pixels attention maps."""
    b, h, w, d = x.shape
    attn = jax.nn.softmax(self.token_attn(x).reshape(b, h * w, self.num_tokens), axis=1)
    return jnp.einsum("bnl,bnd->bld", attn, x.reshape(b, h * w, d))

  def decode(self, x: jax.Array, tokens: jax.Array) -> jax.Array:
    """Pixels (B, h, w, D) + that image's tokens (B, L, D) -> (B, h, w, D)."""
    b, h, w, d = x.shape
    y = x.reshape(b, h * w, d)
    for layer in self.decoder:
      y = layer(y, tokens)
    return y.reshape(b, h, w, d)

  def __call__(self, feats_a: Sequence[jax.Array], feats_b: Sequence[jax.Array]) -> jax.Array:
    # One FPN pass over the pair stacked along the batch: the same weights, half the calls.
    b = feats_a[0].shape[0]
    x = self.fpn([jnp.concatenate([fa, fb], 0).astype(F32) for fa, fb in zip(feats_a, feats_b)])
    tokens = self.tokenize(x) + self.token_pos[...]                     # (2B, L, D)
    t = jnp.concatenate([tokens[:b], tokens[b:]], axis=1)               # (B, 2L, D)
    for layer in self.encoder:
      t = layer(t)
    l = self.num_tokens
    tokens = jnp.concatenate([t[:, :l], t[:, l:]], axis=0)              # (2B, L, D)
    y = self.decode(x, tokens)
    diff = jnp.abs(y[:b] - y[b:])
    return self.cls(self.classifier(diff))
