"""SimMIM pre-training of the RingMoE encoder: mask, encode, decode per modality, L1.

Axes: B batch, H/W pixels, h/w last-stage grid, Cl last-stage channels, s = total stride
(patch * 2^(stages-1)), Ko padded target channels, M modalities.

Loss = sum over modalities present in the batch (1:1:1:1, as in the paper) of each modality's
reconstruction term over its masked, valid pixels, plus the weighted physics and contrastive
terms (`objective.py`), plus the MoE balancing loss times its weight. A modality absent from the
batch contributes 0 and is reported as absent (count 0). The loss itself is `objective.loss`.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.models.swin import RingMoEEncoder
from ringmoe_jax.objectives import contrastive, objective, targets


class ModalityDecoders(nnx.Module):
  """Per-modality 1x1 conv Cl -> s*s*Ko_m + pixel shuffle: (B, h, w, Cl) -> (B, H, W, Ko)."""

  def __init__(self, dim: int, stride: int, out_channels: Sequence[int], *,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.stride = stride
    self.out_channels = tuple(out_channels)
    self.max_out = max(self.out_channels)
    self.heads = nnx.List([
        nnx.Linear(dim, stride * stride * c, param_dtype=param_dtype, rngs=rngs,
                   kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                     ("embed", None)))
        for c in self.out_channels])

  def __call__(self, z: jax.Array, modality: jax.Array) -> jax.Array:
    b, h, w, _ = z.shape
    s = self.stride
    out = jnp.zeros((b, h * s, w * s, self.max_out), jnp.float32)
    for m, (head, c) in enumerate(zip(self.heads, self.out_channels)):
      y = head(z.astype(jnp.float32)).reshape(b, h, w, s, s, c).transpose(0, 1, 3, 2, 4, 5)
      y = jnp.pad(y.reshape(b, h * s, w * s, c), ((0, 0),) * 3 + ((0, self.max_out - c),))
      out = jnp.where((modality == m)[:, None, None, None], y, out)
    return out


class SimMIMModel(nnx.Module):
  """Encoder + per-modality decoders; the thing pre-training optimises."""

  def __init__(self, encoder: RingMoEEncoder, target_kinds: Sequence[str], *, rngs: nnx.Rngs):
    cfg = encoder.cfg
    self.encoder = encoder
    self.target_kinds = tuple(target_kinds)
    self.in_channels = cfg.in_channels
    self.out_channels = tuple(targets.target_channels(k, c)
                              for k, c in zip(self.target_kinds, cfg.in_channels))
    stride = cfg.patch_size * 2 ** (cfg.num_stages - 1)
    # Decoders of the encoder's modalities only (a modality sub-model keeps its own); they are
    # indexed by local modality. Kinds and channels stay per MODALITIES for the objective (a
    # dropped modality is simply absent from every batch).
    self.decoders = ModalityDecoders(cfg.stage_dim(cfg.num_stages - 1), stride,
                                     [self.out_channels[m] for m in cfg.kept_modalities],
                                     param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    # Learnable InfoNCE temperature (as a log, clipped in use). A 0-d Param: no weight decay
    # (optim decays >= 2-D leaves only), and its name holds "temperature" for no-decay lists.
    self.contrastive_log_temperature = nnx.Param(contrastive.init_log_temperature())

  def forward(self, batch: dict[str, jax.Array], mask: jax.Array, *, train: bool = True):
    """-> prediction (B, H, W, Ko), last-stage features (B, h, w, Cl), encoder aux."""
    feats, aux = self.encoder(batch["pixels"], batch["modality"], sensor=batch.get("sensor"),
                              mask=mask, valid=batch["valid"], train=train,
                              channels=batch.get("channels"))
    local = self.encoder.cfg.local_modality(batch["modality"])
    return self.decoders(feats[-1], local), feats[-1], aux

  def __call__(self, batch: dict[str, jax.Array], mask: jax.Array, *, train: bool = True):
    """-> prediction (B, H, W, Ko), encoder aux."""
    pred, _, aux = self.forward(batch, mask, train=train)
    return pred, aux


def simmim_loss(model: SimMIMModel, batch: dict[str, jax.Array], key: jax.Array, config=None, *,
                train: bool = True, mask: jax.Array | None = None, mask_ratio: float | None = None,
                mask_cell_px: int | None = None, balance_weight: float | None = None,
                z_loss_weight: float = 0.0, registry=None) -> tuple[jax.Array, dict[str, Any]]:
  """Total loss and metrics (each term on its own) for one batch; see `objective.py`.

  config: the full config (sections mim, physics, contrastive, moe, data are read). Without it
    (older callers) the legacy keywords mask_ratio / mask_cell_px / balance_weight /
    z_loss_weight give SimMIM block masking, the model's target kinds and no weighted physics or
    contrastive term.
  mask: (B, h, w) bool token mask overriding the drawn one (tests).
  registry: the run's SensorRegistry (the batches' sensor ids index its tables); None: the
    built-ins + data.sensor_files.
  """
  if config is None:
    if mask_ratio is None or mask_cell_px is None or balance_weight is None:
      raise TypeError("simmim_loss needs config, or mask_ratio, mask_cell_px and balance_weight")
    obj = objective.Objective.legacy(model, mask_ratio=mask_ratio, mask_cell_px=mask_cell_px,
                                     balance_weight=balance_weight, z_loss_weight=z_loss_weight)
  else:
    obj = objective.Objective.from_config(config, model, registry)
  return obj.loss(model, batch, key, train=train, mask=mask)
