"""Bayesian speckle filtering (objectives/speckle.py) against numerical integrals and simulation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate, stats

from ringmoe_jax.objectives import speckle

L = 4.4
posterior = jax.jit(speckle.posterior_log_backscatter)
observation_only = jax.jit(speckle.observation_log_backscatter)


def _joint(s, i, pred, tau, delta):
  """Gamma(I; L, mean e^s) * Normal(s; ln pred + delta, tau), by scipy."""
  return (stats.gamma.pdf(i, L, scale=math.exp(s) / L)
          * stats.norm.pdf(s, math.log(pred) + delta, tau))


def test_marginal_and_posterior_equal_numerical_integrals():
  pred, i, tau, delta = 0.7, 1.3, 0.6, -0.2
  joint = lambda s: _joint(s, i, pred, tau, delta)
  evidence = integrate.quad(joint, -20, 20, points=[0])[0]
  post = integrate.quad(lambda s: s * joint(s), -20, 20, points=[0])[0] / evidence
  args = (jnp.log(jnp.full((1,), pred, jnp.float32)), jnp.full((1,), i, jnp.float32), L, tau,
          delta)
  np.testing.assert_allclose(float(jax.jit(speckle.marginal_nll)(*args)), -math.log(evidence),
                             atol=1e-5)
  np.testing.assert_allclose(float(posterior(*args)[0]), post, atol=1e-5)


def test_limits_trust_the_prediction_or_the_observation():
  log_pred = jnp.asarray([0.0, 1.0, -2.0])
  obs = jnp.asarray([0.5, 3.0, 0.4])
  np.testing.assert_allclose(posterior(log_pred, obs, L, 0.02), log_pred, atol=5e-3)
  np.testing.assert_allclose(posterior(log_pred, obs, L, 20.0), observation_only(obs, L),
                             atol=2e-2)


def test_observation_only_estimate_is_unbiased_in_log():
  n = np.random.default_rng(0).gamma(L, 1 / L, 200_000)
  assert abs(np.mean(np.asarray(observation_only(jnp.asarray(2.0 * n), L))) - math.log(2)) < 5e-3
  assert abs(np.mean(np.log(n))) > 0.1  # the raw log intensity is biased by ~-0.12 at L = 4.4


def _simulate(tau0, n=10_000, seed=0):
  """Prediction, truth = prediction * lognormal(tau0) with mean 1, and L-look observation."""
  rng = np.random.default_rng(seed)
  pred = np.exp(rng.normal(0, 1, n))
  truth = pred * np.exp(tau0 * rng.normal(0, 1, n) - tau0 ** 2 / 2)
  return pred, truth, truth * rng.gamma(L, 1 / L, n)


def _errors(pred, truth, obs):
  """Fitted tau, delta and mean |ln error| of the posterior, the observation, the prediction."""
  log_pred, obs_j = jnp.log(jnp.asarray(pred, jnp.float32)), jnp.asarray(obs, jnp.float32)
  tau, delta = speckle.fit_prior(log_pred, obs_j, L)
  err = lambda est: float(np.mean(np.abs(np.asarray(est) - np.log(truth))))
  return (float(tau), float(delta), err(posterior(log_pred, obs_j, L, tau, delta)),
          err(observation_only(obs_j, L)), err(log_pred))


def test_fitted_width_recovers_the_prior_and_the_posterior_beats_both_sources():
  for tau0 in (0.2, 0.6):
    tau, delta, post, alone, pred = _errors(*_simulate(tau0))
    assert abs(math.log(tau / tau0)) < 0.15, (tau0, tau)
    assert abs(delta + tau0 ** 2 / 2) < 0.06, (tau0, delta)  # the simulated median offset
    assert post < 0.95 * min(alone, pred), (tau0, post, alone, pred)


def test_a_useless_prediction_gets_a_wide_prior_and_costs_nothing():
  pred, truth, obs = _simulate(0.2)
  pred = np.random.default_rng(1).permutation(pred)  # another pixel's prediction
  tau, _, post, alone, _ = _errors(pred, truth, obs)
  assert tau > 1.0, tau
  assert post < 1.01 * alone, (post, alone)
