"""Physics-informed loss terms against closed forms, real Sentinel-2 data, and the empty cases.

Also PIMask (objectives/pimask.py), which has no test file of its own.

The computations under test run under jax.jit: eagerly, each op compiles on its own, which on the
2-core CI machine with 8 fake devices costs far more than the tests themselves.
"""
import json
import math
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ringmoe_jax.objectives import masking, physics, pimask
from ringmoe_jax.sensors.registry import Band, Sensor, default_registry


def _finite_tree(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def _all_zero(tree) -> bool:
  return all(float(np.max(np.abs(np.asarray(x)))) == 0 for x in jax.tree.leaves(tree))


def _to_channels(s: np.ndarray) -> np.ndarray:
  """(..., 4) complex -> (..., 8) [re, im] interleaved per polarisation."""
  return np.stack([s.real, s.imag], axis=-1).reshape(s.shape[:-1] + (8,)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# SAR-L1.
# ---------------------------------------------------------------------------------------------


def test_span_of_known_scattering_matrix():
  hh, hv, vh, vv = 1 + 1j, 0.5j, 0.5j, -2.0 + 0j  # 2 + 0.25 + 0.25 + 4
  span = jax.jit(physics.polarimetric_span)(
      *(np.asarray(c, np.complex64) for c in (hh, hv, vh, vv)))
  assert float(span) == pytest.approx(6.5, rel=1e-6)
  x = _to_channels(np.array([[hh, hv, vh, vv]]))
  assert x.tolist() == [[1, 1, 0, 0.5, 0, 0.5, -2, 0]]
  assert float(jax.jit(physics.span_from_channels)(x)[0]) == pytest.approx(6.5, rel=1e-6)


def test_phase_invariant_loss_zero_under_global_phase_positive_otherwise():
  rng = np.random.default_rng(0)
  t = rng.normal(size=(3, 5, 5, 4)) + 1j * rng.normal(size=(3, 5, 5, 4))
  phases = np.array([0.3, -2.0, 3.0])[:, None, None, None]  # a different phase per tile
  loss_fn = jax.jit(physics.phase_invariant_complex_loss)
  loss, count = loss_fn(jnp.asarray(_to_channels(t * np.exp(1j * phases))),
                        jnp.asarray(_to_channels(t)), None)
  assert float(count) == 3
  assert float(loss) < 1e-5
  # A relative phase between polarisations is physics, not a global phase: it must cost.
  bad = t.copy()
  bad[..., 1] *= np.exp(1j * 1.0)
  loss_bad, _ = loss_fn(jnp.asarray(_to_channels(bad)), jnp.asarray(_to_channels(t)), None)
  assert float(loss_bad) > 0.05
  # Closed form against a brute-force search over the phase, tile by tile.
  p = t + 0.5 * (rng.normal(size=t.shape) + 1j * rng.normal(size=t.shape))
  got, _ = loss_fn(jnp.asarray(_to_channels(p)), jnp.asarray(_to_channels(t)), None)
  phi = np.linspace(-np.pi, np.pi, 20001)
  want = []
  for b in range(3):
    res = [np.sum(np.abs(p[b] - np.exp(1j * f) * t[b]) ** 2) for f in phi[::100]]
    f0 = phi[::100][int(np.argmin(res))]
    fine = f0 + np.linspace(-0.02, 0.02, 401)
    want.append(min(np.sum(np.abs(p[b] - np.exp(1j * f) * t[b]) ** 2) for f in fine)
                / np.sum(np.abs(t[b]) ** 2))
  assert float(got) == pytest.approx(np.mean(want), rel=1e-4)
  # pred = 2 * target: P = 4T, |c| = 2T -> (4T + T - 4T) / T = 1.
  two, _ = loss_fn(jnp.asarray(_to_channels(2 * t)), jnp.asarray(_to_channels(t)), None)
  assert float(two) == pytest.approx(1.0, rel=1e-5)


def test_phase_invariant_loss_empty_and_zero_power():
  pred = np.ones((2, 4, 4, 8), np.float32)
  zero = np.zeros((2, 4, 4, 8), np.float32)
  loss_fn = jax.jit(physics.phase_invariant_complex_loss)
  f = lambda p, t, m: physics.phase_invariant_complex_loss(p, t, m)[0]
  grad_fn = jax.jit(jax.grad(f, argnums=(0, 1)))
  for tgt, mask in ((zero, None), (pred, np.zeros((2, 4, 4), bool))):
    loss, count = loss_fn(pred, tgt, mask)
    assert float(loss) == 0 and float(count) == 0
    g = grad_fn(pred, tgt, mask)
    assert _finite_tree(g) and _all_zero(g)
  # pred = 0 with a real target: loss 1, finite gradient (|c| at c = 0).
  g = jax.jit(jax.grad(f))(zero, pred, None)
  assert float(jax.jit(f)(zero, pred, None)) == pytest.approx(1.0) and _finite_tree(g)


# ---------------------------------------------------------------------------------------------
# SAR-L2.
# ---------------------------------------------------------------------------------------------


def test_gamma_nll_equals_formula_at_known_point():
  sigma, looks, i_obs = 0.7, 4.0, 0.9
  nll = jax.jit(lambda s, i, include_constants=True: physics.gamma_nll(
      jnp.log(s), i, looks, include_constants=include_constants),
                static_argnames="include_constants")
  got, count = nll(np.float32(sigma), np.float32(i_obs))
  by_hand = (looks * math.log(sigma) + looks * i_obs / sigma - (looks - 1) * math.log(i_obs)
             - looks * math.log(looks) + math.lgamma(looks))
  assert float(count) == 1
  assert float(got) == pytest.approx(by_hand, rel=1e-5)
  stats = pytest.importorskip("scipy.stats")
  ref = -stats.gamma.logpdf(i_obs, a=looks, scale=sigma / looks)
  assert float(got) == pytest.approx(ref, rel=1e-5)
  # Dropping the constants keeps only the prediction-dependent part.
  short, _ = nll(np.float32(sigma), np.float32(i_obs), include_constants=False)
  assert float(short) == pytest.approx(looks * math.log(sigma) + looks * i_obs / sigma, rel=1e-5)


@pytest.mark.parametrize("looks", [1.0, 4.0])
def test_gamma_nll_minimised_at_true_backscatter(looks):
  sigma = 0.35
  rng = np.random.default_rng(1)
  samples = rng.gamma(shape=looks, scale=sigma / looks, size=20000).astype(np.float32)
  grid = np.log(sigma) + np.linspace(-1.0, 1.0, 401)  # 0.5 % steps in sigma
  nll = jax.jit(jax.vmap(lambda s: physics.gamma_nll(jnp.full(samples.shape, s),
                                                     jnp.asarray(samples), looks)[0]))(
                                                         np.asarray(grid, np.float32))
  best = math.exp(grid[int(np.argmin(np.asarray(nll)))])
  assert best == pytest.approx(float(samples.mean()), rel=0.01)
  assert best == pytest.approx(sigma, rel=0.03)
  # The per-pixel NLL gradient is L (1 - I / sigma): zero on average at the sample mean.
  g_sum = jax.jit(lambda s: jnp.sum(
      jax.grad(lambda s: physics.gamma_nll(s, jnp.asarray(samples), looks)[0])(s)))(
          np.full(samples.shape, np.log(samples.mean()), np.float32))
  assert abs(float(g_sum)) < 1e-3


def test_gamma_nll_zero_power_and_empty_mask():
  s = np.zeros((2, 3, 3), np.float32)
  f = lambda s, i, m: physics.gamma_nll(s, i, 4.0, m)[0]
  nll = jax.jit(physics.gamma_nll)  # looks traced: one program for L = 1 and L = 4
  grad_fn = jax.jit(jax.grad(f, argnums=(0, 1)))
  for i_obs, mask in ((np.zeros((2, 3, 3), np.float32), None),
                      (np.ones((2, 3, 3), np.float32), np.zeros((2, 3, 3), bool))):
    for looks in (1.0, 4.0):
      loss, count = nll(s, i_obs, looks, mask)
      assert float(loss) == 0 and float(count) == 0
    g = grad_fn(s, i_obs, mask)
    assert _finite_tree(g) and _all_zero(g)
  # Zero-power pixels inside an otherwise valid tile are dropped, not counted.
  i_obs = np.ones((2, 3, 3), np.float32)
  i_obs[0, 0, 0] = i_obs[1, 2, 2] = 0.0
  loss, count = jax.jit(f)(s, i_obs, None), nll(s, i_obs, 4.0)[1]
  assert float(count) == 16 and bool(np.isfinite(loss))
  assert _finite_tree(grad_fn(s, i_obs, None))
  # Absurd predictions stay finite.
  assert bool(np.isfinite(jax.jit(f)(np.full((2, 3, 3), -200.0, np.float32),
                                     np.ones((2, 3, 3), np.float32), None)))


def test_estimate_looks():
  rng = np.random.default_rng(2)
  x = rng.gamma(shape=4.0, scale=0.25, size=(2, 200, 200)).astype(np.float32)
  enl, n = jax.jit(physics.estimate_looks, static_argnames="axis")(x, axis=(1, 2))
  assert n.shape == (2,) and np.allclose(np.asarray(enl), 4.0, rtol=0.05)
  enl0, n0 = jax.jit(physics.estimate_looks)(x, np.zeros(x.shape, bool))
  assert float(enl0) == 0 and float(n0) == 0
  enl_const, _ = jax.jit(physics.estimate_looks)(np.ones((10,), np.float32))
  assert float(enl_const) == 0  # zero variance: undefined, reported as 0


# ---------------------------------------------------------------------------------------------
# Multispectral.
# ---------------------------------------------------------------------------------------------


def test_spectral_angle_closed_forms():
  t = np.asarray([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], np.float32)
  p = np.asarray([[0.3, 0.6, 0.9, 1.2], [0.0, 2.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], np.float32)
  sam = jax.jit(physics.spectral_angle)
  for i, want in enumerate((0.0, math.pi / 2, math.pi / 4)):
    got, count = sam(p[i], t[i], None)
    assert float(count) == 1
    assert float(got) == pytest.approx(want, abs=1e-6)
  got, count = sam(p, t, None)
  assert float(count) == 3 and float(got) == pytest.approx(math.pi / 4, abs=1e-6)
  # Gradient at exactly parallel spectra is finite (arccos would give inf).
  g = jax.jit(jax.grad(lambda p: physics.spectral_angle(p, t[0])[0]))(p[0])
  assert _finite_tree(g)


def test_spectral_angle_zero_vectors_and_empty_mask():
  t = np.zeros((2, 4), np.float32)
  p = np.ones((2, 4), np.float32)
  sam = jax.jit(physics.spectral_angle)
  f = lambda p, t, m: physics.spectral_angle(p, t, m)[0]
  grad_fn = jax.jit(jax.grad(f, argnums=(0, 1)))
  for tgt, mask in ((t, None), (p, np.zeros((2,), bool))):
    loss, count = sam(p, tgt, mask)
    assert float(loss) == 0 and float(count) == 0
    g = grad_fn(p, tgt, mask)
    assert _finite_tree(g) and _all_zero(g)
  loss, count = sam(np.zeros((4,), np.float32), np.ones((4,), np.float32), None)
  assert float(count) == 1 and float(loss) == pytest.approx(math.pi / 2)
  assert _finite_tree(jax.jit(jax.grad(f))(np.zeros((4,), np.float32),
                                          np.ones((4,), np.float32), None))


def _sentinel2_patch() -> np.ndarray:
  """The real 300x300 Sentinel-2 patch shipped with spyndex: (300, 300, 4) B02, B03, B04, B08,
  reflectance x 1e4. Read from the package data (spyndex.datasets.open needs xarray)."""
  pytest.importorskip("spyndex")
  with (resources.files("spyndex.data") / "S2_10m.json").open("r", encoding="utf-8") as f:
    return np.moveaxis(np.asarray(json.load(f), np.float64), 0, -1)


def _sentinel2_sensor(order):
  """A 10 m Sentinel-2A MSI sensor with bands from spyndex's band table, in `order`."""
  spyndex = pytest.importorskip("spyndex")
  bands = {}
  for key, name in (("B", "B02"), ("G", "B03"), ("R", "B04"), ("N", "B08")):
    b = spyndex.bands[key].sentinel2a
    bands[name] = Band(name, center_wavelength_nm=b.wavelength, bandwidth_nm=b.bandwidth)
  return Sensor(name="sentinel2a_msi_10m", modality="ms", bands=tuple(bands[n] for n in order),
                gsd_m=10, product_level="L2A", scale="reflectance", mean=(0.1,) * 4,
                std=(0.1,) * 4)


def test_ndvi_ndwi_by_wavelength_match_spyndex_on_real_sentinel2():
  spyndex = pytest.importorskip("spyndex")
  patch = _sentinel2_patch() / 1e4  # reflectance
  assert patch.shape == (300, 300, 4)
  # Deliberately not in wavelength order: bands must be found by wavelength, not position.
  order = ("B08", "B03", "B02", "B04")
  sensor = _sentinel2_sensor(order)
  x = patch[..., [("B02", "B03", "B04", "B08").index(n) for n in order]]
  assert physics.index_bands(sensor, "NDVI") == (0, 3)
  assert physics.index_bands(sensor, "NDWI") == (1, 0)
  params = {"N": patch[..., 3], "R": patch[..., 2], "G": patch[..., 1]}
  for index in ("NDVI", "NDWI"):
    ref = np.asarray(spyndex.computeIndex(index, params=params))
    got = jax.jit(physics.normalized_difference, static_argnums=(1, 2))(
        np.asarray(x, np.float32), *physics.index_bands(sensor, index))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
    if index == "NDVI":
      ndvi = ref
  assert ndvi.std() > 0.05 and ndvi.max() > 0.5  # a real scene with vegetation, not a constant
  # No SWIR on this sensor: NDBI fails naming the sensor and the band.
  with pytest.raises(ValueError, match=r"NDBI.*sentinel2a_msi_10m.*swir1"):
    physics.index_bands(sensor, "NDBI")


def test_index_bands_on_registry_sensors():
  reg = default_registry()
  assert physics.index_bands(reg["gaofen1_wfv"], "NDVI") == (3, 2)
  assert physics.index_bands(reg["gaofen1_wfv"], "NDWI") == (1, 3)
  with pytest.raises(ValueError, match=r"gaofen2_pms.*nir"):
    physics.index_bands(reg["gaofen2_pms"], "NDVI")  # RGB only
  with pytest.raises(ValueError, match=r"gaofen3_amp.*no optical bands"):
    physics.index_bands(reg["gaofen3_amp"], "NDVI")
  with pytest.raises(ValueError, match="unknown spectral index"):
    physics.index_bands(reg["gaofen1_wfv"], "EVI9")


def test_spectral_index_loss():
  sensor = _sentinel2_sensor(("B02", "B03", "B04", "B08"))
  t = np.asarray(_sentinel2_patch()[:32, :32] / 1e4, np.float32)
  loss_fn = jax.jit(lambda p, t, m: physics.spectral_index_loss(p, t, sensor, ("NDVI", "NDWI"), m))
  loss, count = loss_fn(t, t, None)
  assert float(loss) == 0 and float(count) == 2 * 32 * 32
  # Brightening NIR by 20 % changes both indices; the loss is their mean absolute change.
  p = jax.jit(lambda t: t.at[..., 3].multiply(1.2))(t)
  loss, _ = loss_fn(p, t, None)
  nd = lambda x, a, b: (x[..., a] - x[..., b]) / (x[..., a] + x[..., b])
  want = 0.5 * (np.mean(np.abs(nd(p, 3, 2) - nd(t, 3, 2)))
                + np.mean(np.abs(nd(p, 1, 3) - nd(t, 1, 3))))
  assert float(loss) == pytest.approx(float(want), rel=1e-4)
  # All-nodata tile and empty mask: 0, count 0, zero gradients.
  z = np.zeros_like(t)
  grad_fn = jax.jit(jax.grad(lambda p, tgt, mask: loss_fn(p, tgt, mask)[0]))
  for tgt, mask in ((z, None), (t, np.zeros(t.shape[:2], bool))):
    loss, count = loss_fn(p, tgt, mask)
    assert float(loss) == 0 and float(count) == 0
    g = grad_fn(p, tgt, mask)
    assert _finite_tree(g) and _all_zero(g)


# ---------------------------------------------------------------------------------------------
# Optical calibration.
# ---------------------------------------------------------------------------------------------


def test_toa_reflectance():
  dn = np.asarray([[100.0, 200.0]], np.float32)
  gain, offset = np.asarray([0.1, 0.2], np.float32), np.asarray([-1.0, 0.0], np.float32)
  toa = jax.jit(physics.toa_reflectance)  # the None-ness of esun / sun_elevation is static
  np.testing.assert_allclose(toa(dn, gain, offset), [[9.0, 40.0]])
  # rho = pi L d^2 / (ESUN sin(elev)): elev 30 deg -> sin 0.5.
  rho = toa(dn, gain, offset, esun=np.asarray([1500.0, 1000.0], np.float32),
            sun_elevation=30.0, earth_sun_distance=1.01)
  want = np.pi * np.array([9.0, 40.0]) * 1.01 ** 2 / (np.array([1500.0, 1000.0]) * 0.5)
  np.testing.assert_allclose(np.asarray(rho)[0], want, rtol=1e-5)
  # Reflectance coefficients + sun-angle correction (Landsat style).
  np.testing.assert_allclose(toa(dn, gain, offset, sun_elevation=90.0),
                             [[9.0, 40.0]], rtol=1e-6)
  assert _finite_tree(toa(dn, gain, offset, sun_elevation=0.0))
  with pytest.raises(ValueError, match="sun_elevation"):
    toa(dn, gain, offset, esun=np.asarray([1.0, 1.0], np.float32))


# ---------------------------------------------------------------------------------------------
# PIMask.
# ---------------------------------------------------------------------------------------------


def test_pimask_counts_cells_and_determinism():
  key = jax.random.key(3)
  cfg = pimask.PIMaskConfig(cell=4, cell_ratio=0.5, in_cell_ratio=0.25)
  draw = jax.jit(cfg.__call__, static_argnums=(1, 2))
  m = draw(key, 3, (16, 16))
  assert m.shape == (3, 16, 16) and m.dtype == jnp.bool_
  # 16 cells, 8 selected, 4 of 16 tokens masked in each.
  assert np.asarray(m).sum(axis=(1, 2)).tolist() == [32, 32, 32]
  cells = np.asarray(m).reshape(3, 4, 4, 4, 4).transpose(0, 1, 3, 2, 4).reshape(3, 16, 16)
  per_cell = cells.sum(-1)
  assert set(np.unique(per_cell).tolist()) == {0, 4}
  assert (per_cell == 4).sum(axis=1).tolist() == [8, 8, 8]
  assert np.array_equal(m, cfg(key, 3, (16, 16)))  # eager: same mask as compiled
  assert not np.array_equal(m, draw(jax.random.key(4), 3, (16, 16)))
  # Selected cells are the ones block_mask would select with the same key.
  full = jax.jit(lambda k: pimask.pimask(k, 3, (16, 16), 4, 0.5, 1.0))(key)
  assert np.array_equal(full, jax.jit(lambda k: masking.block_mask(k, 3, (16, 16), 4, 0.5))(key))
  assert bool(np.all(np.asarray(full) | ~np.asarray(m)))
  with pytest.raises(ValueError, match="not divisible"):
    pimask.pimask(key, 1, (10, 16), 4, 0.5, 0.5)
  with pytest.raises(ValueError, match="in_cell_ratio"):
    pimask.PIMaskConfig(in_cell_ratio=0.0)
