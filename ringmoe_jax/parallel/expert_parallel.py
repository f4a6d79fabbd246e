"""Expert parallelism for capacity buffers: experts split over the `expert` mesh axis.

Axes: E experts, C capacity slots, D model dim, n size of the `expert` mesh axis.

Two ways to run StackedExperts on the buffers (E, C, D) (MoEConfig.expert_parallel):
  gspmd:     sharding constraints only: the buffer is pinned to P('expert', None, None) next to
             expert weights sharded the same way, and XLA inserts the collectives.
  shard_map: the exchange written out (GShard / MaxText): the buffer enters split along C over
             the token axes, each device holding (E, C/m, D) slots of its own tokens;
             all_to_all over `expert` turns that into (E/n, C/m*n, D), its local experts' slots
             from every device of its expert group; the local experts run; a second
             all_to_all sends the results back. Capacity-padded all_to_all, because
             ragged_all_to_all is not implemented on XLA:CPU.
With no ambient mesh (jax.set_mesh), or an `expert` axis of size 1, or E not divisible by n,
the experts run locally.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ringmoe_jax.moe.experts import buffer_ffn

MODES = ("gspmd", "shard_map")
EXPERT_AXIS = "expert"
# Mesh axes that split tokens (and so capacity slots) besides the expert axis itself.
TOKEN_AXES = ("data", "fsdp")


def expert_axis_size() -> int:
  """Size of the ambient mesh's expert axis (1 without a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or EXPERT_AXIS not in mesh.axis_names:
    return 1
  return mesh.shape[EXPERT_AXIS]


def expert_ffn(buf: jax.Array, weights, *, mode: str = "gspmd") -> jax.Array:
  """buf (E, C, D), weights (w1 (E, D, F), b1 (E, F), w2 (E, F, D), b2 (E, D)) -> (E, C, D)."""
  if mode not in MODES:
    raise ValueError(f"moe.expert_parallel={mode!r}, expected one of {MODES}")
  n = expert_axis_size()
  e = buf.shape[0]
  if n == 1 or e % n:
    return buffer_ffn(buf, *weights)
  if mode == "gspmd":
    buf = jax.lax.with_sharding_constraint(buf, P(EXPERT_AXIS, None, None))
    out = buffer_ffn(buf, *weights)
    return jax.lax.with_sharding_constraint(out, P(EXPERT_AXIS, None, None))
  return _shard_map_ffn(buf, weights)


def _shard_map_ffn(buf, weights):
  mesh = jax.sharding.get_abstract_mesh()
  token_axes = tuple(a for a in TOKEN_AXES + (EXPERT_AXIS,)
                     if a in mesh.axis_names and mesh.shape[a] > 1)
  split = math.prod(mesh.shape[a] for a in token_axes)
  e, c, d = buf.shape
  # Every device needs the same number of slots: pad C to a multiple of the token shards.
  c_pad = -c % split
  if c_pad:
    buf = jnp.concatenate([buf, jnp.zeros((e, c_pad, d), buf.dtype)], axis=1)
  w_specs = tuple(P(EXPERT_AXIS, *([None] * (w.ndim - 1))) for w in weights)
  buf_spec = P(None, token_axes, None)

  def local(b, *w):
    # b (E, C/m, D) -> (E/n, C/m*n, D): my experts' slots from every device of my expert group.
    b = jax.lax.all_to_all(b, EXPERT_AXIS, split_axis=0, concat_axis=1, tiled=True)
    y = buffer_ffn(b, *w)
    return jax.lax.all_to_all(y, EXPERT_AXIS, split_axis=1, concat_axis=0, tiled=True)

  out = jax.shard_map(local, in_specs=(buf_spec,) + w_specs, out_specs=buf_spec)(buf, *weights)
  return out[:, :c] if c_pad else out
