"""Routing policy: router logits -> a routing decision as plain data.

Axes: T tokens, E experts in a router pool, G router groups (one router per group: one per
modality for the specialised experts, a single group for the collaborative ones), Eg experts per
group (E = G * Eg), K experts selected per token, C capacity (token slots per expert).

A token of group g only ever sees the Eg experts of its own group: global expert id =
g * Eg + local id. All routing maths runs in float32 whatever the compute dtype.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class RoutingDecision:
  """Which expert slot each token goes to, with which weight.

  expert_index:      (T, K) int32, global expert id in [0, E).
  combine_weights:   (T, K) float32, gate values (zero where not kept); carry gradient.
  position:          (T, K) int32, slot inside the expert's buffer (may be >= C: dropped).
  kept:              (T, K) bool, the choice fits in capacity and the token is valid.
  tokens_per_expert: (E,) int32, tokens that chose each expert (before capacity).
  num_dropped:       () int32, valid (token, choice) pairs rejected by capacity.
  """
  expert_index: jax.Array
  combine_weights: jax.Array
  position: jax.Array
  kept: jax.Array
  tokens_per_expert: jax.Array
  num_dropped: jax.Array


def capacity_for(num_tokens: int, num_experts: int, k: int, capacity_factor: float,
                 min_capacity: int = 4) -> int:
  """Static per-expert capacity C = ceil(capacity_factor * K * T / E), at least min_capacity."""
  import math
  c = math.ceil(capacity_factor * k * num_tokens / max(num_experts, 1))
  return int(min(max(c, min_capacity), num_tokens * k))


def route_top_k(
    logits: jax.Array,
    group: jax.Array,
    valid: jax.Array,
    *,
    num_groups: int,
    k: int,
    capacity: int,
) -> tuple[RoutingDecision, jax.Array, dict[str, jax.Array]]:
  """Top-k softmax routing within each token's own group.

  Args:
    logits: (T, G, Eg) router logits of every group's router for every token.
    group:  (T,) int32 group of each token (its modality for the specialised experts).
    valid:  (T,) bool, tokens that take part (padding/absent tokens route nowhere).
    num_groups: G.
    k: experts per token (K <= Eg, checked by config validation).
    capacity: C, slots per expert.

  Returns:
    (decision, balance_loss, metrics). balance_loss is the Switch loss
    Eg * sum_e f_e * P_e per group, averaged over the groups that have tokens.
    metrics: per-expert load fraction (E,), router entropy, top-1 confidence, dropped fraction.
  """
  t, g, eg = logits.shape
  logits = logits.astype(jnp.float32)
  group = group.astype(jnp.int32)
  own = jnp.take_along_axis(logits, group[:, None, None], axis=1)[:, 0]  # (T, Eg)
  probs = jax.nn.softmax(own, axis=-1)  # (T, Eg)
  gate, local = jax.lax.top_k(probs, k)  # (T, K)
  expert = group[:, None] * eg + local  # (T, K) global ids
  num_experts = num_groups * eg
  validf = valid.astype(jnp.float32)

  # Slot positions: earlier choices (all first choices before any second choice) and earlier
  # tokens get priority, as in GShard / V-MoE.
  onehot = jax.nn.one_hot(expert.T.reshape(-1), num_experts, dtype=jnp.int32)  # (K*T, E)
  onehot = onehot * jnp.tile(valid.astype(jnp.int32), k)[:, None]
  pos_all = jnp.cumsum(onehot, axis=0) - 1
  position = jnp.sum(pos_all * onehot, axis=-1).reshape(k, t).T  # (T, K)
  fits = position < capacity
  kept = fits & valid[:, None]
  combine = jnp.where(kept, gate, 0.0)
  tokens_per_expert = jnp.sum(onehot, axis=0)  # (E,)
  num_dropped = jnp.sum((~fits) & valid[:, None]).astype(jnp.int32)

  # Switch balancing loss per group, on top-1 assignments.
  gmask = jax.nn.one_hot(group, num_groups, dtype=jnp.float32) * validf[:, None]  # (T, G)
  n_g = jnp.sum(gmask, axis=0)  # (G,)
  top1 = jax.nn.one_hot(local[:, 0], eg, dtype=jnp.float32)  # (T, Eg)
  f = jnp.einsum("tg,te->ge", gmask, top1) / jnp.maximum(n_g, 1.0)[:, None]
  p = jnp.einsum("tg,te->ge", gmask, probs) / jnp.maximum(n_g, 1.0)[:, None]
  per_group = eg * jnp.sum(f * p, axis=-1)  # (G,)
  present = (n_g > 0).astype(jnp.float32)
  balance_loss = jnp.sum(per_group * present) / jnp.maximum(jnp.sum(present), 1.0)

  n_valid = jnp.maximum(jnp.sum(validf), 1.0)
  entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-9)), axis=-1)
  metrics = {
      "load": tokens_per_expert.astype(jnp.float32) / (n_valid * k),
      "entropy": jnp.sum(entropy * validf) / n_valid,
      "confidence": jnp.sum(gate[:, 0] * validf) / n_valid,
      "dropped_fraction": num_dropped.astype(jnp.float32) / (n_valid * k),
  }
  decision = RoutingDecision(
      expert_index=expert.astype(jnp.int32), combine_weights=combine,
      position=position.astype(jnp.int32), kept=kept,
      tokens_per_expert=tokens_per_expert.astype(jnp.int32), num_dropped=num_dropped)
  return decision, balance_loss, metrics
