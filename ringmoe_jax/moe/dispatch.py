"""Dispatch mechanism: tokens -> experts -> tokens, behind one interface.

Axes: T tokens, D model dim, E experts, C capacity, K choices per token, N = T * K.

Dispatchers (MoEConfig.dispatcher), equal wherever no token is dropped:
  capacity:          per-expert buffers (E, C, D) filled by slot index; over-capacity choices
                     are dropped. Static shapes; the form that expert parallelism exchanges.
  dropless_ragged:   (token, choice) pairs sorted by expert, grouped matmul (lax.ragged_dot),
                     unsorted and combined. The GPU/TPU path.
  dropless_blocked:  the same sort, with the loop-over-blocks kernel of grouped.py (XLA ops;
                     XLA:CPU's ragged_dot is ~24x slower than a dense FFN).
  dropless_native:   the same sort, one BLAS sgemm per expert in an XLA FFI call (native.py);
                     float32 on CPU. Under a multi-device mesh XLA cannot split the custom call
                     and runs it on gathered operands, so 'auto' uses it on one device only.
  auto:              dropless_ragged on gpu/tpu; on cpu dropless_native (float32, one device,
                     kernels built) else dropless_blocked; capacity when the ambient mesh
                     shards experts (tokens then cross devices in capacity-padded all-to-alls,
                     see parallel/expert_parallel.py).

Capacity buffers use gather/scatter by slot index rather than GShard's one-hot einsum: the
one-hot dispatch tensor (T, E, C) costs O(T*E*C) memory and FLOPs, the index form O(E*C*D).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ringmoe_jax.moe import grouped, native
from ringmoe_jax.moe.routing import RoutingDecision

DISPATCHERS = ("auto", "capacity", "dropless_ragged", "dropless_blocked", "dropless_native")


def resolve(name: str, expert_sharded: bool = False, dtype=jnp.float32) -> str:
  """'auto' -> a concrete dispatcher for this backend, mesh and compute dtype."""
  if name not in DISPATCHERS:
    raise ValueError(f"moe.dispatcher={name!r}, expected one of {DISPATCHERS}")
  if name == "dropless_native" and jnp.dtype(dtype) != jnp.float32:
    raise ValueError(f"moe.dispatcher='dropless_native' computes in float32, not {dtype}")
  if name != "auto":
    return name
  if expert_sharded:
    return "capacity"
  if jax.default_backend() != "cpu":
    return "dropless_ragged"
  mesh = jax.sharding.get_abstract_mesh()
  one_device = mesh.empty or mesh.size == 1
  if one_device and jnp.dtype(dtype) == jnp.float32 and native.status().available:
    return "dropless_native"
  return "dropless_blocked"


def _slots(decision: RoutingDecision, capacity: int) -> jax.Array:
  """(T, K) flat slot id e*C + p for kept choices, E*C (a spare row) for the rest."""
  num_slots = decision.num_experts * capacity
  slot = decision.expert_index * capacity + decision.position
  return jnp.where(decision.kept, slot, num_slots)


def dispatch(x: jax.Array, decision: RoutingDecision, capacity: int) -> jax.Array:
  """x (T, D) -> buffers (E, C, D); empty slots hold zeros."""
  t, d = x.shape
  e = decision.num_experts
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


def dropless(x: jax.Array, decision: RoutingDecision, weights, *, kernel: str,
             block_levels: tuple[int, ...] = (512, 256, 128, 64, 32)) -> jax.Array:
  """x (T, D) -> (T, D) through every kept choice's expert, no capacity.

  weights: (w1 (E, D, F), b1 (E, F), w2 (E, F, D), b2 (E, D)) in the compute dtype.
  kernel: 'ragged', 'blocked' (grouped.py) or 'native' (native.py).
  """
  t, d = x.shape
  k = decision.expert_index.shape[1]
  e = decision.num_experts
  # Choices that are not kept (invalid tokens) get the key E: sorted past every group, so no
  # expert sees them and their rows come out as zeros.
  key = jnp.where(decision.kept, decision.expert_index, e).reshape(-1)  # (N,)
  order = jnp.argsort(key, stable=True)
  sizes = jnp.zeros((e,), jnp.int32).at[key].add(1, mode="drop")
  xs = x[order // k]  # (N, D): row n is token order[n] // K
  if kernel == "ragged":
    ys = grouped.ffn_ragged(xs, sizes, *weights)
  elif kernel == "native":
    ys = native.ffn_native(xs, sizes, *weights)
  elif kernel == "blocked":
    levels = tuple(b for b in block_levels if b <= max(t * k, block_levels[-1]))
    ys = grouped.ffn_blocked(xs, sizes, *weights, levels)
  else:
    raise ValueError(f"unknown dropless kernel {kernel!r}")
  # Unsort with a gather (the inverse permutation) rather than a scatter.
  inverse = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
  picked = ys[inverse].reshape(t, k, d)
  w = decision.combine_weights.astype(ys.dtype)
  return jnp.einsum("tk,tkd->td", w, picked)
