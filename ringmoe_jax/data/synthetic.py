"""Synthetic sensor-tagged tiles: the built-in default data, a Grain random-access source.

Each record is a structured scene rendered through one registered sensor:

1. A land-cover map (`CLASSES`): warped Voronoi regions of water / vegetation / bare soil, an
   optional built-up block of rectangular buildings, and straight roads.
2. Rendering by the sensor's physics:
   * optical (opt, ms): per-class reflectance spectra averaged over each band's spectral window
     (box response), times mild within-class texture and a per-tile illumination gain, plus
     sensor noise. Vegetation has the red edge (NDVI ~0.8), water has NIR < red (NDVI < 0).
   * SAR: per-class polarimetric covariance of the lexicographic vector [HH, HV, VV] (water and
     roads: dark Bragg surface, VV > HH; bare soil: brighter surface; vegetation: volume, strong
     HV, HH-VV correlation 1/3; urban: bright double bounce, HH-VV phase pi). Complex channels
     (SLC) draw circular complex Gaussian scattering vectors per pixel, VH = HV (reciprocity)
     plus a little thermal noise. Detected channels draw sigma0 * Gamma(L, 1/L) speckle per pixel
     for L = sensor.looks, and output amplitude sqrt(I), intensity I, or dB.
3. Deterministically ~`nodata_fraction` of the tiles lose a half-plane strip (a scene edge):
   `valid` False and pixels 0 there.

The scene layout is in pixels and ignores the sensor's GSD: these tiles test the plumbing and the
physics terms, they are not a radiometric simulator of the named sensors.

Record i (deterministic in (seed, i); the sensor is drawn from `weights` by the same generator):
  {"sensor": str, "pixels": float32 (H, W, C), "valid": bool (H, W),
   "class_map": int32 (H, W) land cover (defined also under nodata), "index": int}
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ringmoe_jax.sensors.registry import (OPTICAL_MODALITIES, Sensor, SensorRegistry,
                                          default_registry)

CLASSES: tuple[str, ...] = ("water", "vegetation", "bare_soil", "urban", "road")
WATER, VEGETATION, BARE_SOIL, URBAN, ROAD = range(len(CLASSES))

# Reflectance spectra (0..1) at _WAVELENGTHS_NM, shaped like typical library spectra (USGS
# splib07 clear water, green grass, dry soil, concrete, asphalt), rounded.
_WAVELENGTHS_NM = np.array([400, 450, 500, 550, 600, 650, 700, 750, 800, 850, 900, 1000, 1600,
                            2200], np.float64)
_SPECTRA = np.array([
    [0.060, 0.070, 0.065, 0.060, 0.040, 0.030, 0.020, 0.015, 0.010, 0.008, 0.006, 0.004, 0.002,
     0.001],  # water: NIR < red
    [0.030, 0.035, 0.040, 0.090, 0.060, 0.040, 0.060, 0.300, 0.420, 0.440, 0.440, 0.420, 0.250,
     0.100],  # vegetation: chlorophyll absorption in red, red edge, NIR plateau
    [0.080, 0.100, 0.120, 0.150, 0.180, 0.210, 0.230, 0.250, 0.270, 0.280, 0.290, 0.310, 0.350,
     0.300],  # bare soil: rising
    [0.120, 0.130, 0.140, 0.150, 0.160, 0.170, 0.170, 0.180, 0.180, 0.190, 0.190, 0.200, 0.220,
     0.200],  # urban roofs / concrete: flat grey
    [0.060, 0.070, 0.075, 0.080, 0.085, 0.090, 0.095, 0.100, 0.105, 0.110, 0.110, 0.120, 0.140,
     0.130],  # asphalt road: dark, slowly rising
])

# C-band backscatter per class: powers <|HH|^2>, <|HV|^2>, <|VV|^2> (linear sigma0) and the
# complex HH-VV correlation coefficient. Values are in the usual ranges of C-band sigma0 (water
# -25 dB, vegetation -10 dB, urban double bounce ~ -2 dB).
_SAR_POWER = np.array([
    [0.003, 0.00015, 0.006],  # water: specular-ish, Bragg VV > HH
    [0.100, 0.03500, 0.100],  # vegetation: random volume, HV ~ 1/3 co-pol
    [0.040, 0.00400, 0.060],  # bare soil: rough surface
    [0.600, 0.03000, 0.350],  # urban: double bounce
    [0.006, 0.00030, 0.009],  # road: smooth surface
])
_SAR_HHVV_CORR = np.array([0.8, 1 / 3, 0.7, -0.6, 0.8], np.complex128)  # -0.6 = 0.6 e^{i pi}
_VH_NOISE = 0.02  # thermal noise power on VH relative to <|HV|^2>; reciprocity gives VH = HV.

_OPTICAL_TEXTURE = 0.08  # relative std of the smooth within-class brightness field
_OPTICAL_GRAIN = 0.03  # relative std of per-pixel brightness variation
_OPTICAL_NOISE = 0.003  # additive sensor noise, reflectance units
_SAR_TEXTURE = 0.05  # relative std of the smooth sigma0 field (keeps classes near-homogeneous)


def _sar_cholesky() -> np.ndarray:
  """(K, 3, 3) complex lower Cholesky factors of the per-class [HH, HV, VV] covariance."""
  factors = []
  for power, rho in zip(_SAR_POWER, _SAR_HHVV_CORR):
    amp = np.sqrt(power)
    corr = np.eye(3, dtype=np.complex128)
    corr[0, 2] = rho  # reflection symmetry: co-pol uncorrelated with cross-pol
    corr[2, 0] = np.conj(rho)
    factors.append(np.linalg.cholesky(corr * np.outer(amp, amp)))
  return np.stack(factors)


_SAR_CHOL = _sar_cholesky()


def band_average(sensor: Sensor, wavelengths_nm: np.ndarray, spectra: np.ndarray) -> np.ndarray:
  """(K, C): spectra (K, len(wavelengths_nm)) averaged over each band's window
  [centre -/+ bandwidth / 2] of `sensor`."""
  out = np.empty((len(spectra), sensor.num_channels))
  for c, band in enumerate(sensor.bands):
    half = band.bandwidth_nm / 2
    grid = np.linspace(band.center_wavelength_nm - half, band.center_wavelength_nm + half, 33)
    for k, spectrum in enumerate(spectra):
      out[k, c] = np.interp(grid, wavelengths_nm, spectrum).mean()
  return out


def band_reflectance(sensor: Sensor) -> np.ndarray:
  """(K, C) mean class reflectance over each band's window [centre -/+ bandwidth / 2]."""
  return band_average(sensor, _WAVELENGTHS_NM, _SPECTRA)


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
  """Bilinear (gh, gw) -> (h, w), corners aligned."""
  gh, gw = grid.shape
  y = np.linspace(0, gh - 1, h)
  x = np.linspace(0, gw - 1, w)
  y0 = np.minimum(y.astype(np.int64), gh - 2)
  x0 = np.minimum(x.astype(np.int64), gw - 2)
  wy = (y - y0)[:, None]
  wx = (x - x0)[None, :]
  top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
  bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
  return top * (1 - wy) + bottom * wy


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
  """(h, w) smooth random field, zero mean, ~`cells` features across the tile."""
  return _upsample(rng.standard_normal((cells + 1, cells + 1)), h, w)


