"""Synthetic tiles (determinism, physics), record validation and the Grain pipeline."""
import json

import numpy as np
import pytest

from ringmoe_jax.data import augment, pipeline
from ringmoe_jax.data.records import validate_record
from ringmoe_jax.data.synthetic import URBAN, VEGETATION, WATER, SyntheticTiles
from ringmoe_jax.sensors import modalities
from ringmoe_jax.sensors.registry import default_registry

REG = default_registry()
# The paper's four sensors: the pipeline tests pad to 8 channels (sentinel2 has 13).
PAPER = ("gaofen2_pms", "gaofen1_wfv", "gaofen3_slc", "gaofen3_amp")


def _records_equal(a, b):
  assert a.keys() == b.keys()
  return all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- synthetic source


def test_synthetic_is_deterministic_in_seed_and_index():
  src = SyntheticTiles(20, 32, seed=7)
  again = SyntheticTiles(20, 32, seed=7)
  assert _records_equal(src[3], src[3]) and _records_equal(src[3], again[3])
  assert src[3]["sensor"] != src[4]["sensor"] or not np.array_equal(src[3]["pixels"],
                                                                    src[4]["pixels"])
  assert not np.array_equal(src[3]["class_map"], src[4]["class_map"])
  other = SyntheticTiles(20, 32, sensors=[src[3]["sensor"]], seed=8)
  assert not np.array_equal(src[3]["class_map"], other[3]["class_map"])
  with pytest.raises(IndexError):
    src[20]


@pytest.mark.parametrize("name", REG.names())
def test_synthetic_channels_per_sensor(name):
  src = SyntheticTiles(4, 32, sensors=[name])
  r = src[0]
  c = REG.get(name).num_channels
  assert r["sensor"] == name and r["index"] == 0
  assert r["pixels"].shape == (32, 32, c) and r["pixels"].dtype == np.float32
  assert r["valid"].shape == (32, 32) and r["valid"].dtype == bool
  assert r["class_map"].shape == (32, 32) and r["class_map"].dtype == np.int32
  assert np.isfinite(r["pixels"]).all()


def test_synthetic_weights_and_nodata_fraction():
  src = SyntheticTiles(400, 8, sensors=["gaofen2_pms", "gaofen3_amp"], weights=[3, 1])
  recs = [src[i] for i in range(400)]
  share = np.mean([r["sensor"] == "gaofen2_pms" for r in recs])
  assert 0.67 < share < 0.83
  with_nodata = [r for r in recs if not r["valid"].all()]
  assert 0.05 < len(with_nodata) / 400 < 0.16
  for r in with_nodata:
    assert (r["pixels"][~r["valid"]] == 0).all()


def test_ms_ndvi_by_class():
  sensor = REG.get("gaofen1_wfv")
  red, nir = sensor.nearest_band(660), sensor.nearest_band(830)
  src = SyntheticTiles(30, 64, sensors=[sensor.name], seed=1)
  ndvi = {VEGETATION: [], WATER: []}
  for i in range(len(src)):
    r = src[i]
    for k in ndvi:
      p = r["pixels"][(r["class_map"] == k) & r["valid"]]
      ndvi[k].append((p[:, nir] - p[:, red]) / (p[:, nir] + p[:, red]))
  assert np.concatenate(ndvi[VEGETATION]).mean() > 0.5
  assert np.concatenate(ndvi[WATER]).mean() < 0.0


def test_sar_l2_speckle_cv_matches_looks():
  sensor = REG.get("gaofen3_amp")
  src = SyntheticTiles(30, 64, sensors=[sensor.name], seed=2)
  ratios = []
  for i in range(len(src)):
    r = src[i]
    intensity = r["pixels"][..., 0].astype(np.float64) ** 2
    for k in np.unique(r["class_map"]):
      region = (r["class_map"] == k) & r["valid"]
      if region.sum() >= 200:  # homogeneous single-class area of the tile
        ratios.append(intensity[region] / intensity[region].mean())
  cv = np.concatenate(ratios).std()
  expected = 1 / np.sqrt(sensor.looks)
  assert abs(cv - expected) < 0.1 * expected, (cv, expected)


