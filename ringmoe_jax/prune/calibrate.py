"""Routing counts from a calibration pass (`--calibration=simulator`), for `frequency`.

When a checkpoint has no routing counts (meta['routing_counts'] missing or all zero, e.g. a
pruned or converted checkpoint), or the user asks for fresh ones, the checkpoint's own model
runs in evaluation mode (no mask, eval routing) on simulator tiles of the run's sensors
(`tools/linear_probe.probe_sensors`; another simulator seed than the probe's and the
training's) and every router's `tokens_per_expert` is summed over the batches: {router: (L, E)}
in the layout of meta['routing_counts'] (train/step.py adds the same statistic every step).
Every valid token of a block counts top_k times in each router it passes (collab: every token;
special: the tokens of each router's modality, among that modality's Es columns).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringmoe_jax.errors import UserError

CALIBRATIONS = ("simulator",)
CALIBRATION_SEED = 20_000  # neither the training scenes nor the linear probe's (10_000)


def check_calibration(calibration: str | None, batches: int) -> None:
  if calibration is not None and calibration not in CALIBRATIONS:
    raise UserError(f"--calibration={calibration}: expected one of {', '.join(CALIBRATIONS)}")
  if int(batches) < 1:
    raise UserError(f"--calibration_batches={batches}: must be >= 1")


def bind(config, task, params) -> nnx.Module:
  """`task`'s model of `config` holding `params` (built abstractly: nothing initialised)."""
  from ringmoe_jax.train.setup import abstract_task_model  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(abstract_task_model(config, task), nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def simulator_batches(config, registry, num_batches: int, batch_size: int = 32):
  """`num_batches` full evaluation batches of unseen simulated tiles of the run's sensors."""
  from ringmoe_jax.tools import linear_probe  # pylint: disable=import-outside-toplevel
  if not linear_probe.probe_sensors(config, registry):
    raise UserError("--calibration=simulator: the run's config names no sensors (data.sensors)")
  batches = linear_probe.probe_batches(config, num_batches * batch_size, batch_size=batch_size,
                                       seed=CALIBRATION_SEED, registry=registry)
  return batches[:num_batches]


def routing_counts(model, batches) -> dict[str, np.ndarray]:
  """{router: (L, E) float64} tokens each expert received over `batches` (eval mode)."""
  graphdef, state = nnx.split(model.encoder)

  @jax.jit
  def count(state, b):
    enc = nnx.merge(graphdef, state)
    _, aux = enc(b["pixels"], b["modality"], sensor=b["sensor"], mask=None, valid=b["valid"],
                 train=False, channels=b.get("channels"))
    return {k: r["tokens_per_expert"] for k, r in aux["routing"].items()}

  keys = ("pixels", "modality", "valid", "sensor", "channels")
  total: dict[str, Any] = {}
  for b in batches:
    got = count(state, {k: jnp.asarray(b[k]) for k in keys if k in b})
    for k, v in got.items():
      total[k] = total.get(k, 0) + np.asarray(v, np.float64)
  return total


def simulator_counts(config, registry, task, params, num_batches: int,
                     batch_size: int = 32) -> dict[str, np.ndarray]:
  """The calibration pass of the module docstring."""
  model = bind(config, task, params)
  return routing_counts(model, simulator_batches(config, registry, num_batches, batch_size))
