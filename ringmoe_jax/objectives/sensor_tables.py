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
from ringmoe_jax.sensors.registry import OPTICAL_MODALITIES, SensorRegistry, default_registry

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