def land_cover(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """(h, w) int32 class map: warped Voronoi regions, buildings, roads."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  size = float(max(h, w))
  # Domain warping bends the straight Voronoi edges into natural-looking boundaries.
  warp = 0.12 * size
  wy = yy + warp * _smooth_field(rng, h, w, 3)
  wx = xx + warp * _smooth_field(rng, h, w, 3)
  num_regions = int(rng.integers(3, 9))
  seeds = rng.uniform(0, 1, (num_regions, 2)) * (h, w)
  region_class = rng.choice([WATER, VEGETATION, BARE_SOIL], size=num_regions, p=[0.2, 0.45, 0.35])
  d2 = (wy[..., None] - seeds[:, 0]) ** 2 + (wx[..., None] - seeds[:, 1]) ** 2
  cls = region_class[np.argmin(d2, axis=-1)].astype(np.int32)

  # A built-up block in half of the tiles, a few isolated buildings elsewhere.
  if rng.random() < 0.5:
    bh, bw = rng.uniform(0.3, 0.7, 2) * (h, w)
    by, bx = rng.uniform(0, 1, 2) * (h - bh, w - bw)
    num_buildings = int(rng.integers(6, 17))
  else:
    by, bx, bh, bw = 0.0, 0.0, float(h), float(w)
    num_buildings = int(rng.integers(0, 3))
  for _ in range(num_buildings):
    sh, sw = rng.uniform(0.06, 0.2, 2) * size
    y0 = int(by + rng.uniform(0, max(bh - sh, 1)))
    x0 = int(bx + rng.uniform(0, max(bw - sw, 1)))
    y1, x1 = min(h, y0 + max(2, int(sh))), min(w, x0 + max(2, int(sw)))
    block = cls[y0:y1, x0:x1]
    block[block != WATER] = URBAN  # no buildings on water

  # Roads: straight lines at any angle; they may cross water (bridges).
  for _ in range(int(rng.choice(3, p=[0.3, 0.45, 0.25]))):
    theta = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.2, 0.8, 2) * (h, w)
    half_width = rng.uniform(0.5, 1.5) * max(1.0, size / 64)
    dist = np.abs((xx - cx) * np.sin(theta) - (yy - cy) * np.cos(theta))
    cls[dist <= half_width] = ROAD
  return cls


def render_optical(rng: np.random.Generator, cls: np.ndarray, refl: np.ndarray) -> np.ndarray:
  """(H, W) classes, (K, C) band reflectance -> (H, W, C) float32 reflectance."""
  h, w = cls.shape
  # Per-class brightness and per-tile illumination scale all bands alike, so indices
  # such as NDVI keep their class values.
  class_gain = 1 + 0.1 * rng.standard_normal(len(CLASSES))
  tile_gain = rng.uniform(0.9, 1.1)
  brightness = (1 + _OPTICAL_TEXTURE * _smooth_field(rng, h, w, 8)
                + _OPTICAL_GRAIN * rng.standard_normal((h, w)))
  pixels = (refl * class_gain[:, None] * tile_gain)[cls] * brightness[..., None]
  pixels += _OPTICAL_NOISE * rng.standard_normal(pixels.shape)
  # Positive floor: an all-zero pixel means nodata.
  return np.clip(pixels, 1e-4, 1.0).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """(h, w) smooth positive multiplicative field with mean ~1, relative std ~_SAR_TEXTURE."""
  return np.exp(_SAR_TEXTURE * _smooth_field(rng, h, w, 6))


def _complex_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """Circular complex Gaussian with E|z|^2 = 1."""
  return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * np.sqrt(0.5)


def render_sar(rng: np.random.Generator, cls: np.ndarray, sensor: Sensor) -> np.ndarray:
  """(H, W) classes -> (H, W, C) float32 SAR channels, one per sensor band (pol, component)."""
  h, w = cls.shape
  # Incidence-angle / calibration variation between tiles, then a smooth within-class texture.
  power_scale = rng.uniform(0.8, 1.25) * _texture(rng, h, w)
  complex_bands = any(b.component in ("real", "imag") for b in sensor.bands)
  out = np.empty((h, w, sensor.num_channels), np.float32)
  if complex_bands:
    k = np.einsum("hwij,hwj->hwi", _SAR_CHOL[cls], _complex_normal(rng, (h, w, 3)))
    k *= np.sqrt(power_scale)[..., None]
    hv = k[..., 1]
    vh = hv + np.sqrt(_VH_NOISE * _SAR_POWER[cls, 1] * power_scale) * _complex_normal(rng, (h, w))
    values = {"HH": k[..., 0], "HV": hv, "VH": vh, "VV": k[..., 2]}
    for c, band in enumerate(sensor.bands):
      v = values[band.polarization]
      out[..., c] = _component(v.real, v.imag, band.component, sensor)
    return out
  looks = sensor.looks or 1.0
  pol_column = {"HH": 0, "HV": 1, "VH": 1, "VV": 2}
  for c, band in enumerate(sensor.bands):
    sigma0 = _SAR_POWER[cls, pol_column[band.polarization]] * power_scale
    intensity = sigma0 * rng.gamma(looks, 1.0 / looks, (h, w))  # L-look speckle, mean 1
    out[..., c] = _detected(intensity, band.component, sensor)
  return out


def _component(re: np.ndarray, im: np.ndarray, component: str, sensor: Sensor) -> np.ndarray:
  if component == "real":
    return re
  if component == "imag":
    return im
  return _detected(re * re + im * im, component, sensor)


def _detected(intensity: np.ndarray, component: str, sensor: Sensor) -> np.ndarray:
  if sensor.scale == "db":
    return 10 * np.log10(np.maximum(intensity, 1e-10))  # same dB for amplitude and intensity
  if sensor.scale != "linear":
    raise ValueError(f"sensor {sensor.name!r}: synthetic SAR supports scale 'linear' or 'db', "
                     f"got {sensor.scale!r}")
  if component == "amplitude":
    return np.sqrt(intensity)
  if component == "intensity":
    return intensity
  raise ValueError(f"sensor {sensor.name!r}: component {component!r} is not detected")


def nodata_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """(h, w) bool, True on a half-plane strip covering 10-40% of the tile (a scene edge)."""
  theta = rng.uniform(0, 2 * np.pi)
  yy, xx = np.mgrid[0:h, 0:w]
  proj = xx * np.cos(theta) + yy * np.sin(theta)
  return proj > np.quantile(proj, 1 - rng.uniform(0.1, 0.4))


class SyntheticTiles:
  """Grain random-access source of synthetic tiles from a mix of registered sensors.

  Picklable (plain numpy and dataclasses), so multiprocess Grain workers can hold it.
  """

  def __init__(self, num_tiles: int, tile_size: int = 64, sensors: Sequence[str] | None = None,
               weights: Sequence[float] | None = None, registry: SensorRegistry | None = None,
               seed: int = 0, nodata_fraction: float = 0.1):
    """Args:
      num_tiles: number of records.
      tile_size: tiles are (tile_size, tile_size) pixels.
      sensors: registry names to draw from; default all sensors of the registry.
      weights: relative frequency of each sensor; default equal.
      registry: sensor registry; default `default_registry()`.
      seed: base seed; record i uses `np.random.default_rng([seed, i])`.
      nodata_fraction: expected fraction of tiles with a nodata strip.
    """
    registry = default_registry() if registry is None else registry
    names = tuple(registry.names() if sensors is None else sensors)
    if not names:
      raise ValueError("SyntheticTiles needs at least one sensor")
    self._sensors = tuple(registry.get(n) for n in names)
    for s in self._sensors:
      if s.modality in OPTICAL_MODALITIES and s.scale != "reflectance":
        raise ValueError(f"sensor {s.name!r}: synthetic optical tiles are reflectance, but the "
                         f"sensor's scale is {s.scale!r}")
    if weights is None:
      weights = [1.0] * len(names)
    weights = np.asarray(weights, np.float64)
    if weights.shape != (len(names),) or np.any(weights < 0) or weights.sum() <= 0:
      raise ValueError(f"weights must be {len(names)} non-negative numbers with a positive sum, "
                       f"got {weights.tolist()}")
    if tile_size < 4:
      raise ValueError(f"tile_size must be at least 4, got {tile_size}")
    self._probs = weights / weights.sum()
    self._num_tiles = int(num_tiles)
    self._tile_size = int(tile_size)
    self._seed = int(seed)
    self._nodata_fraction = float(nodata_fraction)
    self._reflectance = {s.name: band_reflectance(s) for s in self._sensors
                         if s.modality in OPTICAL_MODALITIES}

  def __len__(self) -> int:
    return self._num_tiles

  def __repr__(self) -> str:
    # Grain's DataLoader checkpoints compare the source repr.
    names = ",".join(s.name for s in self._sensors)
    return (f"SyntheticTiles(num_tiles={self._num_tiles}, tile_size={self._tile_size}, "
            f"sensors=[{names}], probs={np.round(self._probs, 6).tolist()}, seed={self._seed}, "
            f"nodata_fraction={self._nodata_fraction})")

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._num_tiles:
      raise IndexError(f"record {index} out of range for {self._num_tiles} tiles")
    rng = np.random.default_rng([self._seed, index])
    sensor = self._sensors[int(rng.choice(len(self._sensors), p=self._probs))]
    size = self._tile_size
    has_nodata = rng.random() < self._nodata_fraction
    cls = land_cover(rng, size, size)
    if sensor.modality in OPTICAL_MODALITIES:
      pixels = render_optical(rng, cls, self._reflectance[sensor.name])
    else:
      pixels = render_sar(rng, cls, sensor)
    valid = np.ones((size, size), bool)
    if has_nodata:
      valid = ~nodata_mask(rng, size, size)
      pixels[~valid] = 0.0
    return {"sensor": sensor.name, "pixels": pixels, "valid": valid, "class_map": cls,
            "index": index}
