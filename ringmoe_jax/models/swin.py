"""SwinV2 encoder with a hierarchical MoE FFN in every block (the RingMoE backbone).

Axes: B batch, h/w token grid of a stage, C channels of a stage, T = B*h*w tokens, M modalities.

Block (SwinV2 res-post-norm):  x = x + LN(WindowAttn(x));  x = x + LN(MoE(x, modality)).
Stage i: depths[i] blocks (even blocks unshifted, odd shifted by ws/2), then patch merging
(2x2 concat, Linear 4C -> 2C, LN), except after the last stage. A window larger than the map
shrinks to the map (and stops shifting), as in Swin.

Scanned stages: a stage's blocks are stored as pairs (unshifted, shifted) stacked along a
leading layer axis L2 = depth // 2 and run with `jax.lax.scan`, so compile time and program size
do not grow with depth (the 18-block stage of the 14.7B model compiles as one pair). The shift is
a Python int baked into each half of the pair, so the shifted-window mask stays a constant. An
odd depth keeps its last block unscanned (`tail`). Each pair can be rematerialised in the
backward pass (`EncoderConfig.remat`: 'none' | 'full' | 'dots_saveable' |
'dots_with_no_batch_dims_saveable').

`RingMoEEncoder.__call__` returns the feature map of every stage (for the downstream heads:
FPN / UperNet need all levels) and routing statistics for every block (cheap: a few counters
per expert), so pruning and observability need no second pass.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringmoe_jax.errors import UserError
from ringmoe_jax.models.adapters import Convpass
from ringmoe_jax.models.attention import WindowAttentionV2, effective_window, windowed_attention
from ringmoe_jax.models.patch_embed import PATCH_EMBEDS, ModalityPatchEmbed, SpectralPatchEmbed
from ringmoe_jax.moe.layer import HierarchicalMoE, MoEConfig
from ringmoe_jax.parallel.mesh import ambient_axes
from ringmoe_jax.parallel.sharding import constrain_batch
from ringmoe_jax.sensors.modalities import MODALITIES, modality_id


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Plain-data description of the backbone (built from config.model)."""
  img_size: int = 192
  patch_size: int = 4
  embed_dim: int = 448
  depths: tuple[int, ...] = (2, 2, 18, 2)
  num_heads: tuple[int, ...] = (14, 28, 56, 112)
  window_size: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  pretrained_window_size: int = 0
  cpb_hidden: int = 512
  in_channels: tuple[int, ...] = (3, 4, 8, 1)  # per modality, in MODALITIES order
  patch_embed: str = "fixed"  # or 'spectral' (kernels from band descriptions, patch_embed.py)
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Set from config.remat by train/model.py (not part of config.model).
  scan_blocks: bool = True
  remat: str = "none"
  # Route each batch shard's tokens as one group (mesh axes data x fsdp), set from
  # config.mesh.route_per_shard. False: one global routing over the whole batch.
  route_per_shard: bool = False
  # Convpass adapters in every block (fine-tuning mode 'adapter'; models/adapters.py):
  # width (0: none, the pre-training encoder) and output scale.
  adapter_dim: int = 0
  adapter_scale: float = 1.0
  # Global ids (MODALITIES positions) of the modalities the model has; () = all of in_channels.
  # A modality sub-model (ringmoe_jax/prune) keeps fewer: its patch embeddings, special
  # routers and experts are indexed by the position in this tuple (`local_modality`), while
  # batches keep carrying global ids.
  modalities: tuple[int, ...] = ()

  @property
  def num_stages(self) -> int:
    return len(self.depths)

  @property
  def kept_modalities(self) -> tuple[int, ...]:
    return self.modalities or tuple(range(len(self.in_channels)))

  @property
  def is_modality_subset(self) -> bool:
    return self.kept_modalities != tuple(range(len(self.in_channels)))

  def local_modality(self, modality: jax.Array) -> jax.Array:
    """(B,) global modality ids -> (B,) positions in kept_modalities; -1 for a dropped one.
    The identity (the same array) for a model of every modality."""
    if not self.is_modality_subset:
      return modality
    table = np.full((len(self.in_channels),), -1, np.int32)
    table[list(self.kept_modalities)] = np.arange(len(self.kept_modalities), dtype=np.int32)
    return jnp.asarray(table)[modality]

  def check_modalities(self, modality) -> None:
    """UserError for a tile of a modality this (pruned) model does not have; only where the ids
    are concrete (an eager call): under jit such tiles get NaN features instead."""
    if not self.is_modality_subset or isinstance(modality, jax.core.Tracer):
      return
    ids = np.asarray(modality).reshape(-1)
    bad = sorted({int(i) for i in ids} - set(self.kept_modalities))
    if bad:
      names = [MODALITIES[i] if 0 <= i < len(MODALITIES) else str(i) for i in bad]
      kept = ", ".join(MODALITIES[i] for i in self.kept_modalities)
      raise UserError(f"tiles of modality {', '.join(names)}: this model has only {kept} "
                      f"(model.modalities; a modality sub-model of ringmoe_jax.prune keeps no "
                      "patch embedding or experts for the others)")

  def stage_dim(self, i: int) -> int:
    return self.embed_dim * 2**i

  def stage_size(self, i: int) -> int:
    return self.img_size // self.patch_size // 2**i

  @classmethod
  def from_config(cls, model_cfg: Any, in_channels: Sequence[int]) -> "EncoderConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
          for k, v in dict(model_cfg).items() if k in fields}
    kw["in_channels"] = tuple(in_channels)
    # Names (the config's) or ids -> ids in MODALITIES order.
    kw["modalities"] = tuple(sorted(modality_id(m) if isinstance(m, str) else int(m)
                                    for m in kw.get("modalities", ())))
    return cls(**kw)


