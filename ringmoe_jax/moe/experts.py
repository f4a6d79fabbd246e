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
                        out_sharding=("exp", "embed", "mlp"))
    self.b1 = nnx.Param(jnp.zeros((num_experts, hidden), param_dtype),
                        out_sharding=("exp", "mlp"))
    self.w2 = nnx.Param(init(rngs.params(), (num_experts, hidden, dim), param_dtype),
                        out_sharding=("exp", "mlp", "embed"))
    self.b2 = nnx.Param(jnp.zeros((num_experts, dim), param_dtype),
                        out_sharding=("exp", "embed"))
    self.dtype = dtype

  def weights(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(w1, b1, w2, b2) in the compute dtype."""
    return tuple(p[...].astype(self.dtype) for p in (self.w1, self.b1, self.w2, self.b2))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (E, C, D) -> (E, C, D)."""
    return buffer_ffn(x.astype(self.dtype), *self.weights())


def buffer_ffn(x, w1, b1, w2, b2):
  """x (E, C, D), w1 (E, D, F), b1 (E, F), w2 (E, F, D), b2 (E, D) -> (E, C, D)."""
  h = jnp.einsum("ecd,edf->ecf", x, w1)
  h = jax.nn.gelu(h + b1[:, None, :], approximate=False)
  return jnp.einsum("ecf,efd->ecd", h, w2) + b2[:, None, :]