def test_sar_l1_polarimetric_signatures():
  src = SyntheticTiles(30, 64, sensors=["gaofen3_slc"], seed=3)
  hhvv = {URBAN: [], WATER: [], VEGETATION: []}
  hv_ratio = {VEGETATION: [], WATER: []}
  for i in range(len(src)):
    r = src[i]
    p = r["pixels"]
    hh, hv, vv = p[..., 0] + 1j * p[..., 1], p[..., 2] + 1j * p[..., 3], p[..., 6] + 1j * p[..., 7]
    for k in hhvv:
      m = (r["class_map"] == k) & r["valid"]
      hhvv[k].append((hh * np.conj(vv))[m])
    for k in hv_ratio:
      m = (r["class_map"] == k) & r["valid"]
      hv_ratio[k].append(np.stack([np.abs(hv[m]) ** 2, np.abs(hh[m]) ** 2]))
  assert np.concatenate(hhvv[URBAN]).mean().real < 0  # double bounce: HH-VV phase pi
  assert np.concatenate(hhvv[WATER]).mean().real > 0  # surface: in phase
  veg = np.concatenate(hv_ratio[VEGETATION], axis=1).mean(axis=1)
  water = np.concatenate(hv_ratio[WATER], axis=1).mean(axis=1)
  assert veg[0] / veg[1] > 0.2 > water[0] / water[1]  # volume scattering depolarises


def test_synthetic_generation_is_fast():
  import time
  src = SyntheticTiles(50, 64)
  src[0]
  start = time.perf_counter()
  for i in range(50):
    src[i]
  assert (time.perf_counter() - start) / 50 < 0.005


def test_registry_stats_normalise_synthetic_data():
  for name in REG.names():
    sensor = REG.get(name)
    src = SyntheticTiles(100, 32, sensors=[name], seed=5)
    px = np.concatenate([sensor.normalize(src[i]["pixels"])[src[i]["valid"]] for i in range(100)])
    assert np.all(np.abs(px.mean(0)) < 0.3), (name, px.mean(0))
    assert np.all((px.std(0) > 0.6) & (px.std(0) < 1.5)), (name, px.std(0))


# ---------------------------------------------------------------- record validation


def _record(sensor="gaofen1_wfv", shape=(64, 64, 4), **extra):
  return {"sensor": sensor, "pixels": np.ones(shape, np.float32), **extra}


def test_validate_unknown_sensor():
  with pytest.raises(ValueError) as e:
    validate_record(_record("nope"), REG, 4, where="tiles.arrayrecord[12]")
  msg = str(e.value)
  assert msg.startswith("tiles.arrayrecord[12]: unknown sensor 'nope'")
  assert all(n in msg for n in REG.names())


def test_validate_wrong_channels_names_sensor_and_shape():
  with pytest.raises(ValueError) as e:
    validate_record(_record(shape=(64, 64, 3)), REG, 4)
  assert str(e.value) == "sensor 'gaofen1_wfv' expects pixels of shape (H, W, 4), got (64, 64, 3)"
  with pytest.raises(ValueError, match=r"gaofen1_wfv.*\(H, W, 4\)"):
    validate_record(_record(shape=(64, 64)), REG, 4)


def test_validate_too_small_bad_mask_and_dtype():
  with pytest.raises(ValueError, match=r"f\.tif: sensor 'gaofen1_wfv'.*\(H, W, 4\).*>= 16"):
    validate_record(_record(shape=(8, 64, 4)), REG, 16, where="f.tif")
  with pytest.raises(ValueError, match=r"gaofen1_wfv.*valid.*\(64, 64\)"):
    validate_record(_record(valid=np.ones((32, 32), bool)), REG, 4)
  rec = _record()
  rec["pixels"] = rec["pixels"].astype(np.uint16)
  with pytest.raises(ValueError, match=r"gaofen1_wfv.*floating point.*uint16"):
    validate_record(rec, REG, 4)


