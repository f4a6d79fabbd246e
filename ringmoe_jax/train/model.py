"""Build the pre-training model from a config (concrete or abstract)."""
from __future__ import annotations

import dataclasses

from flax import nnx

from ringmoe_jax.models.swin import EncoderConfig, RingMoEEncoder
from ringmoe_jax.moe.layer import MoEConfig
from ringmoe_jax.objectives.simmim import SimMIMModel
from ringmoe_jax.sensors.modalities import MODALITIES


def encoder_configs(config) -> tuple[EncoderConfig, MoEConfig]:
  """The backbone's plain-data configs from config.model / moe / remat / mesh."""
  channels = [int(config.model.in_channels[m]) for m in MODALITIES]
  enc_cfg = EncoderConfig.from_config(config.model, channels)
  remat = config.get("remat", {})
  enc_cfg = dataclasses.replace(enc_cfg, scan_blocks=bool(remat.get("scan_blocks", True)),
                                remat=str(remat.get("policy", "none")),
                                route_per_shard=bool(config.mesh.get("route_per_shard", False)))
  return enc_cfg, MoEConfig.from_config(config.moe, len(MODALITIES))


def make_encoder(config, rngs: nnx.Rngs) -> RingMoEEncoder:
  """The RingMoE encoder of `config` (pre-training and every downstream task build this)."""
  enc_cfg, moe_cfg = encoder_configs(config)
  return RingMoEEncoder(enc_cfg, moe_cfg, rngs=rngs)


def make_model(config, seed: int | None = None) -> SimMIMModel:
  """The SimMIM model of `config`. Parameters are created unsharded (eager sharding off);
  the trainer places them on the mesh from their logical names."""
  kinds = [config.mim.targets[m] for m in MODALITIES]
  rngs = nnx.Rngs(config.seed if seed is None else seed)
  with nnx.use_eager_sharding(False):
    return SimMIMModel(make_encoder(config, rngs), kinds, rngs=rngs)


def abstract_model(config) -> SimMIMModel:
  """Shapes and metadata only; nothing is allocated (for the 14.7B model)."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: make_model(config))


def count_params(model_or_state) -> int:
  state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) \
      else model_or_state
  import math
  import jax
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))
