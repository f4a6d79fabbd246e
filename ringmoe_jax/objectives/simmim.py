"""SimMIM pre-training of the RingMoE encoder: mask, encode, decode per modality, L1.

Axes: B batch, H/W pixels, h/w last-stage grid, Cl last-stage channels, s = total stride
(patch * 2^(stages-1)), Ko padded target channels, M modalities.

Loss = sum over modalities present in the batch (1:1:1:1, as in the paper) of the mean L1 over
that modality's masked, valid pixels and target channels, plus the MoE balancing loss times its
weight. A modality absent from the batch contributes 0 and is reported as absent (count 0).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.models.swin import RingMoEEncoder
from ringmoe_jax.objectives import masking, targets


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
    self.decoders = ModalityDecoders(cfg.stage_dim(cfg.num_stages - 1), stride,
                                     self.out_channels, param_dtype=jnp.dtype(cfg.param_dtype),
                                     rngs=rngs)

  def __call__(self, batch: dict[str, jax.Array], mask: jax.Array, *, train: bool = True):
    """-> prediction (B, H, W, Ko), encoder aux."""
    feats, aux = self.encoder(batch["pixels"], batch["modality"], mask=mask,
                              valid=batch["valid"], train=train)
    return self.decoders(feats[-1], batch["modality"]), aux


def simmim_loss(model: SimMIMModel, batch: dict[str, jax.Array], key: jax.Array, *,
                mask_ratio: float, mask_cell_px: int, balance_weight: float,
                z_loss_weight: float = 0.0, train: bool = True) -> tuple[jax.Array, dict[str, Any]]:
  """Total loss and metrics (each term on its own) for one batch.

  batch: pixels (B, H, W, Cmax) normalised, raw (B, H, W, Cmax) physical, valid (B, H, W),
         modality (B,) int32.
  """
  cfg = model.encoder.cfg
  b, hh, ww, _ = batch["pixels"].shape
  p = cfg.patch_size
  if mask_cell_px % p:
    raise ValueError(f"mim.mask_cell={mask_cell_px} px must be a multiple of patch_size={p}")
  mask = masking.block_mask(key, b, (hh // p, ww // p), mask_cell_px // p, mask_ratio)
  pred, aux = model(batch, mask, train=train)
  tgt = targets.build_targets(model.target_kinds, model.in_channels, batch["pixels"],
                              batch["raw"], batch["valid"], batch["modality"],
                              pred.shape[-1])
  pix_mask = masking.upsample(mask, p).astype(jnp.float32) * batch["valid"].astype(jnp.float32)
  num_mod = len(model.out_channels)
  chan = jnp.asarray([[1.0 if i < c else 0.0 for i in range(pred.shape[-1])]
                      for c in model.out_channels])  # (M, Ko)
  onehot = jax.nn.one_hot(batch["modality"], num_mod, dtype=jnp.float32)  # (B, M)
  w = pix_mask[..., None] * (onehot @ chan)[:, None, None, :]  # (B, H, W, Ko)
  err = jnp.abs(pred - tgt) * w
  per_tile_err = jnp.sum(err, axis=(1, 2, 3))  # (B,)
  per_tile_cnt = jnp.sum(w, axis=(1, 2, 3))
  mod_err = onehot.T @ per_tile_err  # (M,)
  mod_cnt = onehot.T @ per_tile_cnt
  mod_loss = mod_err / jnp.maximum(mod_cnt, 1.0)
  recon = jnp.sum(mod_loss)
  balance = aux["balance_loss"]
  z_loss = sum(jnp.sum(r["z_loss"]) for r in aux["routing"].values())
  loss = recon + balance_weight * balance + z_loss_weight * z_loss
  metrics = {"loss": loss, "recon_loss": recon, "balance_loss": balance, "z_loss": z_loss,
             "mask_fraction": jnp.mean(mask.astype(jnp.float32)),
             "mim_pixels_per_modality": mod_cnt,
             "loss_per_modality": mod_loss,
             "routing": aux["routing"]}
  return loss, metrics
