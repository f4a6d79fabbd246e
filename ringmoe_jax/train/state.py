"""The train state as a plain pytree, its shardings, and its creation on the mesh.

state = {'step': () int32,
         'params': pure dict of the model's nnx.Params,
         'opt_state': optax state,
         'routing_counts': {router: (L, E) float32}  tokens routed to each expert so far
                           (not optimised; saved with checkpoints for the pruning transform),
         'skipped_steps': () int32        steps whose update was skipped (NaN/Inf loss or grads),
         'nonfinite_streak': () int32     non-finite steps in a row, up to the current step,
         'max_nonfinite_streak': () int32 the longest such streak so far (the trainer stops
                                          the run once it reaches train.max_consecutive_nonfinite)}

`StateBuilder` works from an abstract model (`nnx.eval_shape`): everything but `init()` uses
shapes only, so the 14.7B state is never allocated (tools/aot.py).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ringmoe_jax.parallel.sharding import state_shardings
from ringmoe_jax.train.model import abstract_model, make_model


_COUNTERS = ("skipped_steps", "nonfinite_streak", "max_nonfinite_streak")


def routing_count_shapes(model) -> dict[str, tuple[int, int]]:
  """{router: (num_blocks, num_experts)} for the routers the model has."""
  num_blocks = sum(model.encoder.cfg.depths)
  moe = model.encoder.moe_cfg
  out = {}
  if moe.num_special:
    out["special"] = (num_blocks, moe.num_modalities * moe.num_special)
  if moe.num_collab:
    out["collab"] = (num_blocks, moe.num_collab)
  return out


class StateBuilder:
  """Knows the model's graph, the optimizer and where every leaf of the state lives."""

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh, rules,
               create: Callable[[], nnx.Module] | None = None):
    """model: abstract (`nnx.eval_shape`) or concrete; only its shapes and graph are used.

    create: builds the concrete model; `init()` calls it inside one jitted program, so the
    parameters are created directly in their shardings: nothing is replicated first and there
    are no eager per-op compiles (~50 s of them for the micro model on 8 devices). Without
    it, the builder serves shapes only (AOT compilation, restoring a checkpoint).
    """
    self.graphdef, params = nnx.split(model, nnx.Param)
    self._create = create
    self._init_jit = None
    # Shapes only: the builder must not keep (or need) the concrete parameters.
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    self._template = abstract_params
    self.model = model
    self.tx = tx
    self.mesh = mesh
    self.param_shardings = state_shardings(abstract_params, rules, mesh).to_pure_dict()
    self.count_shapes = routing_count_shapes(model)
    abstract = jax.eval_shape(self._init_from, abstract_params.to_pure_dict())
    replicated = NamedSharding(mesh, P())
    # Fine-tuning's frozen leaves have no optimizer state (optax.multi_transform puts an empty
    # MaskedNode there): keep it as it is; every other param-like leaf takes its param's sharding.
    masked = lambda x: isinstance(x, optax.MaskedNode)
    opt_shardings = optax.tree_map_params(
        tx, lambda leaf, s: leaf if masked(leaf) else s, abstract["opt_state"],
        self.param_shardings, transform_non_params=lambda _: replicated, is_leaf=masked)
    self.shardings = {
        "step": replicated, "params": self.param_shardings, "opt_state": opt_shardings,
        "routing_counts": {k: replicated for k in self.count_shapes},
        **{k: replicated for k in _COUNTERS}}
    self.abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.shardings)

  @classmethod
  def from_config(cls, config, tx: optax.GradientTransformation, mesh: Mesh,
                  rules) -> "StateBuilder":
    """The builder of `config`'s pre-training model (abstract; `init()` creates it)."""
    return cls(abstract_model(config), tx, mesh, rules, create=lambda: make_model(config))

  def _init_from(self, params):
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": self.tx.init(params),
            "routing_counts": {k: jnp.zeros(s, jnp.float32)
                               for k, s in self.count_shapes.items()},
            **{k: jnp.zeros((), jnp.int32) for k in _COUNTERS}}

  def init(self) -> dict[str, Any]:
    """Fresh state, built by `create` inside one jit, directly in its shardings."""
    if self._create is None:
      raise ValueError("StateBuilder.init() needs the builder's `create` (a function that "
                       "builds the concrete model); see StateBuilder.from_config")

    if self._init_jit is None:
      def build():
        return self._init_from(nnx.state(self._create(), nnx.Param).to_pure_dict())
      # Kept: a builder reused by the trainer's program memo initialises without retracing.
      self._init_jit = jax.jit(build, out_shardings=self.shardings)
    return self._init_jit()

  def merge(self, params) -> nnx.Module:
    """An nnx model whose Params are `params` (pure dict); usable inside jit."""
    state = jax.tree.map(lambda x: x, self._template)  # a fresh copy: filled in place below
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)
