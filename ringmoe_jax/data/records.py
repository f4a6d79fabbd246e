"""Validation of one sensor-tagged tile record before it enters the pipeline.

A record is a dict with at least `"sensor"` (registry name) and `"pixels"` (H, W, C) floating
point; `"valid"` (H, W) is optional (all valid when absent). Structural problems (unknown sensor,
wrong rank or channel count, tile smaller than one patch, mask shape, integer pixels) raise a
RecordError (a ValueError) that names the sensor, the record (`where`) and the expected shape,
because they mean the ingestion is wrong. Bad values do not: NaN/Inf pixels and nodata-filled pixels become invalid
(pixels 0), and are counted, since real scenes have them.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ringmoe_jax.errors import UserError
from ringmoe_jax.sensors.registry import SensorRegistry


class RecordError(UserError):
  """A tile record that does not fit its sensor (names the record, the sensor and the expected
  shape): the ingestion or the dataset reader is wrong."""


def validate_record(record: Mapping[str, Any], registry: SensorRegistry, min_size: int,
                    where: str = "") -> tuple[dict[str, Any], dict[str, int]]:
  """Checks a record against its sensor and masks bad pixels.

  Args:
    record: {"sensor": str, "pixels": (H, W, C) float, "valid": (H, W) bool, optional, ...}.
    registry: resolves the sensor tag.
    min_size: smallest allowed H and W in pixels (one patch).
    where: where the record came from (file, index), prefixed to error messages.

  Returns:
    (clean, stats): `clean` is a shallow copy of `record` whose "pixels" are float32 (H, W, C)
    with invalid pixels set to 0, and "valid" bool (H, W) with NaN/Inf pixels and pixels whose
    every channel equals the sensor's `nodata` set False. The input arrays are never modified.
    `stats` = {"nonfinite_pixels": n, "nodata_pixels": m, "invalid_pixels": total invalid}.

  Raises:
    RecordError: the record does not fit its sensor.
  """
  prefix = f"{where}: " if where else ""
  name = record.get("sensor") if isinstance(record, Mapping) else None
  if not isinstance(name, str):
    raise RecordError(f"{prefix}record has no 'sensor' tag (a registry name; registered: "
                     f"{', '.join(registry.names())})")
  if name not in registry:
    raise RecordError(f"{prefix}unknown sensor {name!r}; registered: {', '.join(registry.names())}")
  sensor = registry.get(name)
  c = sensor.num_channels
  expected = f"sensor {name!r} expects pixels of shape (H, W, {c})"
  if "pixels" not in record:
    raise RecordError(f"{prefix}{expected}, but the record has no 'pixels'")
  pixels = np.asarray(record["pixels"])
  if pixels.ndim != 3 or pixels.shape[-1] != c:
    raise RecordError(f"{prefix}{expected}, got {pixels.shape}")
  if not np.issubdtype(pixels.dtype, np.floating):
    raise RecordError(f"{prefix}{expected} as floating point, got dtype {pixels.dtype}; convert "
                     "to physical units (the sensor's scale) during ingestion")
  h, w = pixels.shape[:2]
  if h < min_size or w < min_size:
    raise RecordError(f"{prefix}{expected} with H, W >= {min_size} (one patch), got {pixels.shape}")
  if record.get("valid") is None:
    valid = np.ones((h, w), bool)
  else:
    valid = np.asarray(record["valid"])
    if valid.shape != (h, w):
      raise RecordError(f"{prefix}sensor {name!r}: valid mask must have shape (H, W) = ({h}, {w}) "
                       f"like the pixels, got {valid.shape}")
    valid = valid.astype(bool)

  nonfinite = ~np.isfinite(pixels).all(axis=-1)
  num_nonfinite = int(nonfinite.sum())
  num_nodata = 0
  bad = nonfinite
  if sensor.nodata is not None:
    nodata = (pixels == np.float32(sensor.nodata)).all(axis=-1) & ~nonfinite
    num_nodata = int((nodata & valid).sum())
    bad = bad | nodata
  pixels = pixels.astype(np.float32, copy=False)
  if bad.any():
    valid = valid & ~bad
  if not valid.all():
    pixels = np.where(valid[..., None], pixels, np.float32(0))
  clean = dict(record)
  clean["pixels"] = pixels
  clean["valid"] = valid
  stats = {"nonfinite_pixels": num_nonfinite, "nodata_pixels": num_nodata,
           "invalid_pixels": int(h * w - valid.sum())}
  return clean, stats