def _layer_norm(dim: int, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=1e-5, param_dtype=param_dtype, rngs=rngs,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)))


class SwinMoEBlock(nnx.Module):
  """One SwinV2 block whose FFN is the hierarchical MoE. (B, h, w, C) -> (B, h, w, C)."""

  def __init__(self, dim: int, heads: int, window: int, shift: int, cfg: EncoderConfig,
               moe_cfg: MoEConfig, *, rngs: nnx.Rngs):
    dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.window, self.shift = window, shift
    self.route_per_shard = cfg.route_per_shard
    self.attn = WindowAttentionV2(dim, heads, window, qkv_bias=cfg.qkv_bias,
                                  pretrained_window_size=cfg.pretrained_window_size,
                                  cpb_hidden=cfg.cpb_hidden, dtype=dtype, param_dtype=pdt,
                                  rngs=rngs)
    self.norm1 = _layer_norm(dim, pdt, rngs)
    self.moe = HierarchicalMoE(dim, int(dim * cfg.mlp_ratio), moe_cfg, dtype=dtype,
                               param_dtype=pdt, rngs=rngs)
    self.norm2 = _layer_norm(dim, pdt, rngs)
    if cfg.adapter_dim:
      self.adapter_attn = Convpass(dim, cfg.adapter_dim, cfg.adapter_scale, param_dtype=pdt,
                                   rngs=rngs)
      self.adapter_ffn = Convpass(dim, cfg.adapter_dim, cfg.adapter_scale, param_dtype=pdt,
                                  rngs=rngs)
    else:
      self.adapter_attn = self.adapter_ffn = None

  def __call__(self, x, modality, token_valid, *, train: bool):
    """x (B, h, w, C), modality (B,), token_valid (B, h, w) bool -> x, aux."""
    b, h, w, c = x.shape
    a = windowed_attention(self.attn, x, self.window, self.shift)
    bypass = None if self.adapter_attn is None else self.adapter_attn(x)
    x = x + self.norm1(a).astype(x.dtype)
    x = constrain_batch(x if bypass is None else x + bypass)
    bypass = None if self.adapter_ffn is None else self.adapter_ffn(x)
    tok_mod = jnp.broadcast_to(modality[:, None], (b, h * w))
    g, axes = _routing_groups(b) if self.route_per_shard else (1, ())
    if g == 1:
      y, aux = self.moe(x.reshape(b * h * w, c), tok_mod.reshape(-1), token_valid.reshape(-1),
                        train=train)
    else:
      # G routing groups, one per batch shard: capacity, positions and the dispatch gather stay
      # inside a shard instead of spanning the global batch (V-MoE's groups).
      moe_def, moe_state = nnx.split(self.moe)
      run = lambda xx, mm, vv: nnx.merge(moe_def, moe_state)(xx, mm, vv, train=train)
      y, aux = jax.vmap(run, spmd_axis_name=axes)(
          x.reshape(g, -1, c), tok_mod.reshape(g, -1), token_valid.reshape(g, -1))
      aux = _merge_groups(aux)
    x = x + self.norm2(y.reshape(b, h, w, c)).astype(x.dtype)
    return constrain_batch(x if bypass is None else x + bypass), aux


