"""Pre-training as a task: SimMIM + physics + contrastive objective (objectives/) on sensor tiles.

Its data are single tiles (data/pipeline.py), not task records; it has no held-out metric (the
linear probe and tools/ evaluate pre-trained encoders).
"""
from __future__ import annotations

import jax

from ringmoe_jax.data import pipeline as pipeline_lib
from ringmoe_jax.data import sources
from ringmoe_jax.objectives.simmim import simmim_loss
from ringmoe_jax.sensors.modalities import MODALITIES
from ringmoe_jax.tasks.base import Task, max_channels
from ringmoe_jax.train.model import band_dropout, is_spectral, make_model


class Pretrain(Task):
  name = "pretrain"
  log_keys = ("recon_loss", "balance_loss")

  def make_model(self, config):
    return make_model(config, registry=self.registry)

  def loss(self, model, batch, key, config, *, train: bool = True):
    return simmim_loss(model, batch, key, config, train=train, registry=self.registry)

  def step_metrics(self, aux):
    out = {}
    for i, name in enumerate(MODALITIES):
      out[f"loss_{name}"] = aux["loss_per_modality"][i]
      out[f"pixels_{name}"] = aux["mim_pixels_per_modality"][i]
    return out

  def make_dataset(self, config, registry, split: str, *, batch_size: int, shard_index: int = 0,
                   shard_count: int = 1):
    if split != "train":
      raise ValueError("pre-training has no evaluation split (use tools.linear_probe)")
    d = config.data
    source = sources.make_source(d, registry, config.seed)
    return pipeline_lib.make_dataset(
        source, registry=registry, batch_size=batch_size, crop_size=config.model.img_size,
        max_channels=max_channels(config, registry), seed=config.seed, shard_index=shard_index,
        shard_count=shard_count, band_dropout=band_dropout(config),
        channel_mask=is_spectral(config),
        min_tile_size=config.model.patch_size)  # a tile smaller than one patch is an error