def test_validate_masks_and_counts_nonfinite_and_nodata():
  rec = _record(valid=np.ones((64, 64), bool))
  rec["pixels"][1, 2, 0] = np.nan
  rec["pixels"][3, 4, :] = np.inf
  rec["pixels"][5, 6, 3] = -np.inf
  rec["pixels"][7, 8, :] = 0.0  # the sensor's nodata value in every channel
  rec["pixels"][9, 9, 0] = 0.0  # a single zero channel is data
  clean, stats = validate_record(rec, REG, 4)
  assert stats == {"nonfinite_pixels": 3, "nodata_pixels": 1, "invalid_pixels": 4}
  for y, x in [(1, 2), (3, 4), (5, 6), (7, 8)]:
    assert not clean["valid"][y, x] and (clean["pixels"][y, x] == 0).all()
  assert clean["valid"][9, 9] and np.isfinite(clean["pixels"]).all()
  assert np.isnan(rec["pixels"][1, 2, 0]) and rec["valid"].all()  # the input is untouched


# ---------------------------------------------------------------- pipeline


def _dataset(source=None, **kw):
  args = dict(registry=REG, batch_size=16, crop_size=32, max_channels=8, seed=0)
  args.update(kw)
  return pipeline.make_dataset(source or SyntheticTiles(64, 48, sensors=PAPER, seed=0),
                               **args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_pipeline_batch_shapes_dtypes_and_padding():
  it = pipeline.make_iterator(_dataset())
  b = next(it)
  it.close()
  assert set(b) == {"pixels", "valid", "modality", "sensor", "raw", "looks", "group"}
  assert b["pixels"].shape == b["raw"].shape == (16, 32, 32, 8)
  assert b["pixels"].dtype == b["raw"].dtype == b["valid"].dtype == np.float32
  assert b["valid"].shape == (16, 32, 32) and set(np.unique(b["valid"])) <= {0.0, 1.0}
  assert b["modality"].shape == b["sensor"].shape == (16,)
  assert b["modality"].dtype == b["sensor"].dtype == np.int32
  for j in range(16):
    sensor = REG.get(REG.names()[b["sensor"][j]])
    assert b["modality"][j] == modalities.modality_id(sensor.modality)
    c = sensor.num_channels
    assert not b["pixels"][j, ..., c:].any() and not b["raw"][j, ..., c:].any()
    invalid = b["valid"][j] == 0
    assert not b["pixels"][j][invalid].any() and not b["raw"][j][invalid].any()
    # pixels are the normalised raw values
    np.testing.assert_allclose(sensor.normalize(b["raw"][j, ..., :c])[~invalid],
                               b["pixels"][j, ..., :c][~invalid], atol=1e-4)


def test_pipeline_batch_mixes_modalities():
  b = _dataset()[0]  # equal sensor weights
  assert len(set(b["modality"].tolist())) > 1


def test_pipeline_resume_is_exact():
  ds = _dataset(batch_size=4)
  it = pipeline.make_iterator(ds)
  _take(it, 3)
  state = pipeline.state_from_json(pipeline.state_to_json(it.get_state()))
  a = _take(it, 2)
  it.close()
  it2 = pipeline.make_iterator(ds)
  it2.set_state(state)
  b = _take(it2, 2)
  it2.close()
  assert all(_records_equal(x, y) for x, y in zip(a, b))
  assert json.loads(json.dumps(state)) == state


def test_pipeline_is_infinite_and_reshuffles_each_epoch():
  ds = _dataset(SyntheticTiles(8, 16, sensors=PAPER), batch_size=4, crop_size=16, keep_index=True)
  epochs = [np.concatenate([ds[2 * e]["index"], ds[2 * e + 1]["index"]]) for e in range(4)]
  for e in epochs:
    assert sorted(e.tolist()) == list(range(8))
  assert len({tuple(e.tolist()) for e in epochs}) > 1


def test_shards_see_disjoint_indices():
  src = SyntheticTiles(24, 16, sensors=PAPER)
  seen = []
  for shard in range(2):
    ds = _dataset(src, batch_size=4, crop_size=16, keep_index=True, shard_index=shard,
                  shard_count=2)
    seen.append({int(i) for k in range(3) for i in ds[k]["index"]})  # one epoch: 12 records
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(24))


