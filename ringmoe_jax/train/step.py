"""The jitted training step of any task: loss, gradients, optimizer update, routing counters.

The task (`tasks/`) gives the loss; pre-training is the task 'pretrain'. `trainable` (a pytree
of bools like the params, from the fine-tuning mode) keeps frozen leaves as they were: they are
not even added a zero update, so they stay bit-identical.

Metrics come back as device arrays; the host reads them only on logging steps.

Non-finite steps: if the loss or the gradient norm is NaN/Inf, the update is skipped inside the
step (parameters, optimiser state and routing counters keep their old values via `jnp.where`;
no host sync), the batch still counts as consumed (`step` advances, so data order and resume
are unchanged), and `skipped_steps` / `nonfinite_streak` / `max_nonfinite_streak` count it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ringmoe_jax.train.state import StateBuilder


def batch_spec(example: dict[str, Any], batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs of a global batch of `batch_size`, from one pipeline batch `example`
  (any batch size): the keys, dtypes and per-tile shapes are the pipeline's own."""
  return {k: jax.ShapeDtypeStruct((batch_size,) + np.shape(v)[1:], np.asarray(v).dtype)
          for k, v in example.items()}


def make_train_step(builder: StateBuilder, config, *, task=None, trainable=None,
                    jit: bool = True):
  """Returns step(state, batch, frozen=None) -> (state, metrics), jitted with donated state.

  task: a `tasks.base.Task` (default: the config's task); trainable: pytree of bools over the
  params (None: all train)."""
  if task is None:
    from ringmoe_jax.tasks import get_task  # pylint: disable=import-outside-toplevel
    task = get_task(config)
  base_key = jax.random.PRNGKey(config.seed)

  def loss_fn(params, batch, key, frozen):
    model = builder.merge(params)
    if frozen is None:
      return task.loss(model, batch, key, config, train=True)
    return task.loss(model, batch, key, config, train=True, frozen=frozen)

  def apply(new, old):
    if trainable is None:
      return new
    return jax.tree.map(lambda t, n, o: n if t else o, trainable, new, old)

  def step(state: dict[str, Any], batch: dict[str, jax.Array], frozen=None):
    # The mask depends only on (seed, step): a resumed run draws the same masks.
    key = jax.random.fold_in(base_key, state["step"])
    # frozen: the task's inputs that do not train (`task.frozen_inputs`: a distillation
    # teacher's params), an argument rather than state: not differentiated, not checkpointed.
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], batch, key, frozen)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = builder.tx.update(grads, state["opt_state"], state["params"])
    params = apply(optax.apply_updates(state["params"], updates), state["params"])
    routing = aux.pop("routing")
    counts = {k: state["routing_counts"][k] + routing[k]["tokens_per_expert"].astype(jnp.float32)
              for k in state["routing_counts"]}
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    streak = jnp.where(finite, 0, state["nonfinite_streak"] + 1)
    new_state = {"step": state["step"] + 1,
                 "params": keep(params, state["params"]),
                 "opt_state": keep(opt_state, state["opt_state"]),
                 "routing_counts": keep(counts, state["routing_counts"]),
                 "skipped_steps": state["skipped_steps"] + (~finite).astype(jnp.int32),
                 "nonfinite_streak": streak,
                 "max_nonfinite_streak": jnp.maximum(state["max_nonfinite_streak"], streak)}
    metrics = {k: v for k, v in aux.items() if jnp.ndim(v) == 0}
    metrics["loss"] = loss  # the loss that was differentiated (a skipped step shows its NaN)
    if hasattr(task, "step_metrics"):
      metrics.update(task.step_metrics(aux))
    metrics["grad_norm"] = grad_norm
    metrics["skipped_steps"] = new_state["skipped_steps"]
    metrics["nonfinite_streak"] = streak
    metrics["max_nonfinite_streak"] = new_state["max_nonfinite_streak"]
    metrics["routing"] = {k: {s: routing[k][s] for s in ("load", "dropped_fraction", "entropy",
                                                         "confidence", "balance_loss")}
                          for k in routing}
    return new_state, metrics

  if not jit:
    return step
  return jax.jit(step, donate_argnums=(0,),
                 out_shardings=(builder.shardings, None))
