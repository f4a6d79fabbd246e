"""Physics-informed loss terms: SAR polarimetry and speckle, spectral consistency, calibration.

Pure, jit-able functions; the training loss wires them in. Axes: B tiles, ... any pixel axes
(e.g. H, W), C channels of one sensor.

Conventions shared by every loss here:
  * `mask` is a validity / weight mask broadcastable to the per-element shape the loss documents
    (bool or float weights >= 0). Elements the physics leaves undefined (zero-power SAR pixels,
    zero-norm target spectra, zero target power) are dropped from the mask by the loss itself.
  * Every loss returns `(value, count)`: `value` is the weighted mean over the valid elements,
    `count` the sum of their weights (float32 scalars). With no valid element both are exactly 0,
    and the gradient is finite (zero): undefined elements are replaced by harmless stand-ins
    *before* any log / division / sqrt (the double-`where` trick), because masking only the
    result still lets NaN reach the gradient through `0 * inf`.
  * `value * count` summed over devices or modalities, divided by the summed counts, gives the
    global mean.
  * Inputs are in physical units (linear SAR values, reflectance), not the normalised network
    space: denormalise the decoder output with the sensor's mean/std first.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from ringmoe_jax.sensors.registry import OPTICAL_MODALITIES, Sensor

# Largest exponent fed to exp() in the Gamma NLL: keeps the loss finite (f32 overflows near 88)
# for absurd predictions; far beyond any real backscatter ratio (e^60 ~ 260 dB).
_MAX_LOG_RATIO = 60.0


# ------------------------------------------------------------------------------------------------
# Masked reductions.
# ------------------------------------------------------------------------------------------------


def _weights(mask: jax.Array | None, shape: Sequence[int]) -> jax.Array:
  """Mask as float32 weights broadcast to `shape` (all ones when `mask` is None)."""
  if mask is None:
    return jnp.ones(shape, jnp.float32)
  return jnp.broadcast_to(jnp.asarray(mask).astype(jnp.float32), shape)


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den where den > 0, else 0; finite gradient either way."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _masked_mean(values: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum(w * v) / sum(w), sum(w)); (0, 0) when every weight is 0. `values` must be finite."""
  # where, not multiply: a masked-out element that is +-inf would otherwise give 0 * inf = NaN.
  total = jnp.sum(jnp.where(weights > 0, values * weights, 0.0))
  count = jnp.sum(weights)
  return _safe_ratio(total, count), count


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt with a zero (not infinite) gradient at x <= 0."""
  ok = x > 0
  return jnp.where(ok, jnp.sqrt(jnp.where(ok, x, 1.0)), 0.0)


# ------------------------------------------------------------------------------------------------
# SAR-L1: polarimetric power and phase-invariant complex reconstruction.
# ------------------------------------------------------------------------------------------------


def polarimetric_span(hh: jax.Array, hv: jax.Array, vh: jax.Array, vv: jax.Array) -> jax.Array:
  """Total power |HH|^2 + |HV|^2 + |VH|^2 + |VV|^2 of a scattering matrix (any shape, complex).

  All four channels count (no reciprocity factor 2 on HV), as in RingMoE's span target.
  """
  return sum(jnp.square(jnp.real(s)) + jnp.square(jnp.imag(s)) for s in (hh, hv, vh, vv))


def channels_to_complex(x: jax.Array) -> jax.Array:
  """(..., 8) [HH.re, HH.im, HV.re, HV.im, VH.re, VH.im, VV.re, VV.im] -> (..., 4) complex."""
  if x.shape[-1] != 8:
    raise ValueError(f"expected 8 quad-pol channels (re/im of HH, HV, VH, VV), got {x.shape}")
  return jax.lax.complex(x[..., 0::2].astype(jnp.float32), x[..., 1::2].astype(jnp.float32))


def span_from_channels(x: jax.Array) -> jax.Array:
  """(..., 8) quad-pol real/imag channels -> (...) span; see `polarimetric_span`."""
  if x.shape[-1] != 8:
    raise ValueError(f"expected 8 quad-pol channels (re/im of HH, HV, VH, VV), got {x.shape}")
  return jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)


def phase_invariant_complex_loss(pred: jax.Array, target: jax.Array,
                                 mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Complex reconstruction error up to one global phase per tile, relative to target power.

  The absolute phase of an SLC tile is arbitrary (it depends on the exact range to each
  scatterer), while the phase differences between the polarisation channels carry physics; so
  each tile b may be rotated by one phase phi_b common to all pixels and channels:

    loss_b = min_phi sum_valid |pred - e^{i phi} target|^2 / sum_valid |target|^2
           = (P_b + T_b - 2 |c_b|) / T_b,   c_b = sum_valid conj(target) * pred,

  with P_b, T_b the powers of pred and target over the valid pixels; the minimiser is
  phi_b = arg(c_b). 0 for pred = e^{i phi} target, 1 for pred = 0.

  Args:
    pred, target: (B, ..., 8) real/imag quad-pol channels (see `channels_to_complex`).
    mask: (B, ...) valid pixels (broadcastable), or None for all. Zero-power target pixels are
      dropped (SAR no-data).
  Returns:
    (mean over tiles of loss_b, number of tiles with valid target power > 0).
  """
  if pred.shape != target.shape:
    raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
  p = channels_to_complex(pred)  # (B, ..., 4)
  t = channels_to_complex(target)
  t_pow = span_from_channels(target)  # (B, ...)
  w = _weights(mask, t_pow.shape) * (t_pow > 0)
  red = tuple(range(1, t_pow.ndim))
  wc = w[..., None]
  c = jnp.sum(jnp.conj(t) * p * wc, axis=red + (t_pow.ndim,))  # (B,)
  big_p = jnp.sum(span_from_channels(pred) * w, axis=red)
  big_t = jnp.sum(t_pow * w, axis=red)
  abs_c = _safe_sqrt(jnp.square(jnp.real(c)) + jnp.square(jnp.imag(c)))
  # Rounding can push the residual a hair below 0 at the optimum.
  per_tile = _safe_ratio(jnp.maximum(big_p + big_t - 2.0 * abs_c, 0.0), big_t)
  tile_ok = (big_t > 0).astype(jnp.float32)
  return _masked_mean(per_tile, tile_ok)


