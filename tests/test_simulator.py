"""Scene simulator: determinism, physics per sensor, labels for the six tasks, speed."""
import time

import numpy as np
import pytest

from ringmoe_jax.data import simulator
from ringmoe_jax.data.simulator import SHIP, VEGETATION, WATER, SceneSimulator
from ringmoe_jax.sensors.registry import OPTICAL_MODALITIES, default_registry

REG = default_registry()
OPTICAL_WITH_NIR = [s.name for s in REG if s.modality in OPTICAL_MODALITIES
                    and max(b.center_wavelength_nm for b in s.bands) > 800]


def test_deterministic_per_seed_and_co_registered_groups():
  a = SceneSimulator(12, 48, seed=3, co_registered=3)
  b = SceneSimulator(12, 48, seed=3, co_registered=3)
  for i in (0, 4, 11):
    ra, rb = a[i], b[i]
    assert ra.keys() == rb.keys()
    for k in ra:
      assert np.array_equal(ra[k], rb[k]), k
  # Records 3, 4, 5 show one scene: same labels, one group id.
  g = [a[i] for i in (3, 4, 5)]
  assert len({r["group"] for r in g}) == 1 and g[0]["group"] != a[6]["group"]
  for r in g[1:]:
    np.testing.assert_array_equal(r["class_map"], g[0]["class_map"])
    np.testing.assert_array_equal(r["label_height"], g[0]["label_height"])
  c = SceneSimulator(12, 48, seed=4, co_registered=3)
  assert not np.array_equal(c[3]["class_map"], a[3]["class_map"])


@pytest.mark.parametrize("name", OPTICAL_WITH_NIR)
def test_ndvi_at_each_sensors_own_red_and_nir(name):
  sensor = REG.get(name)
  red, nir = sensor.nearest_band(660), sensor.nearest_band(850)
  sim = SceneSimulator(12, 64, sensors=[name], seed=1, nodata_fraction=0)
  ndvi = {VEGETATION: [], WATER: []}
  for i in range(len(sim)):
    r = sim[i]
    for k in ndvi:
      p = r["pixels"][r["class_map"] == k].astype(np.float64)
      ndvi[k].append((p[:, nir] - p[:, red]) / (p[:, nir] + p[:, red]))
  veg, water = np.concatenate(ndvi[VEGETATION]), np.concatenate(ndvi[WATER])
  assert len(veg) > 500 and len(water) > 200
  assert np.median(veg) > 0.5 and veg.mean() > 0.5, name
  assert np.median(water) < 0 and water.mean() < 0, name


@pytest.mark.parametrize("name", ["gaofen3_amp", "sentinel1_grd"])
def test_sar_intensity_cv_is_one_over_sqrt_looks(name):
  sensor = REG.get(name)
  expected = 1 / np.sqrt(sensor.looks)
  # Homogeneous regions: one class of one tile, with no within-class texture.
  sim = SceneSimulator(20, 64, sensors=[name], seed=2, nodata_fraction=0, sar_texture=0.0)
  cvs, speckle = [], []
  for i in range(len(sim)):
    r = sim[i]
    intensity = r["pixels"].astype(np.float64) ** 2  # amplitude products
    clean = r["clean"].astype(np.float64) ** 2
    speckle.append((intensity / clean).ravel())
    for k in np.unique(r["class_map"]):
      region = r["class_map"] == k
      if region.sum() >= 400:
        x = intensity[region][:, 0]
        cvs.append((x.std() / x.mean(), region.sum()))
  cv = np.average([c for c, _ in cvs], weights=[n for _, n in cvs])
  assert abs(cv - expected) < 0.05 * expected, (cv, expected)
  s = np.concatenate(speckle)
  assert abs(s.mean() - 1) < 0.01 and abs(s.std() - expected) < 0.05 * expected
  # With texture on (the default) the noise-free "clean" still gives the speckle exactly.
  r = SceneSimulator(4, 64, sensors=[name], seed=2, nodata_fraction=0)[0]
  ratio = (r["pixels"].astype(np.float64) / r["clean"]) ** 2
  assert abs(ratio.std() - expected) < 0.1 * expected


def test_quad_pol_slc_covariance_by_class():
  sim = SceneSimulator(20, 64, sensors=["gaofen3_slc"], seed=3, nodata_fraction=0)
  hhvv = {WATER: [], VEGETATION: []}
  ship_or_building = []
  for i in range(len(sim)):
    r = sim[i]
    p = r["pixels"]
    hh, vv = p[..., 0] + 1j * p[..., 1], p[..., 6] + 1j * p[..., 7]
    for k in hhvv:
      hhvv[k].append((hh * np.conj(vv))[r["class_map"] == k])
    ship_or_building.append((hh * np.conj(vv))[r["class_map"] >= simulator.BUILDING])
  assert np.concatenate(hhvv[WATER]).mean().real > 0
  w = np.concatenate(hhvv[VEGETATION])
  assert 0 < w.mean().real  # volume: weak positive HH-VV correlation (1/3)


def test_labels_for_six_tasks_agree():
  sim = SceneSimulator(40, 64, sensors=["gaofen2_pms", "gaofen3_amp"], seed=5)
  r = sim[7]
  cls = r["class_map"]
  assert r["label_class"] == np.bincount(cls.ravel()).argmax()  # classification
  boxes, rboxes = r["label_boxes"], r["label_rboxes"]  # detection (axis-aligned + rotated)
  assert boxes.shape[0] == rboxes.shape[0] == r["label_box_class"].shape[0]
  for (y0, x0, y1, x1), (cy, cx, _, _, _) in zip(boxes, rboxes):
    assert y0 <= cy <= y1 and x0 <= cx <= x1
  assert r["label_height"].shape == cls.shape  # height
  assert (r["label_height"][cls == simulator.BUILDING] >= 6).all()
  # Change detection: some scene has a change, and the change mask is where classes differ.
  changed = [sim.pair(s, "gaofen2_pms") for s in range(8)]
  assert any(p["change"].any() for p in changed)
  for p in changed:
    np.testing.assert_array_equal(p["change"], p["before"]["class_map"] != p["after"]["class_map"])
  # Tracking: ships move between frames and stay on their tracks.
  for s in range(40):
    seq = sim.sequence(s, "gaofen2_pms", frames=4)
    ships = [j for j in range(seq["tracks"].shape[1]) if seq["tracks"][0, j, 0] > 1000]
    if ships and np.isfinite(seq["tracks"][:, ships[0]]).all():
      t = seq["tracks"][:, ships[0]]
      step = np.diff(t[:, 1:3], axis=0)
      assert (np.abs(step).sum(1) > 0).all()
      np.testing.assert_allclose(step, np.broadcast_to(step[0], step.shape), atol=1e-4)
      assert (seq["frames"][1]["class_map"] == SHIP).any()
      break
  else:
    pytest.fail("no scene with a ship in 40")


def test_simulator_is_fast():
  sim = SceneSimulator(60, 80, sensors=["gaofen2_pms", "gaofen1_wfv", "gaofen3_slc",
                                        "gaofen3_amp"])
  sim[0]
  start = time.perf_counter()
  for i in range(60):
    sim[i]
  assert (time.perf_counter() - start) / 60 < 0.02
