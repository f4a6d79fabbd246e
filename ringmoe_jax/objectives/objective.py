"""The pre-training objective: masked reconstruction, physics terms and cross-modal InfoNCE.

Axes: B batch, H/W pixels, h/w last-stage grid, Cl last-stage channels, Ko padded decoder
channels, M modalities, S sensors, I spectral indices, N group slots (= B).

Terms (each reported on its own in the metrics; every one is a weighted mean with a count, and
exactly 0 with count 0 when nothing is valid: fully unmasked or all-nodata tiles, zero-power SAR):
  loss_<modality>      reconstruction of that modality by its target kind (`targets.py`):
                       'pixels' / 'span' / 'reflectance' -> L1 over masked, valid pixels;
                       'span_complex' -> L1 on the span channel; 'log_intensity' -> Gamma NLL of
                       the observed intensity given the predicted log backscatter (relative to
                       the sensor's mean intensity, `log_backscatter`) with the tile's
                       looks (the sensor registry's L; `physics.default_looks` where unknown).
  sar_l1_complex_loss  'span_complex' only: phase-invariant complex reconstruction
                       (`physics.phase_invariant_complex_loss`, normalised channels).
  spectral_sam_loss    spectral angle between predicted and true reflectance, for modalities in
                       `physics.spectral_modalities` with target 'reflectance'.
  spectral_index_loss  |index(pred) - index(target)| for `physics.indices`, bands chosen per
                       sensor by wavelength (static tables, `sensor_tables.py`); an index a sensor
                       cannot form is skipped for it.
  contrastive_loss     symmetric InfoNCE between pooled last-stage embeddings of every modality
                       pair inside co-registered groups (batch key "group"), learnable
                       temperature (`SimMIMModel.contrastive_log_temperature`).
total = sum_m loss_m + w_complex * complex + w_sam * sam + w_index * index
        + w_contrastive * contrastive + balance_weight * balance + z_weight * z.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ringmoe_jax.objectives import contrastive, masking, physics, pimask, sensor_tables, targets
from ringmoe_jax.sensors.modalities import MODALITIES

MASKINGS = ("simmim", "pimask")


@dataclasses.dataclass(frozen=True)
class Objective:
  """Static settings of the loss (Python values; read at trace time)."""
  kinds: tuple[str, ...]
  in_channels: tuple[int, ...]
  patch_size: int
  masking: str
  mask_ratio: float
  mask_cell_px: int
  pimask_in_cell_ratio: float
  reflectance_unit: float
  default_looks: float
  gamma_include_constants: bool
  complex_weight: float
  sam_weight: float
  index_weight: float
  spectral_modalities: tuple[str, ...]
  contrastive_weight: float
  min_temperature: float
  max_temperature: float
  balance_weight: float
  z_loss_weight: float
  tables: sensor_tables.SensorTables
  # Modality ids the model decodes (a modality sub-model of ringmoe_jax.prune); None: all. The
  # others get no term (their channels may exceed the sub-model's prediction).
  kept_modalities: tuple[int, ...] | None = None

  @classmethod
  def from_config(cls, config, model, registry=None) -> Objective:
    """registry: the run's (its sensor ids index the tables); None: training_registry."""
    mim, phys, con = config.mim, config.physics, config.contrastive
    registry = sensor_tables.training_registry(config) if registry is None else registry
    tables = sensor_tables.build_tables(registry, tuple(phys.indices), tuple(config.data.sensors))
    for name in config.data.sensors:
      s = registry.get(name)
      # Calibration happens before the tile reaches the loss (ingestion applies the registry's
      # dn_gain / dn_offset); a sensor still in DN has no physical scale to reconstruct in.
      if mim.targets.get(s.modality) == "reflectance" and s.scale != "reflectance":
        raise ValueError(f"mim.targets.{s.modality}='reflectance' but sensor {name!r} is in "
                         f"scale {s.scale!r}: calibrate it to reflectance at ingestion")
    return cls(
        kinds=tuple(model.target_kinds), in_channels=tuple(model.in_channels),
        patch_size=model.encoder.cfg.patch_size, masking=mim.masking,
        mask_ratio=float(mim.mask_ratio), mask_cell_px=int(mim.mask_cell),
        pimask_in_cell_ratio=float(mim.pimask_in_cell_ratio),
        reflectance_unit=float(phys.reflectance_unit), default_looks=float(phys.default_looks),
        gamma_include_constants=bool(phys.gamma_include_constants),
        complex_weight=float(phys.sar_l1_complex_weight), sam_weight=float(phys.sam_weight),
        index_weight=float(phys.index_weight),
        spectral_modalities=tuple(phys.spectral_modalities),
        contrastive_weight=float(con.weight) if con.enabled else 0.0,
        min_temperature=float(con.min_temperature), max_temperature=float(con.max_temperature),
        balance_weight=float(config.moe.balance_weight),
        z_loss_weight=float(config.moe.router_z_loss_weight), tables=tables,
        kept_modalities=tuple(model.encoder.cfg.kept_modalities))

  @classmethod
  def legacy(cls, model, *, mask_ratio: float, mask_cell_px: int, balance_weight: float,
             z_loss_weight: float = 0.0) -> Objective:
    """SimMIM masking, the model's targets, no weighted physics / contrastive term."""
    from ringmoe_jax.sensors.registry import default_registry  # pylint: disable=import-outside-toplevel
    return cls(
        kinds=tuple(model.target_kinds), in_channels=tuple(model.in_channels),
        patch_size=model.encoder.cfg.patch_size, masking="simmim", mask_ratio=float(mask_ratio),
        mask_cell_px=int(mask_cell_px), pimask_in_cell_ratio=1.0, reflectance_unit=0.1,
        default_looks=1.0, gamma_include_constants=True, complex_weight=1.0, sam_weight=0.0,
        index_weight=0.0, spectral_modalities=(), contrastive_weight=0.0,
        min_temperature=contrastive.MIN_TEMPERATURE, max_temperature=contrastive.MAX_TEMPERATURE,
        balance_weight=float(balance_weight), z_loss_weight=float(z_loss_weight),
        tables=sensor_tables.build_tables(default_registry(), ()))

  # ----------------------------------------------------------------------------------------------

  def draw_mask(self, key: jax.Array, batch: int, grid: tuple[int, int]) -> jax.Array:
    """(B, h, w) bool token mask by `mim.masking`."""
    p = self.patch_size
    if self.mask_cell_px % p:
      raise ValueError(f"mim.mask_cell={self.mask_cell_px} px must be a multiple of "
                       f"patch_size={p}")
    cell = self.mask_cell_px // p
    if self.masking == "simmim":
      return masking.block_mask(key, batch, grid, cell, self.mask_ratio)
    if self.masking == "pimask":
      return pimask.pimask(key, batch, grid, cell, self.mask_ratio, self.pimask_in_cell_ratio)
    raise ValueError(f"mim.masking={self.masking!r}; expected one of {MASKINGS}")

  def loss(self, model, batch: dict[str, jax.Array], key: jax.Array, *, train: bool = True,
           mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """batch: pixels (B, H, W, Cmax) normalised, raw (B, H, W, Cmax) physical, valid (B, H, W),
    modality (B,), sensor (B,); optional looks (B,) (0 = unknown), group (B,) (< 0 = none)."""
    b, hh, ww, _ = batch["pixels"].shape
    p = self.patch_size
    if mask is None:
      mask = self.draw_mask(key, b, (hh // p, ww // p))
    pred, feats, aux = model.forward(batch, mask, train=train)
    return self.terms(pred, feats, aux, batch, mask, model.contrastive_log_temperature[...])

  def terms(self, pred: jax.Array, feats: jax.Array, aux: dict[str, Any],
            batch: dict[str, jax.Array], mask: jax.Array,
            log_temperature: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """The loss from the model's outputs: pred (B, H, W, Ko), feats (B, h, w, Cl), encoder aux
    (balance_loss, routing), token mask (B, h', w'), log_temperature (). A pure function."""
    p = self.patch_size
    valid = batch["valid"].astype(jnp.float32)
    pix_mask = masking.upsample(mask, p).astype(jnp.float32) * valid  # (B, H, W)
    modality = batch["modality"]
    # Without sensor ids (e.g. an abstract batch for AOT compilation) every sensor is unknown:
    # table lookups give their fill values.
    sensor = batch.get("sensor", jnp.full(modality.shape, -1, jnp.int32))
    zero = jnp.zeros((), jnp.float32)
    terms: dict[str, jax.Array] = {}
    mod_loss, mod_cnt = [], []
    complex_sum = sam_sum = index_sum = zero
    complex_cnt = sam_cnt = index_cnt = zero
    for m, (kind, c) in enumerate(zip(self.kinds, self.in_channels)):
      if self.kept_modalities is not None and m not in self.kept_modalities:
        mod_loss.append(zero)
        mod_cnt.append(zero)
        continue
      w_m = pix_mask * (modality == m).astype(jnp.float32)[:, None, None]  # (B, H, W)
      if kind == "log_intensity":
        value, count = self._gamma_nll(pred[..., :c], batch, w_m, c)
      else:
        tile_valid = batch["valid"]
        if kind in ("span", "span_complex"):
          # Zero-power pixels (SAR no-data) have no span in dB: out of the target's statistics
          # and of the loss.
          has_power = jnp.sum(jnp.square(batch["raw"][..., :8].astype(jnp.float32)), -1) > 0
          tile_valid = tile_valid * has_power
          w_m = w_m * has_power
        tgt = targets.modality_target(kind, c, batch["pixels"], batch["raw"], tile_valid,
                                      self.reflectance_unit)
        n_l1 = 1 if kind in ("span", "span_complex") else c
        # Per-channel targets skip the channels a tile lacks or had dropped (batch "channels").
        ch = batch.get("channels") if n_l1 == c else None
        value, count = _masked_l1(pred[..., :n_l1], tgt[..., :n_l1], w_m,
                                  None if ch is None else ch[:, :c])
        if kind == "span_complex":
          v, n = physics.phase_invariant_complex_loss(pred[..., 1:9], tgt[..., 1:9], w_m)
          complex_sum, complex_cnt = complex_sum + v * n, complex_cnt + n
        if kind == "reflectance" and MODALITIES[m] in self.spectral_modalities:
          refl_pred = pred[..., :c] * self.reflectance_unit
          refl_tgt = batch["raw"][..., :c].astype(jnp.float32)
          v, n = physics.spectral_angle(refl_pred, refl_tgt, w_m)
          sam_sum, sam_cnt = sam_sum + v * n, sam_cnt + n
          v, n = self._index_loss(refl_pred, refl_tgt, w_m, sensor)
          index_sum, index_cnt = index_sum + v * n, index_cnt + n
      mod_loss.append(value)
      mod_cnt.append(count)
    mod_loss, mod_cnt = jnp.stack(mod_loss), jnp.stack(mod_cnt)
    recon = jnp.sum(mod_loss)
    complex_loss = physics._safe_ratio(complex_sum, complex_cnt)  # pylint: disable=protected-access
    sam = physics._safe_ratio(sam_sum, sam_cnt)  # pylint: disable=protected-access
    index = physics._safe_ratio(index_sum, index_cnt)  # pylint: disable=protected-access
    con_loss, con_pairs, temp = zero, zero, contrastive.temperature_from_log(
        log_temperature, self.min_temperature, self.max_temperature)
    if self.contrastive_weight > 0 and "group" in batch:
      con_loss, con_pairs = self._contrastive(log_temperature, feats, batch)
    balance = aux["balance_loss"]
    z_loss = sum(jnp.sum(r["z_loss"]) for r in aux["routing"].values())
    loss = (recon + self.complex_weight * complex_loss + self.sam_weight * sam
            + self.index_weight * index + self.contrastive_weight * con_loss
            + self.balance_weight * balance + self.z_loss_weight * z_loss)
    terms.update({
        "loss": loss, "recon_loss": recon, "balance_loss": balance, "z_loss": z_loss,
        "mask_fraction": jnp.mean(mask.astype(jnp.float32)),
        "sar_l1_complex_loss": complex_loss, "sar_l1_complex_tiles": complex_cnt,
        "spectral_sam_loss": sam, "spectral_sam_pixels": sam_cnt,
        "spectral_index_loss": index, "spectral_index_count": index_cnt,
        "contrastive_loss": con_loss, "contrastive_pairs": con_pairs,
        "contrastive_temperature": temp,
        "mim_pixels_per_modality": mod_cnt, "loss_per_modality": mod_loss,
        "routing": aux["routing"]})
    return loss, terms

  # ----------------------------------------------------------------------------------------------

  def _gamma_nll(self, log_sigma: jax.Array, batch, w: jax.Array, c: int):
    """Gamma NLL of the observed SAR-L2 intensity; log_sigma (B, H, W, C), w (B, H, W)."""
    sensor = batch.get("sensor", jnp.full(batch["modality"].shape, -1, jnp.int32))
    kind = sensor_tables.take_fill(self.tables.sar_power, sensor, sensor_tables.AMPLITUDE)
    intensity = sensor_tables.to_intensity(batch["raw"][..., :c], kind)
    log_sigma = self.log_backscatter(log_sigma, sensor)
    looks = batch.get("looks")
    if looks is None:
      looks = jnp.zeros(batch["modality"].shape, jnp.float32)
    looks = jnp.where(looks > 0, looks, self.default_looks).astype(jnp.float32)
    return physics.gamma_nll(log_sigma, intensity, looks[:, None, None, None], w[..., None],
                             include_constants=self.gamma_include_constants)

  def log_backscatter(self, pred: jax.Array, sensor: jax.Array) -> jax.Array:
    """SAR-L2 decoder output (B, H, W, C) -> ln sigma: relative to the sensor's mean intensity
    (`SensorTables.log_intensity_ref`), so that a zero-initialised decoder starts at the
    sensor's typical backscatter instead of sigma = 1 (e^3 too bright), which Adam's ~lr-sized
    steps would take thousands of steps to undo."""
    ref = sensor_tables.take_fill(self.tables.log_intensity_ref, sensor, 0.0)
    return pred.astype(jnp.float32) + ref[:, None, None, None]

  def _index_loss(self, pred: jax.Array, tgt: jax.Array, w: jax.Array, sensor: jax.Array):
    """Mean |ND(pred) - ND(tgt)| over (pixel, index) pairs; per-tile bands from the tables."""
    t = self.tables
    if not t.indices:
      return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    ia = sensor_tables.take_fill(t.index_a, sensor)  # (B, I)
    ib = sensor_tables.take_fill(t.index_b, sensor)
    ok = sensor_tables.take_fill(t.index_ok, sensor)  # (B, I), 0 for unknown sensors
    # Negative predicted reflectance would let (a - b) / (a + b) blow up near a + b = 0; on
    # non-negative values |ND| <= 1. The L1 term pulls negatives back up.
    pred = jnp.maximum(pred, 0.0)

    def pick(x, idx):  # (B, H, W, C), (B, I) -> (B, H, W, I)
      return jnp.take_along_axis(x, idx[:, None, None, :], axis=-1)

    eps = 1e-6

    def nd(a, b):
      den = a + b
      good = jnp.abs(den) > eps
      return jnp.where(good, (a - b) / jnp.where(good, den, 1.0), 0.0)

    ta, tb = pick(tgt, ia), pick(tgt, ib)
    defined = (jnp.abs(ta + tb) > eps).astype(jnp.float32)
    err = jnp.abs(nd(pick(pred, ia), pick(pred, ib)) - nd(ta, tb))
    weights = w[..., None] * ok[:, None, None, :] * defined
    return physics._masked_mean(err, weights)  # pylint: disable=protected-access

  def _contrastive(self, log_temperature: jax.Array, feats: jax.Array, batch):
    """InfoNCE over co-registered groups; feats (B, h, w, Cl) -> (loss, contributing pairs)."""
    emb, present = group_embeddings(feats, batch["valid"], batch["group"], batch["modality"],
                                     len(self.kinds))
    return contrastive.multi_modal_info_nce(
        emb, present, log_temperature,
        min_temperature=self.min_temperature, max_temperature=self.max_temperature)


def _masked_l1(pred: jax.Array, tgt: jax.Array, w: jax.Array,
               channels: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Mean |pred - tgt| over pixels with weight w (B, H, W) and all channels (or those with
  channels (B, C) > 0); count = w * C."""
  weights = jnp.broadcast_to(w[..., None], pred.shape)
  if channels is not None:
    weights = weights * (channels[:, None, None, :] > 0).astype(weights.dtype)
  err = jnp.abs(pred.astype(jnp.float32) - tgt)
  return physics._masked_mean(err, weights)  # pylint: disable=protected-access


def pooled_embeddings(feats: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean of last-stage features over tokens with valid pixels.

  feats (B, h, w, Cl), valid (B, H, W) -> (embeddings (B, Cl) float32, tile has data (B,) bool).
  """
  b, h, w, _ = feats.shape
  s = valid.shape[1] // h
  v = valid.astype(jnp.float32).reshape(b, h, s, w, s).mean(axis=(2, 4))  # (B, h, w)
  n = jnp.sum(v, axis=(1, 2))
  has = n > 0
  emb = jnp.einsum("bhwc,bhw->bc", feats.astype(jnp.float32), v) / jnp.where(has, n, 1.0)[:, None]
  return emb, has


def group_embeddings(feats: jax.Array, valid: jax.Array, group: jax.Array, modality: jax.Array,
                     num_modalities: int) -> tuple[jax.Array, jax.Array]:
  """Per-group, per-modality pooled embeddings.

  Group slot of a tile = position of the first tile of the batch with its group id; tiles with
  group < 0 or without valid pixels take part in nothing. Two tiles of one modality in a group
  (e.g. two noise draws) are averaged.

  Returns:
    embeddings (N, M, Cl), present (N, M) bool, with N = B.
  """
  emb, has = pooled_embeddings(feats, valid)
  b = emb.shape[0]
  same = group[:, None] == group[None, :]  # (B, B)
  slot = jnp.argmax(same, axis=1)  # first tile of the group
  use = (has & (group >= 0)).astype(jnp.float32)
  assign = (slot[None, :] == jnp.arange(b)[:, None]).astype(jnp.float32) * use[None, :]  # (N, B)
  onehot = jax.nn.one_hot(modality, num_modalities, dtype=jnp.float32)  # (B, M)
  counts = assign @ onehot  # (N, M)
  sums = jnp.einsum("nb,bm,bc->nmc", assign, onehot, emb)
  present = counts > 0
  return sums / jnp.where(present, counts, 1.0)[..., None], present
