"""GeoTIFF ingestion, tile shards read back through Grain and TFDS, and bad input."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from ringmoe_jax.data import ingest, pipeline, sources, tiles
from ringmoe_jax.sensors.registry import default_registry

REPO = pathlib.Path(__file__).resolve().parents[1]
TRANSFORM = from_origin(500000.0, 4000000.0, 10.0, 10.0)


def _write_tif(path, data, *, crs="EPSG:32633", nodata=0, transform=TRANSFORM):
  count, h, w = data.shape
  kw = dict(driver="GTiff", width=w, height=h, count=count, dtype=str(data.dtype))
  if crs is not None:
    kw.update(crs=crs, transform=transform)
  if nodata is not None:
    kw["nodata"] = nodata
  with rasterio.open(path, "w", **kw) as f:
    f.write(data)
  return str(path)


def _s2_scene(h=160, w=200):
  """(12, h, w) uint16 Sentinel-2 L2A DN with a nodata corner (rows < 60, cols < 70)."""
  rng = np.random.default_rng(0)
  data = rng.integers(1500, 5000, (12, h, w)).astype(np.uint16)
  data[:, :60, :70] = 0
  return data


def test_ingest_geotiff_counts_stats_georeference_and_grain_readback(tmp_path):
  data = _s2_scene()
  path = _write_tif(tmp_path / "s2.tif", data)
  out = tmp_path / "out"
  m = ingest.ingest([path], ["sentinel2_l2a"], str(out), size=64, stride=32,
                    max_nodata_fraction=0.15)
  # Tiles: rows 0, 32, 64, 96 (4) x cols 0, 32, ..., 128 (5) = 20 windows. Nodata fraction of a
  # window = overlap with [0, 60) x [0, 70) / 64^2.
  expected_drop = 0
  for y in range(0, 160 - 64 + 1, 32):
    for x in range(0, 200 - 64 + 1, 32):
      overlap = max(0, min(60, y + 64) - y) * max(0, min(70, x + 64) - x)
      expected_drop += overlap / 64 ** 2 > 0.15
  assert m["tiles_written"] + m["tiles_dropped"]["nodata_fraction"] == 20
  assert m["tiles_dropped"]["nodata_fraction"] == expected_drop
  # Per-band statistics over the valid pixels of the written tiles, recomputed here.
  sensor = default_registry().get("sentinel2_l2a")
  phys = sensor.to_physical(np.moveaxis(data, 0, -1))
  ref = []
  for y in range(0, 97, 32):
    for x in range(0, 137, 32):
      overlap = max(0, min(60, y + 64) - y) * max(0, min(70, x + 64) - x)
      if overlap / 64 ** 2 <= 0.15:
        t = phys[y:y + 64, x:x + 64]
        ref.append(t[(data[:, y:y + 64, x:x + 64] != 0).any(0)])
  ref = np.concatenate(ref).astype(np.float64)
  st = m["band_stats"]["sentinel2_l2a"]
  assert st["count"] == [len(ref)] * 12
  np.testing.assert_allclose(st["mean"], ref.mean(0), rtol=1e-6)
  np.testing.assert_allclose(st["std"], ref.std(0), rtol=1e-5)
  np.testing.assert_allclose(st["min"], ref.min(0), rtol=1e-6)
  # Georeference and pixels through Grain's ArrayRecordDataSource.
  src = sources.open_tiles(str(out))
  assert len(src) == m["tiles_written"]
  import grain
  ds = grain.MapDataset.source(src)
  seen = 0
  for y in range(0, 97, 32):
    for x in range(0, 137, 32):
      overlap = max(0, min(60, y + 64) - y) * max(0, min(70, x + 64) - x)
      if overlap / 64 ** 2 > 0.15:
        continue
      r = ds[seen]
      seen += 1
      assert r["crs"] == "EPSG:32633"
      assert r["transform"] == [10.0, 0.0, 500000.0 + 10 * x, 0.0, -10.0, 4000000.0 - 10 * y]
      valid = (data[:, y:y + 64, x:x + 64] != 0).any(0)
      np.testing.assert_array_equal(r["valid"], valid)
      want = np.where(valid[..., None], phys[y:y + 64, x:x + 64], 0)
      np.testing.assert_array_equal(r["pixels"], want)
  assert seen == len(src)
  # The manifest on disk is the returned one.
  assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(m))


def test_bands_subset_and_user_sensor_through_pipeline(tmp_path):
  path = _write_tif(tmp_path / "s2.tif", _s2_scene())
  out = tmp_path / "out"
  m = ingest.ingest([path], ["sentinel2_l2a"], str(out), bands=[["B8", "B4", "B3", "B2"]],
                    size=64, stride=64, max_nodata_fraction=1.0)
  name = "sentinel2_l2a_b2_b3_b4_b8"
  assert [s["name"] for s in m["sensors"]] == [name]
  # A user sensor from JSON (4-band MS) through make_source + the pipeline.
  user = dict(m["sensors"][0], name="my_s2_rgbn")
  sensor_file = tmp_path / "my.json"
  sensor_file.write_text(json.dumps(user))
  reg = default_registry()
  out2 = tmp_path / "out2"
  ingest.ingest([_write_tif(tmp_path / "four.tif", _s2_scene()[[1, 2, 3, 7]])], [str(sensor_file)],
                str(out2), size=64, stride=64, max_nodata_fraction=1.0)
  cfg = {"source": "arrayrecord", "paths": [str(out), str(out2)],
         "sensors": [name, "my_s2_rgbn"]}
  src = sources.make_source(cfg, reg, seed=0)
  assert name in reg and "my_s2_rgbn" in reg  # registered from the manifests
  ds = pipeline.make_dataset(src, registry=reg, batch_size=4, crop_size=32, max_channels=8, seed=0)
  b = ds[0]
  assert b["pixels"].shape == (4, 32, 32, 8)
  assert set(b["sensor"].tolist()) <= {reg.index(name), reg.index("my_s2_rgbn")}
  # Same DN, same band order -> same physical values in both outputs.
  a, c = sources.open_tiles(str(out))[0], sources.open_tiles(str(out2))[0]
  np.testing.assert_array_equal(a["pixels"], c["pixels"])


def test_group_mode_links_co_registered_tiles(tmp_path):
  rng = np.random.default_rng(1)
  opt = _write_tif(tmp_path / "opt.tif", rng.uniform(0.01, 0.3, (3, 96, 96)).astype(np.float32))
  sar = _write_tif(tmp_path / "sar.tif", rng.uniform(0.01, 1, (1, 96, 96)).astype(np.float32))
  m = ingest.ingest([opt, sar], ["gaofen2_pms", "gaofen3_amp"], str(tmp_path / "g"), size=64,
                    stride=32, group=True)
  assert m["tiles_written"] == 8
  src = sources.open_tiles(str(tmp_path / "g"))
  groups = {}
  for i in range(len(src)):
    r = src[i]
    groups.setdefault(r["group"], []).append((r["sensor"], tuple(r["transform"])))
  assert len(groups) == 4
  for members in groups.values():
    assert sorted(s for s, _ in members) == ["gaofen2_pms", "gaofen3_amp"]
    assert members[0][1] == members[1][1]


def test_tfds_data_source(tmp_path):
  import tensorflow_datasets as tfds
  from ringmoe_jax.data import tfds_tiles
  path = _write_tif(tmp_path / "s2.tif", _s2_scene(96, 96))
  ingest.ingest([path], ["sentinel2_l2a"], str(tmp_path / "out"), size=64, stride=32,
                max_nodata_fraction=1.0)
  tfds_tiles.build(str(tmp_path / "out"), str(tmp_path / "tfds"))
  ds = tfds.data_source("ringmoe_tiles", split="train", data_dir=str(tmp_path / "tfds"))
  src = tfds_tiles.TfdsTileSource(ds)
  ours = sources.open_tiles(str(tmp_path / "out"))
  assert len(src) == len(ours) > 0
  got = sorted((src[i] for i in range(len(src))), key=lambda r: r["transform"])
  want = sorted((ours[i] for i in range(len(ours))), key=lambda r: r["transform"])
  for a, b in zip(got, want):
    assert a["sensor"] == b["sensor"] and a["crs"] == b["crs"] and a["transform"] == b["transform"]
    np.testing.assert_array_equal(a["pixels"], b["pixels"])
    np.testing.assert_array_equal(a["valid"], b["valid"])
  assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------- bad input


def _cli(capsys, *args):
  rc = ingest.main(list(args))
  err = capsys.readouterr().err
  return rc, err


def test_unknown_sensor(tmp_path, capsys):
  path = _write_tif(tmp_path / "a.tif", _s2_scene(64, 64))
  rc, err = _cli(capsys, "--sensor=nope", f"--output={tmp_path / 'o'}", path)
  assert rc == 2 and err.startswith("error: --sensor=nope: unknown sensor 'nope'")
  assert "Traceback" not in err


def test_band_count_mismatch_names_both_counts(tmp_path, capsys):
  path = _write_tif(tmp_path / "a.tif", _s2_scene(64, 64)[:5])
  rc, err = _cli(capsys, "--sensor=sentinel2_l2a", f"--output={tmp_path / 'o'}", path)
  assert rc == 2 and err.startswith(f"error: {path}: file has 5 band(s)")
  assert "has 12" in err
  rc, err = _cli(capsys, "--sensor=sentinel2_l2a", "--bands=B2,B3", f"--output={tmp_path / 'o'}",
                 path)
  assert rc == 2 and f"{path}: --bands names 2 band(s)" in err and "file has 5" in err


def test_wrong_dtype(tmp_path, capsys):
  path = _write_tif(tmp_path / "f.tif", _s2_scene(64, 64).astype(np.float32))
  rc, err = _cli(capsys, "--sensor=sentinel2_l2a", f"--output={tmp_path / 'o'}", path)
  assert rc == 2 and err.startswith(f"error: {path}: dtype float32") and "uint16" in err


def test_nan_inf_masked_and_counted(tmp_path):
  data = np.full((3, 64, 64), 0.1, np.float32)
  data[0, 1, 2] = np.nan
  data[:, 3, 4] = np.inf
  data[2, 5, 6] = -np.inf
  path = _write_tif(tmp_path / "n.tif", data, nodata=None)
  m = ingest.ingest([path], ["gaofen2_pms"], str(tmp_path / "o"), size=64, stride=64)
  assert m["tiles_written"] == 1 and m["pixels_masked"]["nonfinite"] == 3
  r = sources.open_tiles(str(tmp_path / "o"))[0]
  assert (~r["valid"]).sum() == 3 and np.isfinite(r["pixels"]).all()
  assert not r["valid"][1, 2] and not r["valid"][3, 4] and not r["valid"][5, 6]


def test_group_needs_crs(tmp_path, capsys):
  a = _write_tif(tmp_path / "a.tif", np.ones((3, 64, 64), np.float32))
  b = _write_tif(tmp_path / "b.tif", np.ones((1, 64, 64), np.float32), crs=None)
  rc, err = _cli(capsys, "--group", "--sensor=gaofen2_pms", "--sensor=gaofen3_amp",
                 f"--output={tmp_path / 'o'}", a, b)
  assert rc == 2 and f"\nerror: {b}: raster has no CRS" in "\n" + err


def test_unreadable_raster(tmp_path, capsys):
  bad = tmp_path / "bad.tif"
  bad.write_bytes(b"II*\x00garbage" * 10)
  rc, err = _cli(capsys, "--sensor=gaofen2_pms", f"--output={tmp_path / 'o'}", str(bad))
  assert rc == 2 and err.startswith(f"error: {bad}: not a readable raster")


def _shards(tmp_path):
  path = _write_tif(tmp_path / "s2.tif", _s2_scene(192, 192))
  out = tmp_path / "out"
  ingest.ingest([path], ["sentinel2_l2a"], str(out), size=64, stride=16, records_per_shard=40)
  return out, json.loads((out / "manifest.json").read_text())


def test_corrupt_and_truncated_shards_name_the_file(tmp_path):
  out, m = _shards(tmp_path)
  shard = out / m["shards"][0]["path"]
  raw = shard.read_bytes()
  shard.write_bytes(raw[: len(raw) // 2])  # truncated
  with pytest.raises(tiles.TileFormatError, match=str(shard)):
    sources.open_tiles(str(out))
  shard.write_bytes(b"\x00" * len(raw))  # overwritten
  with pytest.raises(tiles.TileFormatError, match=str(shard)):
    sources.open_tiles(str(out))
  # A damaged record inside an intact container: decoding names shard and index.
  with pytest.raises(tiles.TileFormatError, match=r"x\.arrayrecord\[3\]: not a tile record"):
    tiles.decode_tile(b"\xc1garbage", where="x.arrayrecord[3]")


def test_cli_subprocess_prints_error_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  missing = tmp_path / "missing.tif"
  p = subprocess.run([sys.executable, "-m", "ringmoe_jax.data.ingest", "--sensor=gaofen2_pms",
                      f"--output={tmp_path / 'o'}", str(missing)], capture_output=True, text=True,
                     env=env, cwd=REPO, timeout=120)
  assert p.returncode == 2
  assert p.stderr.strip() == f"error: {missing}: no such file"
