"""Per-sensor constants of the physics terms, as static numpy tables indexed by sensor id.

Axes: S sensors of the training registry (id = position, as in the batch's "sensor"), I spectral
indices of `physics.indices`.

Tiles carry a sensor id; everything a physics term needs about a sensor (which channels make
NDVI, how a SAR-L2 channel becomes intensity) is resolved here once, at trace time, from the
registry the trainer builds (the built-ins plus `data.sensor_files`, in that order). Sensors the
trainer adds later (from shard manifests) have ids past the tables: lookups with `take_fill`
give them "no index" and the default SAR-L2 conversion (amplitude), never another sensor's row.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ringmoe_jax.objectives import physics
from ringmoe_jax.sensors.registry import (OPTICAL_MODALITIES, RADAR_BANDS, SAR_COMPONENTS,
                                          SensorRegistry, default_registry)

# How a SAR-L2 channel in the sensor's physical scale becomes linear intensity.
AMPLITUDE, INTENSITY, DECIBEL = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class SensorTables:
  """index_a, index_b: (S, I) int32 channel positions of (a - b) / (a + b); index_ok (S, I)
  float32 1 where the sensor has both bands; sar_power: (S,) int32 AMPLITUDE / INTENSITY /
  DECIBEL; log_intensity_ref: (S,) float32 ln of the sensor's mean SAR-L2 intensity (from its
  normalisation statistics), 0 for other sensors."""
  indices: tuple[str, ...]
  index_a: np.ndarray
  index_b: np.ndarray
  index_ok: np.ndarray
  sar_power: np.ndarray
  log_intensity_ref: np.ndarray
  names: tuple[str, ...]


def training_registry(config) -> SensorRegistry:
  """The registry the trainer builds before any shard manifest: built-ins + data.sensor_files."""
  reg = default_registry()
  for path in config.data.get("sensor_files", ()):
    reg.load_file(path)
  return reg


def _sar_power(sensor) -> int:
  comps = {b.component for b in sensor.bands}
  if sensor.scale == "db":
    return DECIBEL
  if comps == {"amplitude"}:
    return AMPLITUDE
  if comps == {"intensity"}:
    return INTENSITY
  raise ValueError(f"sensor {sensor.name!r}: SAR-L2 channels must all be amplitude or all "
                   f"intensity (linear) or dB, got {sorted(comps)} in scale {sensor.scale!r}")


def build_tables(registry: SensorRegistry, indices: Sequence[str],
                 used: Sequence[str] = ()) -> SensorTables:
  """Tables for every sensor of `registry`.

  `used` (e.g. data.sensors) are checked strictly: an unsupported SAR-L2 scale raises for them,
  while unused sensors just get defaults.
  """
  names = registry.names()
  n, k = len(names), len(indices)
  a = np.zeros((n, k), np.int32)
  b = np.zeros((n, k), np.int32)
  ok = np.zeros((n, k), np.float32)
  power = np.full((n,), AMPLITUDE, np.int32)
  ref = np.zeros((n,), np.float32)
  for s, name in enumerate(names):
    sensor = registry.get(name)
    if sensor.modality in OPTICAL_MODALITIES:
      for i, idx in enumerate(indices):
        try:
          a[s, i], b[s, i] = physics.index_bands(sensor, idx)
          ok[s, i] = 1.0
        except ValueError:
          pass  # e.g. NDBI on a sensor without SWIR: that index is skipped for this sensor.
    elif sensor.modality == "sar_l2":
      try:
        power[s] = _sar_power(sensor)
        ref[s] = _log_mean_intensity(sensor, power[s])
      except ValueError:
        if name in used:
          raise
  return SensorTables(tuple(indices), a, b, ok, power, ref, names)


def _log_mean_intensity(sensor, kind: int) -> float:
  """ln E[I] over the sensor's channels from its mean / std (E[A^2] = mean^2 + std^2)."""
  mean, std = np.asarray(sensor.mean, np.float64), np.asarray(sensor.std, np.float64)
  if kind == AMPLITUDE:
    e = mean ** 2 + std ** 2
  elif kind == INTENSITY:
    e = mean
  else:  # dB: the mean of dB is the log of the geometric mean
    return float(np.mean(mean) * np.log(10.0) / 10.0)
  return float(np.log(max(float(np.mean(e)), 1e-10)))


def take_fill(table: np.ndarray, ids: jax.Array, fill=0) -> jax.Array:
  """table[ids] along axis 0, `fill` for ids outside the table (sensors added after it)."""
  table = jnp.asarray(table)
  # take's "fill" mode wraps negative ids: send them past the end first.
  ids = jnp.where(ids < 0, table.shape[0], ids)
  return jnp.take(table, ids, axis=0, mode="fill", fill_value=fill)


