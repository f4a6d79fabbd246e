"""Sensor descriptions as plain data, and the registry that names them.

Every tile carries a sensor tag (a registry name). The `Sensor` behind the tag says which modality
the tile belongs to, what each channel physically is (an optical band by wavelength and bandwidth;
a SAR channel by radar band, frequency, polarisation and complex component), the product level,
the value scale, and the per-channel normalisation statistics. The registry is ordered: a sensor's
position is its integer id in the batch tensor, so the registry used for training is saved inside
the checkpoint (`to_json`) and restored with it (`from_json`); the ids then never shift.

Axes: H/W pixels, C channels of one sensor (= its number of bands).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ringmoe_jax.errors import UserError
from ringmoe_jax.sensors.modalities import MODALITIES

OPTICAL_MODALITIES = ("opt", "ms")
SAR_MODALITIES = ("sar_l1", "sar_l2")
SAR_COMPONENTS = ("real", "imag", "amplitude", "intensity")
# "reflectance": 0..1 surface/TOA reflectance; "dn": sensor digital numbers; "linear": SAR
# amplitude, intensity or complex value in linear units; "db": SAR intensity in decibels.
SCALES = ("reflectance", "dn", "linear", "db")
RADAR_BANDS = ("P", "L", "S", "C", "X", "Ku", "Ka")
# Storage types of distributed products ("complex_int16": Sentinel-1 SLC's CInt16).
STORAGE_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64",
                  "complex_int16", "complex64", "complex128")
REGISTRY_FORMAT_VERSION = 1


class SensorDefinitionError(UserError):
  """An invalid sensor definition (a field of a sensor or band, a sensor file, a duplicate name);
  the message names the file, sensor and field."""


def _fail(owner: str, field: str, message: str) -> None:
  raise SensorDefinitionError(f"{owner}: field {field!r}: {message}")


@dataclasses.dataclass(frozen=True)
class Band:
  """One input channel: an optical band or one component of a SAR polarisation channel.

  Optical bands set `center_wavelength_nm` and `bandwidth_nm` (full width of the spectral
  response, nm). SAR channels set `radar_band` (e.g. "C"), `center_frequency_ghz`,
  `polarization` (transmit then receive, e.g. "HV" = transmit H, receive V) and `component`
  ("real" / "imag" of a complex SLC value, or detected "amplitude" / "intensity").
  """
  name: str
  center_wavelength_nm: float | None = None
  bandwidth_nm: float | None = None
  radar_band: str | None = None
  center_frequency_ghz: float | None = None
  polarization: str | None = None
  component: str | None = None

  def __post_init__(self):
    owner = f"band {self.name!r}"
    if not isinstance(self.name, str) or not self.name:
      _fail(owner, "name", "must be a non-empty string")
    optical = (self.center_wavelength_nm, self.bandwidth_nm)
    sar = (self.radar_band, self.center_frequency_ghz, self.polarization, self.component)
    if any(v is not None for v in optical) and any(v is not None for v in sar):
      _fail(owner, "radar_band", "a band is either optical (wavelength) or SAR (radar band), "
            "not both")
    if self.is_optical:
      for field in ("center_wavelength_nm", "bandwidth_nm"):
        value = getattr(self, field)
        if not _is_positive_number(value):
          _fail(owner, field, f"must be a positive number, got {value!r}")
        object.__setattr__(self, field, float(value))
    elif self.is_sar:
      if self.radar_band not in RADAR_BANDS:
        _fail(owner, "radar_band", f"got {self.radar_band!r}; expected one of "
              f"{', '.join(RADAR_BANDS)}")
      if not _is_positive_number(self.center_frequency_ghz):
        _fail(owner, "center_frequency_ghz",
              f"must be a positive number, got {self.center_frequency_ghz!r}")
      object.__setattr__(self, "center_frequency_ghz", float(self.center_frequency_ghz))
      pol = self.polarization
      if not (isinstance(pol, str) and len(pol) == 2 and set(pol) <= set("HV")):
        _fail(owner, "polarization", f"got {pol!r}; expected transmit+receive such as 'HH', "
              "'HV', 'VH', 'VV'")
      if self.component not in SAR_COMPONENTS:
        _fail(owner, "component", f"got {self.component!r}; expected one of "
              f"{', '.join(SAR_COMPONENTS)}")
    else:
      _fail(owner, "center_wavelength_nm", "set either the optical fields (center_wavelength_nm, "
            "bandwidth_nm) or the SAR fields (radar_band, center_frequency_ghz, polarization, "
            "component)")

  @property
  def is_optical(self) -> bool:
    return self.center_wavelength_nm is not None or self.bandwidth_nm is not None

  @property
  def is_sar(self) -> bool:
    return self.radar_band is not None or self.component is not None

  def to_dict(self) -> dict[str, Any]:
    """JSON-safe dict without the unset (None) fields."""
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Sensor:
  """A sensor product: modality, bands, geometry, value scale and normalisation statistics.

  `mean` and `std` hold one value per band, in the sensor's `scale`; `normalize` maps pixels
  (..., C) to (pixels - mean) / std. `nodata` is the fill value in physical units (a pixel whose
  every channel equals it is invalid), `looks` the equivalent number of looks of a SAR product
  (1 for SLC), `gsd_m` the ground sampling distance in metres.

  How the product's file values become physical values (used by ingestion, `to_physical`):
  `dtype` is the storage data type of the distributed product ("uint16", "complex_int16", ...;
  None: any numeric type), `dn_gain` / `dn_offset` one value per band with
  physical = DN * gain + offset (None: the file already holds physical values, e.g. a
  calibrated product), `dn_nodata` the fill value in file units (None: the file's own nodata tag).
  A complex file band (e.g. Sentinel-1 SLC CInt16) fills two channels: real then imag.
  """
  name: str
  modality: str
  bands: tuple[Band, ...]
  gsd_m: float
  product_level: str
  scale: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  nodata: float | None = None
  looks: float | None = None
  description: str = ""
  dtype: str | None = None
  dn_gain: tuple[float, ...] | None = None
  dn_offset: tuple[float, ...] | None = None
  dn_nodata: float | None = None

  def __post_init__(self):
    owner = f"sensor {self.name!r}"
    if not isinstance(self.name, str) or not self.name:
      _fail(owner, "name", "must be a non-empty string")
    if self.modality not in MODALITIES:
      _fail(owner, "modality", f"unknown modality {self.modality!r}; expected one of "
            f"{', '.join(MODALITIES)}")
    bands = tuple(self.bands)
    if not bands or not all(isinstance(b, Band) for b in bands):
      _fail(owner, "bands", "must be a non-empty sequence of Band")
    if len({b.name for b in bands}) != len(bands):
      _fail(owner, "bands", "band names must be unique")
    sar = self.modality in SAR_MODALITIES
    for b in bands:
      if sar and not b.is_sar:
        _fail(owner, "bands", f"band {b.name!r} has no SAR fields but modality is {self.modality}")
      if not sar and not b.is_optical:
        _fail(owner, "bands", f"band {b.name!r} has no wavelength but modality is "
              f"{self.modality}")
    object.__setattr__(self, "bands", bands)
    if not _is_positive_number(self.gsd_m):
      _fail(owner, "gsd_m", f"must be a positive number of metres, got {self.gsd_m!r}")
    object.__setattr__(self, "gsd_m", float(self.gsd_m))
    if not isinstance(self.product_level, str) or not self.product_level:
      _fail(owner, "product_level", "must be a non-empty string such as 'L1C', 'SLC', 'GRD'")
    if self.scale not in SCALES:
      _fail(owner, "scale", f"got {self.scale!r}; expected one of {', '.join(SCALES)}")
    for field in ("mean", "std"):
      values = getattr(self, field)
      if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        _fail(owner, field, f"must be a sequence of {len(bands)} numbers, got {values!r}")
      if len(values) != len(bands):
        _fail(owner, field, f"has {len(values)} values for {len(bands)} bands")
      if not all(_is_finite_number(v) for v in values):
        _fail(owner, field, f"must hold finite numbers, got {values!r}")
      object.__setattr__(self, field, tuple(float(v) for v in values))
    if any(s <= 0 for s in self.std):
      _fail(owner, "std", f"must be positive, got {self.std}")
    if self.nodata is not None:
      if not _is_finite_number(self.nodata):
        _fail(owner, "nodata", f"must be a finite number or None, got {self.nodata!r}")
      object.__setattr__(self, "nodata", float(self.nodata))
    if self.looks is not None:
      if not sar:
        _fail(owner, "looks", "only SAR sensors have looks")
      if not _is_positive_number(self.looks):
        _fail(owner, "looks", f"must be a positive number, got {self.looks!r}")
      object.__setattr__(self, "looks", float(self.looks))
    if not isinstance(self.description, str):
      _fail(owner, "description", "must be a string")
    if self.dtype is not None:
      if self.dtype not in STORAGE_DTYPES:
        _fail(owner, "dtype", f"got {self.dtype!r}; expected one of {', '.join(STORAGE_DTYPES)}")
    for field in ("dn_gain", "dn_offset"):
      values = getattr(self, field)
      if values is None:
        continue
      if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) \
          or len(values) != len(bands) or not all(_is_finite_number(v) for v in values):
        _fail(owner, field, f"must be None or {len(bands)} finite numbers, got {values!r}")
      object.__setattr__(self, field, tuple(float(v) for v in values))
    if self.dn_gain is not None and any(g == 0 for g in self.dn_gain):
      _fail(owner, "dn_gain", "must be non-zero")
    if self.dn_nodata is not None:
      if not _is_finite_number(self.dn_nodata):
        _fail(owner, "dn_nodata", f"must be a finite number or None, got {self.dn_nodata!r}")
      object.__setattr__(self, "dn_nodata", float(self.dn_nodata))

  @property
  def num_channels(self) -> int:
    return len(self.bands)

  @property
  def band_names(self) -> tuple[str, ...]:
    return tuple(b.name for b in self.bands)

  def nearest_band(self, wavelength_nm: float) -> int:
    """Channel index of the optical band whose centre is closest to `wavelength_nm`."""
    if self.modality not in OPTICAL_MODALITIES:
      raise ValueError(f"sensor {self.name!r} ({self.modality}) has no optical bands")
    centres = np.array([b.center_wavelength_nm for b in self.bands])
    return int(np.argmin(np.abs(centres - wavelength_nm)))

  def to_physical(self, dn: np.ndarray) -> np.ndarray:
    """(..., C) file values -> (..., C) float32 physical values (DN * dn_gain + dn_offset)."""
    dn = np.asarray(dn)
    self._check_channels(dn)
    out = dn.astype(np.float32)
    if self.dn_gain is not None:
      out *= np.asarray(self.dn_gain, np.float32)
    if self.dn_offset is not None:
      out += np.asarray(self.dn_offset, np.float32)
    return out

  def normalize(self, pixels: np.ndarray) -> np.ndarray:
    """(..., C) physical values -> (..., C) float32 (pixels - mean) / std per channel."""
    pixels = np.asarray(pixels)
    self._check_channels(pixels)
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    return ((pixels.astype(np.float32) - mean) / std).astype(np.float32)

  def denormalize(self, values: np.ndarray) -> np.ndarray:
    """Inverse of `normalize`: (..., C) -> (..., C) float32 physical values."""
    values = np.asarray(values)
    self._check_channels(values)
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    return (values.astype(np.float32) * std + mean).astype(np.float32)

  def _check_channels(self, pixels: np.ndarray) -> None:
    if pixels.ndim < 1 or pixels.shape[-1] != self.num_channels:
      raise ValueError(f"sensor {self.name!r} expects pixels of shape (..., "
                       f"{self.num_channels}), got {pixels.shape}")

  def to_dict(self) -> dict[str, Any]:
    """JSON-safe dict; `Sensor.from_dict(s.to_dict()) == s`."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["bands"] = [b.to_dict() for b in self.bands]
    d["mean"] = list(self.mean)
    d["std"] = list(self.std)
    for field in ("dn_gain", "dn_offset"):
      if d[field] is not None:
        d[field] = list(d[field])
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Sensor:
    """Builds a Sensor from `to_dict` output (or hand-written JSON/YAML).

    Raises:
      ValueError: naming the sensor and the bad field, for unknown or missing fields and
        invalid values.
    """
    if not isinstance(d, Mapping):
      raise SensorDefinitionError(f"a sensor must be a mapping of fields, got "
                                  f"{type(d).__name__}")
    name = d.get("name", "<unnamed>")
    owner = f"sensor {name!r}"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in d:
      if key not in fields:
        _fail(owner, key, f"unknown field; expected some of {', '.join(fields)}")
    for key, f in fields.items():
      no_default = (f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING)
      if no_default and key not in d:
        _fail(owner, key, "missing")
    kwargs = dict(d)
    raw_bands = kwargs["bands"]
    if isinstance(raw_bands, (str, bytes, Mapping)) or not isinstance(raw_bands, Sequence):
      _fail(owner, "bands", "must be a list of band mappings")
    band_fields = {f.name for f in dataclasses.fields(Band)}
    bands = []
    for i, b in enumerate(raw_bands):
      if isinstance(b, Band):
        bands.append(b)
        continue
      if not isinstance(b, Mapping):
        _fail(owner, f"bands[{i}]", f"must be a mapping, got {type(b).__name__}")
      unknown = set(b) - band_fields
      if unknown:
        _fail(owner, f"bands[{i}].{sorted(unknown)[0]}",
              f"unknown field; expected some of {', '.join(sorted(band_fields))}")
      try:
        bands.append(Band(**b))
      except (ValueError, TypeError) as e:
        raise SensorDefinitionError(f"{owner}: field 'bands[{i}]': {e}") from None
    kwargs["bands"] = tuple(bands)
    try:
      return cls(**kwargs)
    except TypeError as e:
      raise SensorDefinitionError(f"{owner}: {e}") from None


class UnknownSensorError(KeyError, UserError):
  """A sensor tag that is not in the registry (catchable as KeyError or ValueError)."""

  def __str__(self) -> str:
    # KeyError would print the message quoted, as it does for a missing dict key.
    return str(self.args[0]) if self.args else ""


class SensorRegistry:
  """Ordered name -> Sensor map; the position of a sensor is its stable integer id."""

  def __init__(self, sensors: Sequence[Sensor] = ()):
    self._sensors: dict[str, Sensor] = {}
    for s in sensors:
      self.register(s)

  def register(self, sensor: Sensor, overwrite: bool = False) -> None:
    """Adds `sensor` at the end; with `overwrite` replaces a same-named one in its place."""
    if not isinstance(sensor, Sensor):
      raise TypeError(f"expected a Sensor, got {type(sensor).__name__}")
    if sensor.name in self._sensors and not overwrite:
      raise SensorDefinitionError(f"sensor {sensor.name!r} is already registered; pass "
                                  "overwrite=True to replace it (or give the sensor a new name)")
    self._sensors[sensor.name] = sensor

  def get(self, name: str) -> Sensor:
    try:
      return self._sensors[name]
    except (KeyError, TypeError):
      raise UnknownSensorError(
          f"unknown sensor {name!r}; registered: {', '.join(self._sensors)}") from None

  def __getitem__(self, name: str) -> Sensor:
    return self.get(name)

  def __contains__(self, name: object) -> bool:
    return name in self._sensors

  def __iter__(self) -> Iterator[Sensor]:
    return iter(tuple(self._sensors.values()))

  def __len__(self) -> int:
    return len(self._sensors)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, SensorRegistry):
      return NotImplemented
    return list(self._sensors.items()) == list(other._sensors.items())

  def __repr__(self) -> str:
    return f"SensorRegistry({', '.join(self._sensors)})"

  def names(self) -> tuple[str, ...]:
    return tuple(self._sensors)

  def index(self, name: str) -> int:
    """Integer id of sensor `name` (its registration position), as stored in batches."""
    self.get(name)  # Raises the informative error for unknown names.
    return list(self._sensors).index(name)

  def load_file(self, path: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Registers the sensors of a JSON or YAML file; returns their names.

    The file holds one sensor mapping, a list of them, or `to_json` output
    (`{"version": 1, "sensors": [...]}`). YAML (.yaml/.yml) needs PyYAML.
    """
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except OSError as e:
      raise SensorDefinitionError(f"{path}: cannot read sensor file: {e.strerror or e}") from None
    if path.endswith((".yaml", ".yml")):
      try:
        import yaml  # pylint: disable=import-outside-toplevel
      except ImportError:
        raise SensorDefinitionError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                         "or write the sensors as JSON") from None
      data = yaml.safe_load(text)
    else:
      try:
        data = json.loads(text)
      except json.JSONDecodeError as e:
        raise SensorDefinitionError(f"{path}: not valid JSON: {e}") from None
    if isinstance(data, Mapping) and "sensors" in data:
      data = data["sensors"]
    entries = [data] if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
      raise SensorDefinitionError(f"{path}: expected a sensor mapping or a list of them")
    try:
      sensors = [Sensor.from_dict(e) for e in entries]
      for s in sensors:
        self.register(s, overwrite=overwrite)
    except ValueError as e:
      raise SensorDefinitionError(f"{path}: {e}") from None
    return [s.name for s in sensors]

  def to_dict(self) -> dict[str, Any]:
    """JSON-safe dict of all sensors in id order (e.g. for Orbax `JsonSave`)."""
    return {"version": REGISTRY_FORMAT_VERSION,
            "sensors": [s.to_dict() for s in self._sensors.values()]}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> SensorRegistry:
    version = d.get("version")
    if version != REGISTRY_FORMAT_VERSION:
      raise SensorDefinitionError(f"sensor registry format version {version!r} is not "
                                  f"supported (expected {REGISTRY_FORMAT_VERSION})")
    return cls([Sensor.from_dict(s) for s in d["sensors"]])

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)

  @classmethod
  def from_json(cls, text: str) -> SensorRegistry:
    return cls.from_dict(json.loads(text))


def merge_registries(saved: SensorRegistry, current: SensorRegistry) -> SensorRegistry:
  """Keeps the ids of a checkpoint's registry and appends the sensors that are new.

  The result holds `saved`'s sensors in `saved`'s order (so their ids, stored in the trained
  model's sensor embeddings and routing statistics, do not move), then those of `current` that
  `saved` lacks, in `current`'s order. A name defined differently in both keeps the saved
  definition (the model was trained with its statistics), with a warning naming the sensor.
  """
  merged = SensorRegistry(saved)
  for sensor in current:
    if sensor.name not in merged:
      merged.register(sensor)
    elif merged.get(sensor.name) != sensor:
      warnings.warn(f"sensor {sensor.name!r} is defined differently in the checkpoint's "
                    "registry and in this run's (built-ins, data.sensor_files, shard "
                    "manifests); the checkpoint's definition is kept", UserWarning, stacklevel=2)
  return merged


def _is_finite_number(v: Any) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
      and math.isfinite(v)


def _is_positive_number(v: Any) -> bool:
  return _is_finite_number(v) and v > 0


def default_registry() -> SensorRegistry:
  """A fresh registry with the built-in sensors (sensors/builtin.py), in fixed id order."""
  from ringmoe_jax.sensors.builtin import BUILTIN_SENSORS  # pylint: disable=import-outside-toplevel
  return SensorRegistry(BUILTIN_SENSORS)