# Mesh axes that split the batch into routing groups (route_per_shard); `expert` also splits
# the batch but is kept for the experts themselves.
GROUP_AXES = ("data", "fsdp")
_SUMMED_STATS = ("tokens_per_expert", "num_dropped")


def _routing_groups(batch: int) -> tuple[int, tuple[str, ...]]:
  axes, n = ambient_axes(GROUP_AXES, batch)
  return n, axes


def _merge_groups(aux):
  """Per-group MoE aux (G, ...) -> one block's: counts summed, rates and losses averaged."""
  def one(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    return a.sum(0) if name in _SUMMED_STATS else a.mean(0)
  return jax.tree_util.tree_map_with_path(one, aux)


REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")


def _remat(fn, policy: str):
  """fn wrapped in jax.checkpoint with the named policy ('none': unchanged)."""
  if policy == "none":
    return fn
  if policy == "full":
    return jax.checkpoint(fn)
  if policy in REMAT_POLICIES:
    return jax.checkpoint(fn, policy=getattr(jax.checkpoint_policies, policy))
  raise ValueError(f"remat policy {policy!r}; expected one of {REMAT_POLICIES}")


def _stack_aux(auxes):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *auxes)


class BlockPair(nnx.Module):
  """Two consecutive blocks: unshifted, then shifted. (B, h, w, C) -> (B, h, w, C)."""

  def __init__(self, dim, heads, size, cfg: EncoderConfig, moe_cfg: MoEConfig, *,
               rngs: nnx.Rngs):
    blocks = []
    for shift in (0, cfg.window_size // 2):
      ws, sh = effective_window(size, size, cfg.window_size, shift)
      blocks.append(SwinMoEBlock(dim, heads, ws, sh, cfg, moe_cfg, rngs=rngs))
    self.even, self.odd = blocks

  def __call__(self, x, modality, token_valid, *, train: bool):
    """-> x, aux with every routing statistic stacked (2, ...); balance_loss summed."""
    x, a0 = self.even(x, modality, token_valid, train=train)
    x, a1 = self.odd(x, modality, token_valid, train=train)
    balance = a0.pop("balance_loss") + a1.pop("balance_loss")
    return x, balance, _stack_aux([a0, a1])


class Stage(nnx.Module):
  """depth blocks of one resolution: scanned pairs (L2 = depth // 2) + an unscanned odd tail."""

  def __init__(self, depth, dim, heads, size, cfg: EncoderConfig, moe_cfg: MoEConfig, *,
               rngs: nnx.Rngs):
    self.remat = cfg.remat
    self.num_pairs = depth // 2 if cfg.scan_blocks else 0
    if self.num_pairs:
      @nnx.split_rngs(splits=self.num_pairs)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
      def make_pairs(r):
        return BlockPair(dim, heads, size, cfg, moe_cfg, rngs=r)
      self.pairs = make_pairs(rngs)
    else:
      self.pairs = None
    rest = []
    for j in range(2 * self.num_pairs, depth):
      ws, shift = effective_window(size, size, cfg.window_size,
                                   0 if j % 2 == 0 else cfg.window_size // 2)
      rest.append(SwinMoEBlock(dim, heads, ws, shift, cfg, moe_cfg, rngs=rngs))
    self.tail = nnx.List(rest)

  def __call__(self, x, modality, token_valid, *, train: bool):
    """x (B, h, w, C) -> x, balance (), routing {router: {stat: (depth, ...)}}."""
    balance = jnp.zeros((), jnp.float32)
    auxes = []
    if self.pairs is not None:
      graphdef, params = nnx.split(self.pairs)

      def body(carry, layer_params):
        pair = nnx.merge(graphdef, layer_params)
        y, bal, aux = pair(carry, modality, token_valid, train=train)
        return y, (bal, aux)

      x, (bal, aux) = jax.lax.scan(_remat(body, self.remat), x, params)
      balance = balance + bal.sum()
      # (L2, 2, ...) -> (2 * L2, ...): block order even0, odd0, even1, ...
      auxes.append(jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), aux))
    for blk in self.tail:
      blk_def, blk_params = nnx.split(blk)

      def run(p, y, blk_def=blk_def):
        return nnx.merge(blk_def, p)(y, modality, token_valid, train=train)

      x, aux = _remat(run, self.remat)(blk_params, x)
      balance = balance + aux.pop("balance_loss")
      auxes.append(jax.tree.map(lambda a: a[None], aux))
    routing = jax.tree.map(lambda *xs: jnp.concatenate(xs), *auxes)
    return x, balance, routing


