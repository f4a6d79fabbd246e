"""The device mesh: axes (data, fsdp, expert, tensor), sizes from config.mesh.

Axes are `Auto` (classic GSPMD propagation) on purpose: the model is written with logical
sharding annotations plus constraints, not with explicit-sharding types.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "expert", "tensor")
# The batch is split over every axis that does not split the model's dimensions itself.
BATCH_AXES = ("data", "fsdp", "expert")


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolve config.mesh (one axis may be -1: 'the rest') to a shape over num_devices."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: {num_devices} devices are not divisible by the fixed "
                       f"axes' product {fixed} ({dict(zip(MESH_AXES, sizes))})")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                     f"devices, have {num_devices}")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_size_per_shard(global_batch: int, mesh: Mesh) -> int:
  n = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if global_batch % n:
    raise ValueError(f"data.batch_size={global_batch} is not divisible by the {n} batch shards "
                     f"of mesh {dict(mesh.shape)}")
  return global_batch // n


def ambient_axes(names, size: int) -> tuple[tuple[str, ...], int]:
  """The ambient (abstract) mesh's axes among `names` with size > 1, and their product, if it
  divides `size`; else ((), 1). Outside a mesh: ((), 1)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return (), 1
  axes = tuple(a for a in names if a in mesh.axis_names and mesh.shape[a] > 1)
  n = math.prod(mesh.shape[a] for a in axes)
  return (axes, n) if axes and size % n == 0 else ((), 1)
