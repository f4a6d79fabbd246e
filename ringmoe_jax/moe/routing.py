"""Routing policy: router logits -> a routing decision as plain data.

Axes: T tokens, D model dim, E experts in a router pool, G router groups (one router per group:
one per modality for the specialised experts, a single group for the collaborative ones), Eg
experts per group (E = G * Eg), K experts selected per token, C capacity (token slots per expert).

A token of group g only ever sees the Eg experts of its own group: global expert id =
g * Eg + local id. All routing maths runs in float32 whatever the compute dtype.
"""
from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class RoutingDecision:
  """Which expert slot each token goes to, with which weight.

  expert_index:      (T, K) int32, global expert id in [0, E).
  combine_weights:   (T, K) float32, gate values (zero where not kept); carry gradient.
  position:          (T, K) int32, slot inside the expert's buffer (may be >= C: dropped);
                     with no capacity (dropless) the rank of the choice inside its expert.
  kept:              (T, K) bool, the choice fits in capacity and the token is valid.
  tokens_per_expert: (E,) int32, valid (token, choice) pairs that chose each expert (before
                     capacity).
  num_dropped:       () int32, valid (token, choice) pairs rejected by capacity.
  """
  expert_index: jax.Array
  combine_weights: jax.Array
  position: jax.Array
  kept: jax.Array
  tokens_per_expert: jax.Array
  num_dropped: jax.Array

  @property
  def num_experts(self) -> int:
    return self.tokens_per_expert.shape[0]


def capacity_for(num_tokens: int, num_experts: int, k: int, capacity_factor: float,
                 min_capacity: int = 4) -> int:
  """Static per-expert capacity C = ceil(capacity_factor * K * T / E), at least min_capacity."""
  c = math.ceil(capacity_factor * k * num_tokens / max(num_experts, 1))
  return int(min(max(c, min_capacity), num_tokens * k))


def jitter(x: jax.Array, key: jax.Array, eps: float) -> jax.Array:
  """Switch-style multiplicative jitter on the router input: x * U(1 - eps, 1 + eps)."""
  noise = jax.random.uniform(key, x.shape, jnp.float32, 1.0 - eps, 1.0 + eps)
  return x.astype(jnp.float32) * noise


def _positions(expert: jax.Array, valid: jax.Array, num_experts: int,
               priority: jax.Array | None) -> jax.Array:
  """(T, K) slot of each choice inside its expert, in fill order.

  Fill order: all first choices before any second choice (GShard / V-MoE); inside one choice
  rank, token order, or with `priority` (T,) the tokens with the highest priority first (BPR).
  Invalid tokens take no slot.
  """
  t, k = expert.shape
  order = jnp.argsort(-priority, stable=True) if priority is not None else jnp.arange(t)
  e_sorted = expert[order]  # (T, K) rows in fill order
  onehot = jax.nn.one_hot(e_sorted.T.reshape(-1), num_experts, dtype=jnp.int32)  # (K*T, E)
  onehot = onehot * jnp.tile(valid[order].astype(jnp.int32), k)[:, None]
  pos = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1).reshape(k, t).T
  return jnp.zeros_like(pos).at[order].set(pos)


def route_top_k(
    logits: jax.Array,
    group: jax.Array,
    valid: jax.Array,
    *,
    num_groups: int,
    k: int,
    capacity: int | None,
    renormalize: bool = False,
    batch_priority: bool = False,
) -> tuple[RoutingDecision, jax.Array, dict[str, jax.Array]]:
  """Top-k softmax routing within each token's own group.

  Args:
    logits: (T, G, Eg) router logits of every group's router for every token.
    group:  (T,) int32 group of each token (its modality for the specialised experts).
    valid:  (T,) bool, tokens that take part (padding/absent tokens route nowhere).
    num_groups: G.
    k: experts per token (K <= Eg, checked by config validation).
    capacity: C, slots per expert; None: dropless (every valid choice is kept).
    renormalize: divide the K selected gates by their sum (with K=1 every gate is 1 and the
      router then learns only from the auxiliary losses).
    batch_priority: V-MoE batch-priority routing: capacity is filled in order of each token's
      top-1 gate (highest first) instead of token order.

  Returns:
    (decision, balance_loss, metrics). balance_loss is the Switch loss
    Eg * sum_e f_e * P_e per group, averaged over the groups that have tokens.
    metrics: per-expert load fraction (E,), router entropy, top-1 confidence, dropped fraction,
    z_loss (ST-MoE: mean over valid tokens of logsumexp(own logits)^2, unweighted).
  """
  t, g, eg = logits.shape
  logits = logits.astype(jnp.float32)
  group = group.astype(jnp.int32)
  own = jnp.take_along_axis(logits, group[:, None, None], axis=1)[:, 0]  # (T, Eg)
  probs = jax.nn.softmax(own, axis=-1)  # (T, Eg)
  top, local = jax.lax.top_k(probs, k)  # (T, K)
  gate = top / jnp.sum(top, axis=-1, keepdims=True) if renormalize else top
  expert = group[:, None] * eg + local  # (T, K) global ids
  num_experts = num_groups * eg
  validf = valid.astype(jnp.float32)
  pair_valid = jnp.broadcast_to(valid[:, None], (t, k))

  tokens_per_expert = jnp.zeros((num_experts,), jnp.int32).at[expert.reshape(-1)].add(
      pair_valid.reshape(-1).astype(jnp.int32))
  if capacity is None:
    position = jnp.zeros((t, k), jnp.int32)  # unused by dropless dispatch
    kept = pair_valid
  else:
    priority = top[:, 0] if batch_priority else None
    position = _positions(expert, valid, num_experts, priority)
    kept = (position < capacity) & pair_valid
  combine = jnp.where(kept, gate, 0.0)
  num_dropped = jnp.sum(pair_valid & ~kept).astype(jnp.int32)

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
  z = jax.nn.logsumexp(own, axis=-1)
  metrics = {
      "load": tokens_per_expert.astype(jnp.float32) / (n_valid * k),
      "entropy": jnp.sum(entropy * validf) / n_valid,
      "confidence": jnp.sum(top[:, 0] * validf) / n_valid,
      "dropped_fraction": num_dropped.astype(jnp.float32) / (n_valid * k),
      "z_loss": jnp.sum(z * z * validf) / n_valid,
  }
  decision = RoutingDecision(
      expert_index=expert.astype(jnp.int32), combine_weights=combine,
      position=position.astype(jnp.int32), kept=kept,
      tokens_per_expert=tokens_per_expert, num_dropped=num_dropped)
  return decision, balance_loss, metrics
