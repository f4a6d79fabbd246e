"""Bayesian speckle filtering with a masked-prediction prior (a blind-spot denoiser for SAR).

A masked-image model predicts each masked pixel's backscatter from its context only; it never
sees the pixel's own speckled value, which still carries information about that pixel (Laine et
al. 2019, "High-quality self-supervised deep image denoising"; Krull et al. 2020, "Probabilistic
Noise2Void"). Combining the two is the speckle MMSE filter (Lee, Kuan) with a learned prior:

  prior       s = ln sigma ~ Normal(ln sigma_pred + delta, tau^2)
  likelihood  I | sigma ~ Gamma(shape L, mean sigma)                   (L-look speckle)
  estimate    E[s | I] = integral s p(I | s) p(s) ds / p(I)

The integrals run on a grid of s per pixel: +-8 standard deviations of the Gaussian
approximation of the posterior (the speckle likelihood in ln sigma has variance trigamma(L)),
121 points, so that both a wide and a needle-sharp prior are resolved. The prior width tau (how far predictions are
from the truth, in ln units) and the offset delta (a decoder trained with the Gamma NLL
predicts the mean E[sigma | context], which lies above the median of a skewed posterior) are
fitted without clean data, by maximising the marginal likelihood p(I) of the observed
intensities given the predictions. tau -> infinity ignores the prediction; tau -> 0 ignores
the observation.

Axes: P pixels (flattened); looks broadcast against them. Intensities are linear, > 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln, polygamma

_GRID = jnp.linspace(-8.0, 8.0, 121)  # in standard deviations of the approximate posterior
# Searched by fit_prior: widths (0.02 trusts the prediction to 2%, 20 ignores it) and offsets.
WIDTH_GRID = jnp.logspace(jnp.log10(0.02), jnp.log10(20.0), 61)
SHIFT_GRID = jnp.linspace(-2.0, 2.0, 81)


def observation_log_backscatter(intensity: jax.Array, looks) -> jax.Array:
  """The estimate without a prediction (scale-invariant prior p(sigma) ~ 1 / sigma):
  E[ln sigma | I] = ln(L I) - digamma(L), i.e. ln I corrected for the speckle's log bias.
  The reference a prediction must beat to have added anything."""
  big_l = jnp.asarray(looks, jnp.float32)
  return jnp.log(big_l * intensity.astype(jnp.float32)) - digamma(big_l)


def _log_joint(log_pred, intensity, looks, width, shift):
  """(P, G) grid s, ln[p(I | s) p(s)] on it and (P, 1) grid steps (P pixels, G points)."""
  big_l = jnp.asarray(looks, jnp.float32)[..., None]
  i = intensity.astype(jnp.float32)[..., None]
  mu = log_pred.astype(jnp.float32)[..., None] + shift
  # Gaussian approximation: likelihood N(observation-only estimate, trigamma(L)), prior N(mu).
  var_lik = polygamma(1, big_l)
  var_post = 1.0 / (1.0 / var_lik + 1.0 / width ** 2)
  centre = var_post * (observation_log_backscatter(intensity, looks)[..., None] / var_lik
                       + mu / width ** 2)
  sd = jnp.sqrt(var_post)
  s = centre + sd * _GRID
  log_prior = -0.5 * jnp.square((s - mu) / width) - jnp.log(width) - 0.5 * jnp.log(2 * jnp.pi)
  log_lik = (big_l * jnp.log(big_l) - gammaln(big_l) + (big_l - 1.0) * jnp.log(i)
             - big_l * s - big_l * i * jnp.exp(-s))
  return s, log_prior + log_lik, sd * (_GRID[1] - _GRID[0])


def marginal_nll(log_pred: jax.Array, intensity: jax.Array, looks, width,
                 shift=0.0) -> jax.Array:
  """Mean -ln p(I | prediction, tau, delta) over pixels; log_pred, intensity (P,), I > 0."""
  _, lj, step = _log_joint(log_pred, intensity, looks, width, shift)
  return -jnp.mean(jax.nn.logsumexp(lj, axis=-1) + jnp.log(step[..., 0]))


def posterior_log_backscatter(log_pred: jax.Array, intensity: jax.Array, looks, width,
                              shift=0.0) -> jax.Array:
  """E[ln sigma | I, prediction] (P,) for intensities I > 0 (P,)."""
  s, lj, _ = _log_joint(log_pred, intensity, looks, width, shift)
  return jnp.sum(jax.nn.softmax(lj, axis=-1) * s, axis=-1)


@jax.jit
def fit_prior(log_pred: jax.Array, intensity: jax.Array, looks) -> tuple[jax.Array, jax.Array]:
  """(tau, delta) on WIDTH_GRID x SHIFT_GRID maximising the marginal likelihood, by three rounds
  of coordinate search (the likelihood is smooth and unimodal in each); no clean data used.
  Cost ~ P x 426 x 121 exponentials: pass a subsample of ~10^4 pixels."""
  nll = lambda t, d: marginal_nll(log_pred, intensity, looks, t, d)
  width, shift = WIDTH_GRID[-1], jnp.zeros((), jnp.float32)
  for _ in range(3):
    width = WIDTH_GRID[jnp.argmin(jax.lax.map(lambda t: nll(t, shift), WIDTH_GRID))]
    shift = SHIFT_GRID[jnp.argmin(jax.lax.map(lambda d: nll(width, d), SHIFT_GRID))]
  return width, shift
