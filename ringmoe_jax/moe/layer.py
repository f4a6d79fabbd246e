"""RingMoE's hierarchical MoE layer, the FFN of every Swin block.

For a token x of modality m:  y = Special[m](x) + Collab(x) + Shared(x)  (plain sum), where
  Special[m]: Es experts owned by modality m, routed by modality m's router (top-k);
  Collab:     Ec experts shared by all modalities, one joint router (top-k);
  Shared:     Sh always-on FFNs (no router), of width shared_mlp_ratio * D when set.
Any of Es, Ec, Sh may be 0.

Axes: T tokens, D model dim, F hidden dim, M modalities, Es/Ec experts per router.
Routing policy: routing.py; token movement: dispatch.py (+ grouped.py kernels); placement of the
experts over the `expert` mesh axis: parallel/expert_parallel.py.
The modality of each token comes from the sensor tag of its tile (passed in), never from its
position in the batch, so any mix of modalities in a batch is routed correctly.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.moe import dispatch as dispatch_lib
from ringmoe_jax.moe.experts import StackedExperts
from ringmoe_jax.moe.routing import capacity_for, jitter, route_top_k
from ringmoe_jax.parallel import expert_parallel


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """Plain-data description of one hierarchical MoE layer (built from config.moe)."""
  num_modalities: int = 4
  num_special: int = 4  # per modality
  num_collab: int = 4
  num_shared: int = 1
  top_k: int = 1
  capacity_factor: float = 1.2
  eval_capacity_factor: float = 2.0
  # Expected share of a batch's tokens that one modality contributes; sets the static capacity
  # of the specialised experts. None: 1/M (a balanced mix, as in the paper's batches).
  special_capacity_fraction: float | None = None
  min_capacity: int = 4
  router_init_std: float = 0.02
  # Token movement: 'auto' | 'capacity' | 'dropless_ragged' | 'dropless_blocked' |
  # 'dropless_native' (dispatch.py).
  # Dropless dispatchers ignore the capacity factors and drop nothing.
  dispatcher: str = "auto"
  # Capacity buffers on an expert-sharded mesh: 'gspmd' (constraints) | 'shard_map' (explicit
  # all_to_all), see parallel/expert_parallel.py.
  expert_parallel: str = "gspmd"
  # Divide the K selected gates by their sum (with top_k=1 every gate becomes 1).
  renormalize_gates: bool = False
  # V-MoE batch-priority routing: fill capacity by top-1 gate, highest first.
  batch_priority: bool = False
  # Multiplicative U(1-eps, 1+eps) noise on the router input in training; > 0 needs `key`.
  jitter_noise: float = 0.0
  # Weight of the ST-MoE router z-loss. The layer reports the unweighted aux[router]['z_loss'];
  # the training loss adds router_z_loss_weight * their sum.
  router_z_loss_weight: float = 0.0
  # Row-block sizes of the dropless_blocked kernel, largest first (grouped.py).
  dropless_block_sizes: tuple[int, ...] = (512, 256, 128, 64, 32)
  # Hidden width of the shared FFNs = shared_mlp_ratio * dim; None: the routed experts' width
  # (a pruned dense model folds its merged experts into one wider shared FFN).
  shared_mlp_ratio: float | None = None

  @classmethod
  def from_config(cls, moe_cfg: Any, num_modalities: int) -> "MoEConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in dict(moe_cfg).items() if k in fields}
    if "dropless_block_sizes" in kw:
      kw["dropless_block_sizes"] = tuple(int(b) for b in kw["dropless_block_sizes"])
    kw["num_modalities"] = num_modalities
    return cls(**kw)


class Router(nnx.Module):
  """G linear routers without bias, kept in float32: logits (T, G, Eg)."""

  def __init__(self, dim: int, num_groups: int, num_experts: int, std: float, *,
               rngs: nnx.Rngs):
    w = std * jax.random.normal(rngs.params(), (num_groups, dim, num_experts), jnp.float32)
    self.kernel = nnx.Param(w, out_sharding=(None, "embed", None))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.einsum("td,gde->tge", x.astype(jnp.float32), self.kernel[...])


class HierarchicalMoE(nnx.Module):
  """(T, D) tokens + (T,) modality ids -> (T, D), plus aux losses and routing metrics."""

  def __init__(self, dim: int, hidden: int, cfg: MoEConfig, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    m = cfg.num_modalities
    self.special_router = (Router(dim, m, cfg.num_special, cfg.router_init_std, rngs=rngs)
                           if cfg.num_special else None)
    self.special = StackedExperts(m * cfg.num_special, dim, hidden, **kw) if cfg.num_special else None
    self.collab_router = (Router(dim, 1, cfg.num_collab, cfg.router_init_std, rngs=rngs)
                          if cfg.num_collab else None)
    self.collab = StackedExperts(cfg.num_collab, dim, hidden, **kw) if cfg.num_collab else None
    shared_hidden = hidden if cfg.shared_mlp_ratio is None else int(dim * cfg.shared_mlp_ratio)
    self.shared = (StackedExperts(cfg.num_shared, dim, shared_hidden, **kw) if cfg.num_shared
                   else None)

  def _routed(self, x, router, experts, group, valid, num_groups, capacity, key):
    cfg = self.cfg
    method = dispatch_lib.resolve(cfg.dispatcher, expert_parallel.expert_axis_size() > 1,
                                  self.dtype)
    xr = x if key is None else jitter(x, key, cfg.jitter_noise)
    decision, balance, metrics = route_top_k(
        router(xr), group, valid, num_groups=num_groups, k=cfg.top_k,
        capacity=capacity if method == "capacity" else None,
        renormalize=cfg.renormalize_gates, batch_priority=cfg.batch_priority)
    xd = x.astype(self.dtype)
    if method == "capacity":
      buf = dispatch_lib.dispatch(xd, decision, capacity)
      out = expert_parallel.expert_ffn(buf, experts.weights(), mode=cfg.expert_parallel)
      y = dispatch_lib.combine(out, decision, capacity)
    else:
      y = dispatch_lib.dropless(xd, decision, experts.weights(), kernel=method.split("_")[1],
                                block_levels=cfg.dropless_block_sizes)
    stats = dict(metrics, balance_loss=balance, tokens_per_expert=decision.tokens_per_expert,
                 num_dropped=decision.num_dropped)
    return y, balance, stats

  def __call__(self, x: jax.Array, modality: jax.Array, valid: jax.Array | None = None,
               *, train: bool = True, key: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, Any]]:
    """x (T, D), modality (T,) int32, valid (T,) bool -> y (T, D), aux.

    key: PRNG key for the router jitter noise (needed only when training with jitter_noise > 0).
    aux = {'balance_loss': (), 'special': {...}, 'collab': {...}} with per-router
    tokens_per_expert (E,), num_dropped, load (E,), entropy, confidence, dropped_fraction,
    balance_loss, z_loss (unweighted).
    """
    cfg = self.cfg
    t = x.shape[0]
    if valid is None:
      valid = jnp.ones((t,), bool)
    keys = [None, None]
    if train and cfg.jitter_noise > 0:
      if key is None:
        raise ValueError("moe.jitter_noise > 0 needs a PRNG `key` when train=True")
      keys = list(jax.random.split(key))
    cf = cfg.capacity_factor if train else cfg.eval_capacity_factor
    y = jnp.zeros(x.shape, self.dtype)
    aux: dict[str, Any] = {}
    balance = jnp.zeros((), jnp.float32)
    if self.special is not None:
      frac = cfg.special_capacity_fraction or 1.0 / cfg.num_modalities
      # Expected tokens per special expert = frac * T / Es; the bound stays T * K (a batch of
      # one modality may fill one of its experts completely).
      cap = capacity_for(t, cfg.num_special, cfg.top_k, cf * frac, cfg.min_capacity)
      ys, b, aux["special"] = self._routed(x, self.special_router, self.special, modality,
                                           valid, cfg.num_modalities, cap, keys[0])
      y, balance = y + ys, balance + b
    if self.collab is not None:
      cap = capacity_for(t, cfg.num_collab, cfg.top_k, cf, cfg.min_capacity)
      yc, b, aux["collab"] = self._routed(x, self.collab_router, self.collab,
                                          jnp.zeros((t,), jnp.int32), valid, 1, cap, keys[1])
      y, balance = y + yc, balance + b
    if self.shared is not None:
      xs = jnp.broadcast_to(x[None], (cfg.num_shared,) + x.shape)
      y = y + jnp.sum(self.shared(xs), axis=0)
    aux["balance_loss"] = balance
    return y, aux