# ------------------------------------------------------------------------------------------------
# SAR-L2: speckle likelihood.
# ------------------------------------------------------------------------------------------------


def gamma_nll(log_backscatter_pred: jax.Array, intensity_obs: jax.Array, looks: jax.Array | float,
              mask: jax.Array | None = None, *,
              include_constants: bool = True) -> tuple[jax.Array, jax.Array]:
  """Negative log-likelihood of speckled intensity under fully developed L-look speckle.

  Fully developed speckle: I = sigma * n, n ~ Gamma(shape L, mean 1), so I ~ Gamma(shape L,
  mean sigma) with sigma the backscatter. Per pixel,

    NLL = L log sigma + L I / sigma - (L - 1) log I - L log L + log Gamma(L),

  computed from s = log sigma (L s + L exp(log I - s)), so the decoder predicts log backscatter,
  never a negative or zero sigma, and the optimum is sigma = E[I | scene], not the speckle. The
  last three terms do not depend on the prediction; `include_constants=False` drops them (same
  gradients; the value is then not a true NLL). exp's argument is capped at 60 so that absurd
  predictions stay finite.

  Args:
    log_backscatter_pred: (...) predicted log sigma (natural log, linear intensity units).
    intensity_obs: (...) observed intensity, linear (an amplitude product: pass A**2; a dB product:
      10 ** (dB / 10)). Pixels with I <= 0 or non-finite are dropped (zero-power SAR pixels).
    looks: L > 0, scalar or broadcastable (per tile / per pixel), e.g. `Sensor.looks` or
      `estimate_looks`.
    mask: (...) validity / weights, broadcastable; None for all.
  Returns:
    (mean NLL over valid pixels, number of valid pixels).
  """
  s = log_backscatter_pred.astype(jnp.float32)
  i_obs = intensity_obs.astype(jnp.float32)
  shape = jnp.broadcast_shapes(s.shape, i_obs.shape)
  ok = (i_obs > 0) & jnp.isfinite(i_obs)
  w = _weights(mask, shape) * ok
  i_safe = jnp.where(ok, i_obs, 1.0)  # log(0) and its infinite derivative never get computed.
  log_i = jnp.log(i_safe)
  big_l = jnp.asarray(looks, jnp.float32)
  ratio = jnp.exp(jnp.minimum(log_i - s, _MAX_LOG_RATIO))  # I / sigma
  nll = big_l * s + big_l * ratio
  if include_constants:
    nll = nll - (big_l - 1.0) * log_i - big_l * jnp.log(big_l) + jax.scipy.special.gammaln(big_l)
  return _masked_mean(jnp.broadcast_to(nll, shape), w)


