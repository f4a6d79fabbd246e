"""Held-out evaluation of a task: one pass over the eval split, metrics on the host.

Batches are the task pipeline's padded evaluation batches (every batch has B examples; padding
has weight 0 and is excluded by the accumulators), split over the mesh like training batches;
the jitted `task.predict` compiles once. Predictions come back replicated; in a multi-host run
each process also gathers the other processes' labels, so every process computes the same
numbers (process 0 writes them).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ringmoe_jax.parallel.sharding import batch_sharding


def eval_batch_size(config) -> int:
  return int(config.get("eval", {}).get("batch_size", 0) or config.data.batch_size)


def _predict_fn(task, config, builder, mesh):
  cache = builder.__dict__.setdefault("_predict_cache", {})
  # By value, not id(config): the builder outlives a run (trainer's program memo) and a later
  # config object could reuse a freed id.
  key = (task.name, config.to_json_best_effort())
  if key not in cache:
    def predict(params, batch):
      return task.predict(builder.merge(params), batch, config)
    cache[key] = jax.jit(predict, out_shardings=NamedSharding(mesh, P()))
  return cache[key]


def evaluate_state(task, config, builder, state, registry, mesh) -> dict[str, float]:
  """The task's metrics on the eval split for `state` (a train state or {'params': ...})."""
  n_proc = jax.process_count()
  ds = task.make_dataset(config, registry, "eval", batch_size=eval_batch_size(config) // n_proc,
                         shard_index=jax.process_index(), shard_count=n_proc)
  predict = _predict_fn(task, config, builder, mesh)
  acc = task.metrics(config)
  with jax.set_mesh(mesh):
    for i in range(len(ds)):
      local = ds[i]
      batch = {k: jax.make_array_from_process_local_data(
                   batch_sharding(mesh, np.ndim(v)), np.asarray(v)) for k, v in local.items()}
      pred = jax.device_get(predict(state["params"], batch))
      if n_proc > 1:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        local = multihost_utils.process_allgather(local, tiled=True)
      acc.update(pred, local)
  return {k: float(v) for k, v in acc.compute().items()}


def write_eval_json(path: str, metrics: dict[str, float], extra: dict[str, Any]) -> None:
  """Atomic write (aside, then rename); NaN (undefined metric) is written as null."""
  clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
           for k, v in metrics.items()}
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({**extra, "metrics": clean}, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
