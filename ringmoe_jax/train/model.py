"""Build the pre-training model from a config (concrete or abstract)."""
from __future__ import annotations

import dataclasses

from flax import nnx

from ringmoe_jax.errors import UserError
from ringmoe_jax.models.swin import EncoderConfig, RingMoEEncoder
from ringmoe_jax.moe.layer import MoEConfig
from ringmoe_jax.objectives import sensor_tables
from ringmoe_jax.objectives.simmim import SimMIMModel
from ringmoe_jax.sensors.modalities import MODALITIES


def is_spectral(config) -> bool:
  return str(config.model.get("patch_embed", "fixed")) == "spectral"


def modality_channels(config, registry=None) -> tuple[int, ...]:
  """Channels per modality (MODALITIES order): 'fixed': model.in_channels; 'spectral': the
  largest band count among the sensors in use of that modality (data.sensors, or every
  registry sensor when it is empty), model.in_channels where none is in use. The decoders
  reconstruct that many channels; the pixel tensor's Cmax is their maximum."""
  fixed = [int(config.model.in_channels[m]) for m in MODALITIES]
  if not is_spectral(config):
    return tuple(fixed)
  registry = sensor_tables.training_registry(config) if registry is None else registry
  names = tuple(config.data.get("sensors", ())) or registry.names()
  best = {}
  for name in names:
    s = registry.get(name)
    best[s.modality] = max(best.get(s.modality, 0), s.num_channels)
  out = [best.get(m, c) for m, c in zip(MODALITIES, fixed)]
  for i, m in enumerate(MODALITIES):  # the span targets read the 8-channel quad-pol layout
    if config.mim.targets.get(m) in ("span", "span_complex"):
      out[i] = max(out[i], 8)
  return tuple(out)


def input_channels(config, registry=None) -> int:
  """Cmax of the pixel tensor (see `modality_channels`)."""
  return max(modality_channels(config, registry))


def band_dropout(config) -> float:
  """data.band_dropout; None: 0.2 with the spectral patch embedding, else 0."""
  rate = config.data.get("band_dropout")
  return (0.2 if is_spectral(config) else 0.0) if rate is None else float(rate)


def encoder_configs(config, registry=None) -> tuple[EncoderConfig, MoEConfig]:
  """The backbone's plain-data configs from config.model / moe / remat / mesh."""
  channels = modality_channels(config, registry)
  enc_cfg = EncoderConfig.from_config(config.model, channels)
  remat = config.get("remat", {})
  enc_cfg = dataclasses.replace(enc_cfg, scan_blocks=bool(remat.get("scan_blocks", True)),
                                remat=str(remat.get("policy", "none")),
                                route_per_shard=bool(config.mesh.get("route_per_shard", False)))
  return enc_cfg, MoEConfig.from_config(config.moe, len(enc_cfg.kept_modalities))


def make_encoder(config, rngs: nnx.Rngs, registry=None) -> RingMoEEncoder:
  """The RingMoE encoder of `config` (pre-training and every downstream task build this).

  registry: the sensors whose ids the batches carry ('spectral': the band table is built from
  it, a constant of the model, not a parameter); None: the built-ins + data.sensor_files
  (`sensor_tables.training_registry`). Pass the trainer's registry when it has more (sensors
  from shard manifests or a checkpoint)."""
  enc_cfg, moe_cfg = encoder_configs(config, registry)
  bands = None
  if enc_cfg.patch_embed == "spectral" or enc_cfg.is_modality_subset:
    registry = sensor_tables.training_registry(config) if registry is None else registry
  if enc_cfg.patch_embed == "spectral":
    bands = sensor_tables.band_table(registry)
  if enc_cfg.is_modality_subset:
    _check_sensors_kept(config, registry, enc_cfg.kept_modalities)
  return RingMoEEncoder(enc_cfg, moe_cfg, rngs=rngs, bands=bands)


def _check_sensors_kept(config, registry, kept: tuple[int, ...]) -> None:
  """UserError naming a data.sensors sensor whose modality a modality sub-model dropped."""
  names = [MODALITIES[i] for i in kept]
  for name in config.data.get("sensors", ()):
    if name in registry.names() and registry.get(name).modality not in names:
      raise UserError(f"data.sensors: sensor {name!r} is {registry.get(name).modality} but this "
                      f"model has only {', '.join(names)} (model.modalities: a modality "
                      "sub-model of ringmoe_jax.prune); use sensors of those modalities")


def make_model(config, seed: int | None = None, *, registry=None) -> SimMIMModel:
  """The SimMIM model of `config` (registry: see `make_encoder`). Parameters are created
  unsharded (eager sharding off); the trainer places them on the mesh from their logical
  names."""
  kinds = [config.mim.targets[m] for m in MODALITIES]
  rngs = nnx.Rngs(config.seed if seed is None else seed)
  with nnx.use_eager_sharding(False):
    return SimMIMModel(make_encoder(config, rngs, registry), kinds, rngs=rngs)


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
