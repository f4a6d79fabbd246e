"""Logical axis names -> mesh axes, by rules kept in the config.

Parameters carry logical names (`out_sharding=('exp', 'embed', 'mlp')`); a rule maps each name
to mesh axes. A mesh axis is used at most once per array, and a dimension that the mesh axes do
not divide stays replicated (so tiny models run on any mesh).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ringmoe_jax.parallel.mesh import BATCH_AXES, ambient_axes

# Logical axes of the model: batch (tiles), length (tokens), embed (model dim), mlp (FFN hidden),
# heads (attention heads x head dim), exp (experts). Each preset maps them to mesh axes.
# A name missing from a preset stays replicated.
PRESETS: dict[str, tuple[tuple[str, Any], ...]] = {
    # Parameters replicated, batch split over every mesh axis but tensor.
    "dp": (("batch", BATCH_AXES),),
    # ZeRO-3 style: parameters and optimizer state split over fsdp along their model dim.
    "fsdp": (("batch", BATCH_AXES), ("embed", "fsdp")),
    # + experts split over the expert axis (each device holds E / expert experts).
    "fsdp_expert": (("batch", BATCH_AXES), ("embed", "fsdp"), ("exp", "expert")),
    # + Megatron-style tensor parallelism of the FFN hidden dim and the attention heads.
    "fsdp_expert_tensor": (("batch", BATCH_AXES), ("embed", "fsdp"), ("exp", "expert"),
                           ("mlp", "tensor"), ("heads", "tensor")),
}
DEFAULT_PRESET = "fsdp_expert_tensor"  # on a data-only mesh it degenerates to data parallel
DEFAULT_RULES = PRESETS[DEFAULT_PRESET]


def rules_for(config) -> tuple[tuple[str, Any], ...]:
  """config.sharding_rules if set, else PRESETS[config.sharding_preset] (default preset)."""
  rules = config.get("sharding_rules", None)
  if rules:
    return tuple((k, v) for k, v in rules)
  name = config.get("sharding_preset", DEFAULT_PRESET)
  if name not in PRESETS:
    raise ValueError(f"sharding_preset={name!r}; expected one of {', '.join(PRESETS)}")
  return PRESETS[name]


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], rules, mesh: Mesh) -> P:
  """PartitionSpec for an array of `shape` whose dims have logical `names`."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, dim in zip(names, shape):
    axes = table.get(name) if name is not None else None
    if axes is None:
      out.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a not in used and mesh.shape.get(a, 1) > 1)
    if not axes or dim % math.prod(mesh.shape[a] for a in axes):
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out)


def state_shardings(state: nnx.State, rules, mesh: Mesh):
  """NamedSharding for every Variable of `state`, from its `out_sharding` logical names."""
  def one(v):
    names = v.get_metadata().get("out_sharding") or (None,) * v.get_value().ndim
    return NamedSharding(mesh, logical_to_spec(names, v.get_value().shape, rules, mesh))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis split over the batch axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def constrain_replicated(x: jax.Array) -> jax.Array:
  """Pin a small computed table (every device needs all of it: a gather by batch ids follows)
  to full replication inside a mesh; a no-op outside one. Left free, XLA may shard its leading
  axis like the batch and then replicate it for the gather (an involuntary rematerialisation)."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, P(*([None] * x.ndim)))


def constrain_batch(x: jax.Array) -> jax.Array:
  """Pin an activation's leading (batch) axis to the ambient mesh's batch axes, the rest
  replicated (a no-op outside a mesh or when the batch does not divide). Where a parameter is
  split over `fsdp` along the channel axis (a norm scale, a per-modality table), its product
  with the activations otherwise comes out channel-sharded, and XLA can only get back to the
  batch sharding by replicating it (an "Involuntary full rematerialization")."""
  axes, _ = ambient_axes(BATCH_AXES, x.shape[0])
  if not axes:
    return x
  return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))