class PatchMerging(nnx.Module):
  """(B, h, w, C) -> (B, h/2, w/2, 2C): 2x2 neighbours concatenated, Linear 4C->2C, LayerNorm."""

  def __init__(self, dim: int, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    pdt = jnp.dtype(cfg.param_dtype)
    self.dtype = jnp.dtype(cfg.dtype)
    self.reduction = nnx.Linear(
        4 * dim, 2 * dim, use_bias=False, dtype=self.dtype, param_dtype=pdt, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("mlp", "embed")))
    self.norm = _layer_norm(2 * dim, pdt, rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    x = x.reshape(b, h // 2, w // 2, 4 * c)  # Swin order: x0(0,0), x1(1,0), x2(0,1), x3(1,1)
    return self.norm(self.reduction(x)).astype(self.dtype)


class RingMoEEncoder(nnx.Module):
  """Pixels of any modality mix -> multi-level features + routing statistics."""

  def __init__(self, cfg: EncoderConfig, moe_cfg: MoEConfig, *, rngs: nnx.Rngs, bands=None):
    """bands: the registry's `sensor_tables.BandTable` ('spectral' patch embedding only)."""
    self.cfg = cfg
    dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if cfg.patch_embed not in PATCH_EMBEDS:
      raise ValueError(f"model.patch_embed={cfg.patch_embed!r}; expected one of {PATCH_EMBEDS}")
    kept = cfg.kept_modalities
    if cfg.patch_embed == "spectral":
      if bands is None:
        raise ValueError("model.patch_embed='spectral' needs the registry's band table (bands=)")
      if cfg.is_modality_subset:  # the table's sensors by local modality (-1: dropped)
        bands = dataclasses.replace(bands, modality=np.asarray(
            cfg.local_modality(np.asarray(bands.modality)), np.int32))
      self.patch_embed = SpectralPatchEmbed(len(kept), bands, cfg.patch_size,
                                            cfg.embed_dim, dtype=dtype, param_dtype=pdt,
                                            rngs=rngs)
    else:
      self.patch_embed = ModalityPatchEmbed([cfg.in_channels[m] for m in kept], cfg.patch_size,
                                            cfg.embed_dim, dtype=dtype, param_dtype=pdt,
                                            rngs=rngs)
    self.mask_token = nnx.Param(  # SimMIM: trunc-normal(0.02)
        nnx.initializers.truncated_normal(0.02)(rngs.params(), (cfg.embed_dim,), pdt),
        out_sharding=("embed",))
    self.moe_cfg = moe_cfg
    stages, merges = [], []
    for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
      dim, size = cfg.stage_dim(i), cfg.stage_size(i)
      stages.append(Stage(depth, dim, heads, size, cfg, moe_cfg, rngs=rngs))
      if i < cfg.num_stages - 1:
        merges.append(PatchMerging(dim, cfg, rngs=rngs))
    self.stages = nnx.List(stages)
    self.merges = nnx.List(merges)
    self.final_norm = _layer_norm(cfg.stage_dim(cfg.num_stages - 1), pdt, rngs)

  def __call__(self, pixels: jax.Array, modality: jax.Array, *,
               sensor: jax.Array | None = None,
               mask: jax.Array | None = None, valid: jax.Array | None = None,
               train: bool = True,
               channels: jax.Array | None = None) -> tuple[list[jax.Array], dict[str, Any]]:
    """Encode a batch.

    Args:
      pixels: (B, H, W, Cmax) normalised pixels; channels past a modality's count are ignored.
      modality: (B,) int32 modality id of each tile (from its sensor tag; global MODALITIES
        ids, also for a modality sub-model: a dropped modality is a UserError when the ids are
        concrete, NaN features under jit).
      sensor: (B,) int32 registry index of each tile's sensor: the 'spectral' patch embedding
        needs it (its kernels come from the sensor's bands), the 'fixed' one ignores it.
      mask: (B, H/p, W/p) bool, True = replace that patch by the mask token (SimMIM).
      valid: (B, H, W) valid-pixel mask; tokens without any valid pixel route to no expert.
      train: training (capacity_factor) or evaluation (eval_capacity_factor) routing.
      channels: (B, Cmax) float32 channel mask, 0 = band absent / dropped ('spectral' only;
        None: all of the sensor's channels present).

    Returns:
      features: per stage (B, h_i, w_i, C_i); the last one final-normed.
      aux: {'balance_loss': () summed over blocks, 'routing': {router: {stat: (L, ...)}}}.
    """
    cfg = self.cfg
    cfg.check_modalities(modality)
    modality = cfg.local_modality(modality)  # from here on: positions in kept_modalities
    x = self.patch_embed(pixels, modality, sensor=sensor, channels=channels)  # (B, h, w, D)
    if cfg.is_modality_subset:  # a dropped modality's tile (under jit): NaN, never plausible
      x = jnp.where((modality < 0)[:, None, None, None], jnp.nan, x)
    b, h, w, _ = x.shape
    if valid is None:
      tok_valid = jnp.ones((b, h, w), bool)
    else:
      p = cfg.patch_size
      tok_valid = valid.reshape(b, h, p, w, p).max(axis=(2, 4)) > 0
    # Patches without a single valid pixel carry no signal: they become the mask token, like
    # masked patches (missing data is an explicit mask, never a made-up value).
    replace = ~tok_valid if mask is None else (mask | ~tok_valid)
    m = replace.astype(x.dtype)[..., None]
    x = x * (1 - m) + self.mask_token[...].astype(x.dtype) * m
    features, stage_routing = [], []
    balance = jnp.zeros((), jnp.float32)
    for i, stage in enumerate(self.stages):
      x, bal, routing = stage(x, modality, tok_valid, train=train)
      balance = balance + bal
      stage_routing.append(routing)
      if i < cfg.num_stages - 1:
        features.append(x)
        x = self.merges[i](x)
        bb, hh, ww = tok_valid.shape
        tok_valid = tok_valid.reshape(bb, hh // 2, 2, ww // 2, 2).max(axis=(2, 4))
    features.append(self.final_norm(x).astype(x.dtype))
    routing = jax.tree.map(lambda *xs: jnp.concatenate(xs), *stage_routing)
    return features, {"balance_loss": balance, "routing": routing}
