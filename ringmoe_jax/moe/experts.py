"""Expert FFNs stacked along an expert axis: (E, C, D) -> (E, C, D).

Each expert is Linear(D, F) -> GELU -> Linear(F, D), F = mlp_ratio * D, as in RingMoE/Swin.
Parameters carry logical axis names ('exp', 'embed', 'mlp') for the sharding rules.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class StackedExperts(nnx.Module):
  """E independent FFNs. Weights: w1 (E, D, F), b1 (E, F), w2 (E, F, D), b2 (E, D)."""

  def __init__(self, num_experts: int, dim: int, hidden: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2,
                                             out_axis=-1, batch_axis=(0,))
    self.w1 = nnx.Param(init(rngs.params(), (num_experts, dim, hidden), param_dtype),
                        sharding_names=("exp", "embed", "mlp"))
    self.b1 = nnx.Param(jnp.zeros((num_experts, hidden), param_dtype),
                        sharding_names=("exp", "mlp"))
    self.w2 = nnx.Param(init(rngs.params(), (num_experts, hidden, dim), param_dtype),
                        sharding_names=("exp", "mlp", "embed"))
    self.b2 = nnx.Param(jnp.zeros((num_experts, dim), param_dtype),
                        sharding_names=("exp", "embed"))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (E, C, D) -> (E, C, D)."""
    dt = self.dtype
    h = jnp.einsum("ecd,edf->ecf", x.astype(dt), self.w1[...].astype(dt))
    h = jax.nn.gelu(h + self.b1[...].astype(dt)[:, None, :], approximate=False)
    y = jnp.einsum("ecf,efd->ecd", h, self.w2[...].astype(dt))
    return y + self.b2[...].astype(dt)[:, None, :]
