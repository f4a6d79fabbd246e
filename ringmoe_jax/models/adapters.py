"""Convpass adapters (Jie & Deng 2022, "Convolutional Bypasses Are Better Vision Transformer
Adapters") for fine-tuning mode 'adapter'.

Axes: B batch, h/w token grid, C block width, d adapter width (model.adapter_dim).

A bypass: x (B, h, w, C) -> Linear C->d -> 3x3 conv on the token grid (d->d, SAME) -> GELU ->
Linear d->C, initialised to ZERO, times `scale`. The zero up-projection makes a fresh adapter an
exact no-op, so fine-tuning starts from the pre-trained function. The 3x3 conv gives the bypass
the local spatial prior that plain (LoRA / bottleneck) adapters lack; why Convpass is our choice
over LoRA for dense remote-sensing tasks. Every parameter's path contains 'adapter' (the
fine-tuning modes select trainable parameters by it).

In a SwinV2 res-post-norm block (models/swin.SwinMoEBlock), one bypass runs in parallel with the
attention and one with the MoE FFN:
  x = x + LN(attn(x)) + s * A1(x);   x = x + LN(moe(x)) + s * A2(x).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Convpass(nnx.Module):
  """(B, h, w, C) -> (B, h, w, C) bypass; exactly 0 at initialisation."""

  def __init__(self, dim: int, hidden: int, scale: float = 1.0, *, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.scale = float(scale)
    self.adapter_down = nnx.Linear(
        dim, hidden, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), ("embed", None)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, (None,)))
    self.adapter_conv = nnx.Conv(
        hidden, hidden, (3, 3), padding="SAME", param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(),
                                          (None, None, None, None)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, (None,)))
    self.adapter_up = nnx.Linear(
        hidden, dim, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.zeros, (None, "embed")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.adapter_down(x.astype(jnp.float32))
    y = jax.nn.gelu(self.adapter_conv(y))
    return (self.scale * self.adapter_up(y)).astype(x.dtype)
