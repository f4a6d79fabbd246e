"""Dispatch mechanism: tokens -> per-expert buffers -> tokens (capacity-based, static shapes).

Axes: T tokens, D model dim, E experts, C capacity, K choices per token.

Gather/scatter by slot index rather than GShard's one-hot einsum: the one-hot dispatch tensor
(T, E, C) costs O(T*E*C) memory and FLOPs, the index form O(E*C*D) like the experts themselves.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ringmoe_jax.moe.routing import RoutingDecision


def _slots(decision: RoutingDecision, capacity: int) -> jax.Array:
  """(T, K) flat slot id e*C + p for kept choices, E*C (a spare row) for the rest."""
  num_slots = decision.tokens_per_expert.shape[0] * capacity
  slot = decision.expert_index * capacity + decision.position
  return jnp.where(decision.kept, slot, num_slots)


def dispatch(x: jax.Array, decision: RoutingDecision, capacity: int) -> jax.Array:
  """x (T, D) -> buffers (E, C, D); empty slots hold zeros."""
  t, d = x.shape
  e = decision.tokens_per_expert.shape[0]
  slot = _slots(decision, capacity).reshape(-1)  # (T*K,)
  token = jnp.broadcast_to(jnp.arange(t)[:, None], decision.kept.shape).reshape(-1)
  # Slot -> token table; unused slots (and the spare row E*C) point at the zero row T.
  table = jnp.full((e * capacity + 1,), t, dtype=jnp.int32).at[slot].set(token, mode="drop")
  x_pad = jnp.concatenate([x, jnp.zeros((1, d), x.dtype)], axis=0)
  return x_pad[table[:-1]].reshape(e, capacity, d)


def combine(y: jax.Array, decision: RoutingDecision, capacity: int) -> jax.Array:
  """buffers y (E, C, D) -> (T, D) = sum_k combine_weight[t, k] * y[slot(t, k)]."""
  e, c, d = y.shape
  slot = _slots(decision, capacity)  # (T, K)
  y_pad = jnp.concatenate([y.reshape(e * c, d), jnp.zeros((1, d), y.dtype)], axis=0)
  picked = y_pad[slot]  # (T, K, D)
  w = decision.combine_weights.astype(y.dtype)
  return jnp.einsum("tk,tkd->td", w, picked)