def test_eval_dataset_is_one_ordered_pass_with_center_crop():
  src = SyntheticTiles(10, 32, sensors=PAPER, seed=4)
  ds = pipeline.make_eval_dataset(src, registry=REG, batch_size=4, crop_size=32, max_channels=8,
                                  keep_index=True)
  batches = list(ds)
  assert [len(b["index"]) for b in batches] == [4, 4, 2]
  assert np.concatenate([b["index"] for b in batches]).tolist() == list(range(10))
  r = src[5]
  c = r["pixels"].shape[-1]
  np.testing.assert_array_equal(batches[1]["raw"][1, ..., :c], r["pixels"])
  # A crop larger than the tile pads with invalid zeros.
  big = pipeline.make_eval_dataset(src, registry=REG, batch_size=2, crop_size=40, max_channels=8)
  v = big[0]["valid"]
  assert v.shape == (2, 40, 40) and not v[:, :4].any() and not v[:, :, -4:].any()


def test_sar_augmentation_only_replicates_pixels():
  src = SyntheticTiles(8, 32, sensors=["gaofen3_amp"], nodata_fraction=0.0)
  ds = _dataset(src, batch_size=8, crop_size=32, shuffle=False, keep_index=True)
  b = ds[0]
  for j, i in enumerate(b["index"]):
    # Nearest resampling keeps the speckle values themselves: no blending.
    assert np.isin(b["raw"][j, ..., 0], src[int(i)]["pixels"][..., 0]).all()


def test_bilinear_identity_and_mask_propagation():
  rng = np.random.default_rng(0)
  pixels = rng.random((8, 8, 2)).astype(np.float32)
  valid = np.ones((8, 8), bool)
  valid[2, 3] = False
  out, out_valid = augment.resized_crop(pixels, valid, (0, 0, 8, 8), 8, "bilinear")
  np.testing.assert_allclose(out, pixels, atol=1e-6)
  np.testing.assert_array_equal(out_valid, valid)
  up, up_valid = augment.resized_crop(pixels, valid, (0, 0, 8, 8), 16, "bilinear")
  assert up.shape == (16, 16, 2) and (~up_valid).sum() > 4  # the hole grows with its support


def test_random_resized_crop_box_area():
  rng = np.random.default_rng(0)
  for _ in range(100):
    top, left, h, w = augment.random_resized_crop_box(rng, 64, 64)
    assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 64
    assert 0.17 < h * w / 64 ** 2 < 0.55


class _PairsOfOneTile:
  """co_registered=2: records 2g and 2g+1 are the same optical tile (a distinct gradient per
  group), so co-registered crops must come out equal, pixel for pixel."""
  co_registered = 2

  def __init__(self, groups: int = 8, size: int = 48):
    self._groups, self._size = groups, size

  def __len__(self):
    return 2 * self._groups

  def __getitem__(self, i):
    g = i // 2
    yy, xx = np.mgrid[0:self._size, 0:self._size].astype(np.float32)
    pix = np.stack([100 + yy * (g + 1), 100 + xx * 3, 100 + yy + xx], -1)  # 3 bands, DN
    return {"sensor": "gaofen2_pms", "pixels": pix,  # the optical sensor has 3 bands
            "valid": np.ones((self._size, self._size), bool), "group": f"g{g}"}


def test_co_registered_tiles_share_their_crop_and_flip():
  it = pipeline.make_iterator(_dataset(_PairsOfOneTile(), batch_size=8))
  batches = _take(it, 4)
  it.close()
  crops = set()
  for b in batches:
    for j in range(0, 8, 2):
      assert b["group"][j] == b["group"][j + 1]
      np.testing.assert_array_equal(b["raw"][j], b["raw"][j + 1])  # same box, same flip
      crops.add(b["raw"][j].tobytes())
  assert len(crops) == 16  # every group visit draws its own crop (8 groups, each seen twice)
