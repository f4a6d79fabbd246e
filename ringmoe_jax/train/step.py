"""The jitted pre-training step: loss, gradients, AdamW update, routing counters.

Metrics come back as device arrays; the host reads them only on logging steps.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ringmoe_jax.objectives.simmim import simmim_loss
from ringmoe_jax.sensors.modalities import MODALITIES
from ringmoe_jax.train.state import StateBuilder


def make_train_step(builder: StateBuilder, config):
  """Returns step(state, batch) -> (state, metrics), jitted with donated state."""
  mim, moe = config.mim, config.moe
  base_key = jax.random.PRNGKey(config.seed)

  def loss_fn(params, batch, key):
    model = builder.merge(params)
    return simmim_loss(model, batch, key, mask_ratio=mim.mask_ratio,
                       mask_cell_px=mim.mask_cell, balance_weight=moe.balance_weight,
                       z_loss_weight=moe.router_z_loss_weight,
                       train=True)

  def step(state: dict[str, Any], batch: dict[str, jax.Array]):
    # The mask depends only on (seed, step): a resumed run draws the same masks.
    key = jax.random.fold_in(base_key, state["step"])
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key)
    updates, opt_state = builder.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    routing = aux.pop("routing")
    counts = {k: state["routing_counts"][k] + routing[k]["tokens_per_expert"].astype(jnp.float32)
              for k in state["routing_counts"]}
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                 "routing_counts": counts}
    metrics = {k: v for k, v in aux.items() if jnp.ndim(v) == 0}
    for i, name in enumerate(MODALITIES):
      metrics[f"loss_{name}"] = aux["loss_per_modality"][i]
      metrics[f"pixels_{name}"] = aux["mim_pixels_per_modality"][i]
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["routing"] = {k: {s: routing[k][s] for s in ("load", "dropped_fraction", "entropy",
                                                         "confidence", "balance_loss")}
                          for k in routing}
    return new_state, metrics

  return jax.jit(step, donate_argnums=(0,),
                 out_shardings=(builder.shardings, None))