def estimate_looks(intensity: jax.Array, mask: jax.Array | None = None,
                   axis: int | Sequence[int] | None = None) -> tuple[jax.Array, jax.Array]:
  """Equivalent number of looks ENL = mean^2 / var of intensity over a region.

  Valid only over a homogeneous region (one backscatter); texture inflates the variance, so a
  whole heterogeneous tile underestimates L. Uses the unbiased variance.

  Args:
    intensity: (...) linear intensity; non-finite values are dropped.
    mask: (...) region / weights, broadcastable; None for all.
    axis: axes to reduce (None: all), e.g. (1, 2) for one ENL per tile of (B, H, W).
  Returns:
    (ENL, count): ENL is 0 where undefined (fewer than 2 samples, zero mean or zero variance).
  """
  x = intensity.astype(jnp.float32)
  ok = jnp.isfinite(x)
  w = _weights(mask, x.shape) * ok
  x = jnp.where(ok, x, 0.0)
  n = jnp.sum(w, axis=axis)
  mean = _safe_ratio(jnp.sum(w * x, axis=axis), n)
  mean_b = mean if axis is None else jnp.expand_dims(mean, axis)
  var = _safe_ratio(jnp.sum(w * jnp.square(x - mean_b), axis=axis), n - 1.0)
  enl = jnp.where(n >= 2, _safe_ratio(jnp.square(mean), var), 0.0)
  return enl, n


# ------------------------------------------------------------------------------------------------
# Multispectral: spectral angle and normalised-difference indices chosen by wavelength.
# ------------------------------------------------------------------------------------------------