def to_intensity(values: jax.Array, power_kind: jax.Array) -> jax.Array:
  """SAR-L2 values (B, H, W, C) in the sensor's scale -> linear intensity; power_kind (B,).

  Zero / negative amplitudes stay 0 (zero-power pixels, dropped by the Gamma NLL)."""
  x = values.astype(jnp.float32)
  kind = power_kind[:, None, None, None]
  db = jnp.power(10.0, jnp.clip(x, -100.0, 100.0) / 10.0)
  return jnp.where(kind == DECIBEL, db, jnp.where(kind == INTENSITY, x, jnp.square(x)))


# ------------------------------------------------------------------------------------------------
# Band descriptions for the spectral patch embedding (models/patch_embed.SpectralPatchEmbed).
#
# Axes: S sensors, Cmax channels (the registry's largest band count), F descriptor features.
# Optical band: Fourier features of the centre wavelength (um; periods 4 um .. 20 nm, so that
# neighbouring red-edge bands differ) and of log10 bandwidth (um). SAR channel: Fourier features of
# log10 centre frequency (GHz), radar band, polarisation (HH, HV, VH, VV) and component one-hots.
# Two flags say which kind the band is. A constant of the model (never a parameter): a sensor
# added at fine-tuning time adds a row, not a parameter.
# ------------------------------------------------------------------------------------------------

POLARIZATIONS = ("HH", "HV", "VH", "VV")
_WAVELENGTH_PERIODS_UM = tuple(float(4.0 * (0.02 / 4.0) ** (k / 7)) for k in range(8))
_LOG_PERIODS = (4.0, 2.0, 1.0, 0.5)


def _fourier(x: float, periods) -> list[float]:
  return [f(2 * np.pi * x / p) for p in periods for f in (np.sin, np.cos)]


BAND_FEATURES = (2 * len(_WAVELENGTH_PERIODS_UM) + 4 * len(_LOG_PERIODS) + len(RADAR_BANDS)
                 + len(POLARIZATIONS) + len(SAR_COMPONENTS) + 2)


def band_features(band) -> np.ndarray:
  """One `Band` -> (F,) float32 descriptor (zeros for the other kind's fields)."""
  opt = np.zeros(2 * len(_WAVELENGTH_PERIODS_UM) + 2 * len(_LOG_PERIODS), np.float32)
  sar_f = np.zeros(2 * len(_LOG_PERIODS), np.float32)
  onehots = np.zeros(len(RADAR_BANDS) + len(POLARIZATIONS) + len(SAR_COMPONENTS), np.float32)
  if band.is_optical:
    opt[:] = (_fourier(band.center_wavelength_nm / 1000.0, _WAVELENGTH_PERIODS_UM)
              + _fourier(np.log10(band.bandwidth_nm / 1000.0), _LOG_PERIODS))
  else:
    sar_f[:] = _fourier(np.log10(band.center_frequency_ghz), _LOG_PERIODS)
    nb, npol = len(RADAR_BANDS), len(POLARIZATIONS)
    onehots[RADAR_BANDS.index(band.radar_band)] = 1.0
    onehots[nb + POLARIZATIONS.index(band.polarization)] = 1.0
    onehots[nb + npol + SAR_COMPONENTS.index(band.component)] = 1.0
  kind = np.array([band.is_optical, band.is_sar], np.float32)
  return np.concatenate([opt, sar_f, onehots, kind]).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class BandTable:
  """features (S, Cmax, F) float32, present (S, Cmax) float32 (1 for the sensor's channels),
  modality (S,) int32 of each sensor, names (S,). Hashable by content, so a module can hold it
  as static data (it is part of the graph definition, not of the parameters)."""
  features: np.ndarray
  present: np.ndarray
  modality: np.ndarray
  names: tuple[str, ...]

  def _key(self):
    return (self.names, self.features.shape, self.features.tobytes(), self.present.tobytes(),
            self.modality.tobytes())

  def __hash__(self) -> int:
    return hash(self._key())

  def __eq__(self, other) -> bool:
    return isinstance(other, BandTable) and self._key() == other._key()

  @property
  def max_channels(self) -> int:
    return self.features.shape[1]


def band_table(registry: SensorRegistry) -> BandTable:
  """The descriptor table of every sensor of `registry` (id = position), Cmax = its largest
  band count."""
  from ringmoe_jax.sensors.modalities import modality_id  # pylint: disable=import-outside-toplevel
  names = registry.names()
  sensors = [registry.get(n) for n in names]
  cmax = max([s.num_channels for s in sensors], default=1)
  feats = np.zeros((len(names), cmax, BAND_FEATURES), np.float32)
  present = np.zeros((len(names), cmax), np.float32)
  for i, s in enumerate(sensors):
    for c, band in enumerate(s.bands):
      feats[i, c] = band_features(band)
      present[i, c] = 1.0
  modality = np.array([modality_id(s.modality) for s in sensors], np.int32)
  return BandTable(feats, present, modality, tuple(names))