def spectral_angle(pred: jax.Array, target: jax.Array,
                   mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Spectral angle mapper (SAM): angle in radians between pred and target spectra per pixel.

  Computed as 2 atan2(|p^ - t^|, |p^ + t^|) on unit vectors (Kahan), accurate and with a finite
  gradient near 0 and pi, unlike arccos of the cosine. Pixels with a zero target spectrum are
  dropped (no-data); a zero predicted spectrum counts as pi/2 (orthogonal), with zero gradient.

  Args:
    pred, target: (..., C) spectra, physical units (scale-invariant, not offset-invariant).
    mask: (...) valid pixels, broadcastable; None for all.
  Returns:
    (mean angle over valid pixels in [0, pi], number of valid pixels).
  """
  if pred.shape != target.shape:
    raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
  p = pred.astype(jnp.float32)
  t = target.astype(jnp.float32)
  p2 = jnp.sum(jnp.square(p), axis=-1, keepdims=True)
  t2 = jnp.sum(jnp.square(t), axis=-1, keepdims=True)
  p_ok, t_ok = p2 > 0, t2 > 0
  # Zero spectra are swapped for a stand-in before normalising (no 0/0 forward or backward).
  p_hat = jnp.where(p_ok, p, 1.0) * jax.lax.rsqrt(jnp.where(p_ok, p2, p.shape[-1] * 1.0))
  t_hat = jnp.where(t_ok, t, 1.0) * jax.lax.rsqrt(jnp.where(t_ok, t2, t.shape[-1] * 1.0))
  diff = _safe_sqrt(jnp.sum(jnp.square(p_hat - t_hat), axis=-1))
  summ = _safe_sqrt(jnp.sum(jnp.square(p_hat + t_hat), axis=-1))
  angle = jnp.where(p_ok[..., 0], 2.0 * jnp.arctan2(diff, summ), 0.5 * math.pi)
  w = _weights(mask, angle.shape) * t_ok[..., 0]
  return _masked_mean(angle, w)


def normalized_difference(x: jax.Array, band_a: int, band_b: int, eps: float = 1e-6) -> jax.Array:
  """(..., C) -> (...) (x_a - x_b) / (x_a + x_b); 0 where |x_a + x_b| <= eps (finite gradient)."""
  a = x[..., band_a].astype(jnp.float32)
  b = x[..., band_b].astype(jnp.float32)
  den = a + b
  ok = jnp.abs(den) > eps
  return jnp.where(ok, (a - b) / jnp.where(ok, den, 1.0), 0.0)


# Spectral regions: nominal centre (nm) and the window a sensor's band centre must fall in.
# Nominal centres follow Sentinel-2 MSI (B03, B04, B08, B11, B12); windows cover Landsat 8/9
# OLI, Sentinel-2, Gaofen-1/2/6 and similar instruments.
SPECTRAL_REGIONS: dict[str, tuple[float, tuple[float, float]]] = {
    "blue": (490.0, (440.0, 520.0)),
    "green": (560.0, (520.0, 600.0)),
    "red": (665.0, (620.0, 700.0)),
    "nir": (842.0, (760.0, 900.0)),
    "swir1": (1610.0, (1550.0, 1750.0)),
    "swir2": (2190.0, (2080.0, 2350.0)),
}

# Index -> (region a, region b) of (a - b) / (a + b).
INDICES: dict[str, tuple[str, str]] = {
    "NDVI": ("nir", "red"),     # Rouse et al. 1974.
    "NDWI": ("green", "nir"),   # McFeeters 1996 (open water).
    "NDBI": ("swir1", "nir"),   # Zha et al. 2003 (built-up).
    "MNDWI": ("green", "swir1"),  # Xu 2006.
}


def region_band(sensor: Sensor, region: str) -> int:
  """Channel of `sensor` whose centre wavelength lies in `region`'s window, nearest its centre.

  Raises:
    ValueError: naming the sensor and the missing region (with its window) if no band fits.
  """
  if region not in SPECTRAL_REGIONS:
    raise ValueError(f"unknown spectral region {region!r}; expected one of "
                     f"{', '.join(SPECTRAL_REGIONS)}")
  if sensor.modality not in OPTICAL_MODALITIES:
    raise ValueError(f"sensor {sensor.name!r} ({sensor.modality}) has no optical bands")
  centre, (lo, hi) = SPECTRAL_REGIONS[region]
  fits = [(abs(b.center_wavelength_nm - centre), i) for i, b in enumerate(sensor.bands)
          if lo <= b.center_wavelength_nm <= hi]
  if not fits:
    have = ", ".join(f"{b.name} {b.center_wavelength_nm:g} nm" for b in sensor.bands)
    raise ValueError(f"sensor {sensor.name!r} has no {region} band (centre {lo:g}-{hi:g} nm); "
                     f"its bands: {have}")
  return min(fits)[1]


def index_bands(sensor: Sensor, index: str) -> tuple[int, int]:
  """Channel positions (a, b) of `index` = (a - b) / (a + b) for `sensor`, chosen by wavelength.

  Raises:
    ValueError: for an unknown index, or (naming the sensor and band) when the sensor lacks a
      band the index needs, e.g. NDBI on a sensor without SWIR.
  """
  if index not in INDICES:
    raise ValueError(f"unknown spectral index {index!r}; expected one of {', '.join(INDICES)}")
  a, b = INDICES[index]
  try:
    return region_band(sensor, a), region_band(sensor, b)
  except ValueError as e:
    raise ValueError(f"{index}: {e}") from None


def spectral_index_loss(pred: jax.Array, target: jax.Array, sensor: Sensor,
                        indices: Sequence[str], mask: jax.Array | None = None,
                        eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """Mean |index(pred) - index(target)| over valid pixels and the given indices.

  Bands are resolved from the sensor (static Python, at trace time), so call once per sensor,
  with `mask` selecting that sensor's tiles. Pixels where the target's index is undefined
  (|a + b| <= eps, e.g. no-data) are dropped for that index.

  Args:
    pred, target: (..., C) the sensor's channels in reflectance units.
    indices: names from `INDICES`, e.g. ("NDVI", "NDWI").
    mask: (...) valid pixels, broadcastable; None for all.
  Returns:
    (mean absolute index difference over (pixel, index) pairs, number of such pairs).
  """
  if pred.shape != target.shape:
    raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
  if pred.shape[-1] != sensor.num_channels:
    raise ValueError(f"sensor {sensor.name!r} has {sensor.num_channels} bands, pred has "
                     f"{pred.shape[-1]} channels")
  if not indices:
    raise ValueError("spectral_index_loss needs at least one index")
  total = jnp.zeros((), jnp.float32)
  count = jnp.zeros((), jnp.float32)
  for name in indices:
    ia, ib = index_bands(sensor, name)
    t = target.astype(jnp.float32)
    defined = jnp.abs(t[..., ia] + t[..., ib]) > eps
    err = jnp.abs(normalized_difference(pred, ia, ib, eps) - normalized_difference(t, ia, ib, eps))
    w = _weights(mask, err.shape) * defined
    mean, n = _masked_mean(err, w)
    total, count = total + mean * n, count + n
  return _safe_ratio(total, count), count


# ------------------------------------------------------------------------------------------------
# Optical: radiometric calibration.
# ------------------------------------------------------------------------------------------------


def toa_reflectance(dn: jax.Array, gain: jax.Array | Sequence[float],
                    offset: jax.Array | Sequence[float], esun: jax.Array | None = None,
                    sun_elevation: jax.Array | float | None = None,
                    earth_sun_distance: jax.Array | float = 1.0) -> jax.Array:
  """Digital numbers -> top-of-atmosphere reflectance, per band (last axis).

  With `esun` (radiance calibration, e.g. CRESDA's Gaofen coefficients):
    L   = gain * DN + offset                       (W m^-2 sr^-1 um^-1)
    rho = pi * L * d^2 / (ESUN * sin(elevation))   (sin(elev) = cos(solar zenith))
  with d the Earth-Sun distance in AU and ESUN the band's mean exo-atmospheric solar irradiance
  (W m^-2 um^-1).
  Without `esun` (gain/offset already in reflectance units, e.g. Landsat's
  REFLECTANCE_MULT/ADD): rho = gain * DN + offset, divided by sin(elevation) when
  `sun_elevation` is given (Landsat's sun-angle correction), else returned as is.

  Args:
    dn: (..., C) digital numbers.
    gain, offset: (C,) or broadcastable per-band coefficients.
    esun: (C,) or broadcastable, or None.
    sun_elevation: degrees, scalar or broadcastable (e.g. (B, 1, 1, 1) per tile); needed with
      `esun`. Non-positive elevations (sun below the horizon) give 0, not inf.
    earth_sun_distance: d in astronomical units (1.0 = mean distance).
  Returns:
    (..., C) float32 TOA reflectance.
  Raises:
    ValueError: `esun` without `sun_elevation`.
  """
  x = jnp.asarray(gain, jnp.float32) * jnp.asarray(dn, jnp.float32) + jnp.asarray(offset,
                                                                                  jnp.float32)
  if esun is None and sun_elevation is None:
    return x
  if esun is not None:
    if sun_elevation is None:
      raise ValueError("toa_reflectance: converting radiance with esun needs sun_elevation "
                       "(degrees)")
    d = jnp.asarray(earth_sun_distance, jnp.float32)
    x = math.pi * x * jnp.square(d) / jnp.asarray(esun, jnp.float32)
  sin_e = jnp.sin(jnp.deg2rad(jnp.asarray(sun_elevation, jnp.float32)))
  return _safe_ratio(x, jnp.broadcast_to(sin_e, jnp.broadcast_shapes(sin_e.shape, x.shape)))
