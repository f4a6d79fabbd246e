"""Dataset readers (data/readers/): records from files written here, splits, and bad input.

Sensors (default_registry): 'sentinel2_l2a' 12 bands uint16, physical = DN * 1e-4 - 0.1,
dn_nodata 0; 'gaofen2_pms' 3 bands (R, G, B) and 'gaofen3_amp' 1 band (HH amplitude): no DN
scaling, physical = the file's values.
"""
import json
import os
import pickle
import warnings

import grain
import numpy as np
import pytest
import rasterio

from ringmoe_jax.data.readers import READERS, make_reader
from ringmoe_jax.data.readers import raster, tfds_source
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import UnknownSensorError, default_registry

REG = default_registry()
S = 16  # image side


def _write(path, data, nodata=None):
  """data (C, H, W) -> a GeoTIFF / PNG / JPEG by suffix (no georeference: not needed here)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  driver = {".png": "PNG", ".jpg": "JPEG"}.get(os.path.splitext(path)[1], "GTiff")
  kw = dict(driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
            dtype=str(data.dtype))
  if nodata is not None:
    kw["nodata"] = nodata
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
    with rasterio.open(path, "w", **kw) as f:
      f.write(data)
  return str(path)


def _s2(seed, nodata_rows=4):
  """(12, S, S) uint16 Sentinel-2 DNs; rows < nodata_rows are nodata (0 in every band)."""
  dn = np.random.default_rng(seed).integers(1000, 5000, (12, S, S)).astype(np.uint16)
  dn[:, :nodata_rows] = 0
  return dn


def _rgb(seed):
  return np.random.default_rng(seed).integers(1, 255, (3, S, S)).astype(np.uint8)


def _message(excinfo) -> str:
  return str(excinfo.value)


def _cfg(fmt, root, sensor, **kw):
  return dict(format=fmt, root=str(root), sensor=sensor, **kw)


# --- class folders -----------------------------------------------------------------------------
def test_class_folders_geotiff_physical_values_nodata_labels_and_grain(tmp_path):
  dns = {}
  for c, cls in enumerate(("Forest", "AnnualCrop")):
    for i in range(3):
      dns[f"{cls}/{cls}_{i}.tif"] = _s2(10 * c + i)
      _write(str(tmp_path / cls / f"{cls}_{i}.tif"), dns[f"{cls}/{cls}_{i}.tif"], nodata=0)
  (tmp_path / "Forest" / "notes.txt").write_text("not an image")  # skipped: not a raster
  src = make_reader(_cfg("class_folders", tmp_path, "sentinel2_l2a", val_fraction=0.0), REG,
                    "train")
  assert src.class_names == ("AnnualCrop", "Forest") and src.num_classes == 2  # sorted
  assert len(src) == 6
  assert [src[i]["name"] for i in range(6)] == sorted(dns, key=lambda n: (
      src.class_names.index(n.split("/")[0]), n))
  rec = src[4]  # Forest/Forest_1.tif
  assert rec["name"] == "Forest/Forest_1.tif" and rec["label"] == 1
  (view,) = rec["views"]
  assert view["sensor"] == "sentinel2_l2a"
  assert view["pixels"].shape == (S, S, 12) and view["pixels"].dtype == np.float32
  dn = np.moveaxis(dns["Forest/Forest_1.tif"], 0, -1).astype(np.float32)
  np.testing.assert_allclose(view["pixels"][4:], dn[4:] * 1e-4 - 0.1, rtol=1e-5, atol=1e-6)
  assert view["valid"].dtype == bool
  assert not view["valid"][:4].any() and view["valid"][4:].all()  # nodata rows
  assert (view["pixels"][:4] == 0).all()
  # A Grain source: picklable (worker processes) and usable by MapDataset.
  again = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(grain.MapDataset.source(again)[4]["views"][0]["pixels"],
                                view["pixels"])
  with pytest.raises(IndexError):
    src[6]


def test_class_folders_png_jpeg_bands_and_crc32_split(tmp_path):
  rgb = {}
  for cls in ("beach", "forest", "harbor"):
    for i in range(10):
      suffix = ".png" if i % 2 else ".jpg"
      rgb[f"{cls}/{i}{suffix}"] = _rgb(i)
      # 4 bands on disk (R, G, B, NIR); task.reader.bands picks the sensor's three.
      data = np.concatenate([rgb[f"{cls}/{i}{suffix}"], _rgb(99)[:1]]) if suffix == ".png" \
          else rgb[f"{cls}/{i}{suffix}"]
      _write(str(tmp_path / cls / f"{i}{suffix}"), data)
  cfg = _cfg("class_folders", tmp_path, "gaofen2_pms", val_fraction=0.3)
  with pytest.raises(ReaderError) as e:  # 4-band PNGs without bands
    [make_reader(cfg, REG, "train")[i] for i in range(30)]
  assert ".png: 4 band(s) but sensor 'gaofen2_pms' has 3" in _message(e)
  cfg["classes"] = ("forest", "beach")  # given order = label ids; 'harbor' skipped
  only_png = dict(cfg, bands=(1, 2, 3))
  train, ev = make_reader(only_png, REG, "train"), make_reader(only_png, REG, "eval")
  names = [train[i]["name"] for i in range(len(train))] + [ev[i]["name"] for i in range(len(ev))]
  assert sorted(names) == sorted(n for n in rgb if not n.startswith("harbor"))  # disjoint, full
  assert 0 < len(ev) < len(train)
  again = make_reader(only_png, REG, "eval")  # deterministic
  assert [again[i]["name"] for i in range(len(again))] == [ev[i]["name"] for i in range(len(ev))]
  png = next(i for i in range(len(train)) if train[i]["name"].endswith(".png"))
  rec = train[png]
  assert rec["label"] == ("forest", "beach").index(rec["name"].split("/")[0])
  np.testing.assert_array_equal(rec["views"][0]["pixels"],
                                np.moveaxis(rgb[rec["name"]], 0, -1).astype(np.float32))
  assert rec["views"][0]["valid"].all()


def test_split_folders_pick_the_folder_and_share_classes(tmp_path):
  for split, classes in (("train", ("a", "b", "c")), ("val", ("a", "c"))):
    for cls in classes:
      _write(str(tmp_path / split / cls / f"{split}_{cls}.png"), _rgb(1))
  train = make_reader(_cfg("class_folders", tmp_path, "gaofen2_pms"), REG, "train")
  ev = make_reader(_cfg("class_folders", tmp_path, "gaofen2_pms"), REG, "eval")
  assert len(train) == 3 and len(ev) == 2
  assert ev.class_names == ("a", "b", "c")
  assert [(ev[i]["name"], ev[i]["label"]) for i in range(2)] == [("a/val_a.png", 0),
                                                                  ("c/val_c.png", 2)]


# --- multi-label -------------------------------------------------------------------------------
def _multilabel_images(tmp_path, n=6):
  for i in range(n):
    _write(str(tmp_path / "img" / f"p{i}.tif"), _s2(i, nodata_rows=0), nodata=0)


def test_multilabel_csv_and_json(tmp_path):
  _multilabel_images(tmp_path)
  (tmp_path / "labels.csv").write_text(
      "file,labels\nimg/p0.tif,forest;water\nimg/p1.tif,urban|water\nimg/p2.tif,\n")
  src = make_reader(_cfg("multilabel", tmp_path, "sentinel2_l2a", val_fraction=0.0), REG,
                    "train")
  assert src.class_names == ("forest", "urban", "water")  # union, sorted
  recs = [src[i] for i in range(len(src))]
  assert [r["name"] for r in recs] == ["img/p0.tif", "img/p1.tif", "img/p2.tif"]
  np.testing.assert_array_equal(np.stack([r["labels"] for r in recs]),
                                [[1, 0, 1], [0, 1, 1], [0, 0, 0]])
  assert recs[0]["labels"].dtype == np.float32
  np.testing.assert_allclose(recs[1]["views"][0]["pixels"],
                             np.moveaxis(_s2(1, 0), 0, -1) * 1e-4 - 0.1, rtol=1e-5, atol=1e-6)
  table = {f"img/p{i}.tif": [["a"], ["b", "a"], []][i % 3] for i in range(6)}
  (tmp_path / "bigearth.json").write_text(json.dumps(table))
  cfg = _cfg("multilabel", tmp_path / "bigearth.json", "sentinel2_l2a", classes=("b", "a", "z"))
  src = make_reader(dict(cfg, val_fraction=0.0), REG, "train")
  assert src.num_classes == 3
  by_name = {src[i]["name"]: src[i]["labels"] for i in range(len(src))}
  np.testing.assert_array_equal(by_name["img/p1.tif"], [1, 1, 0])
  np.testing.assert_array_equal(by_name["img/p3.tif"], [0, 1, 0])
  train, ev = make_reader(dict(cfg, val_fraction=0.5), REG, "train"), make_reader(
      dict(cfg, val_fraction=0.5), REG, "eval")
  assert len(train) + len(ev) == 6


def test_multilabel_unknown_class_names_table_row_and_class(tmp_path):
  _multilabel_images(tmp_path, 2)
  table = tmp_path / "labels.csv"
  table.write_text("img/p0.tif,forest\nimg/p1.tif,forest;lava\n")
  with pytest.raises(ReaderError) as e:
    make_reader(_cfg("multilabel", tmp_path, "sentinel2_l2a", classes=("forest",)), REG, "train")
  assert f"{table} row 2" in _message(e) and "'lava'" in _message(e)


def test_multilabel_missing_image_names_it(tmp_path):
  _multilabel_images(tmp_path, 1)
  (tmp_path / "labels.json").write_text(json.dumps({"img/p0.tif": ["a"], "img/gone.tif": ["a"]}))
  with pytest.raises(ReaderError) as e:
    make_reader(_cfg("multilabel", tmp_path, "sentinel2_l2a", val_fraction=0.0), REG, "train")
  assert "img/gone.tif: image listed in" in _message(e) and "labels.json" in _message(e)


# --- segmentation and height pairs -------------------------------------------------------------
def _sar(seed, nodata=-1.0):
  """(1, S, S) float32 amplitudes; column 0 is nodata, pixel (5, 5) NaN."""
  amp = np.random.default_rng(seed).uniform(0.05, 0.9, (1, S, S)).astype(np.float32)
  amp[:, :, 0] = nodata
  amp[0, 5, 5] = np.nan
  return amp


def _seg_tree(root, n=3, classes=4):
  for i in range(n):
    _write(str(root / "images" / f"t{i}.tif"), _sar(i), nodata=-1.0)
    mask = (np.arange(S * S).reshape(1, S, S) % classes).astype(np.uint8)
    mask[0, 0, :] = 255
    _write(str(root / "masks" / f"t{i}.png"), mask)  # same stem, PNG


def test_seg_pairs_sar_values_valid_and_mask(tmp_path):
  _seg_tree(tmp_path)
  (tmp_path / "classes.txt").write_text("water\nfield\nurban\nforest\n")
  src = make_reader(_cfg("seg_pairs", tmp_path, "gaofen3_amp", val_fraction=0.0), REG, "train")
  assert src.class_names == ("water", "field", "urban", "forest") and len(src) == 3
  rec = src[1]
  assert rec["name"] == "t1.tif"
  view = rec["views"][0]
  amp = _sar(1)[0]
  ok = np.isfinite(amp) & (amp != -1.0)
  np.testing.assert_array_equal(view["valid"], ok)
  np.testing.assert_array_equal(view["pixels"][..., 0], np.where(ok, amp, 0))
  assert rec["mask"].dtype == np.int32 and rec["mask"].shape == (S, S)
  assert (rec["mask"][0] == 255).all() and rec["mask"][1, 3] == (S + 3) % 4
  cfg = _cfg("seg_pairs", tmp_path, "gaofen3_amp", classes=("a", "b"))  # config wins
  assert make_reader(cfg, REG, "train").num_classes == 2


def test_seg_pairs_mask_value_out_of_range_names_file_and_value(tmp_path):
  _seg_tree(tmp_path, n=1, classes=5)
  src = make_reader(_cfg("seg_pairs", tmp_path, "gaofen3_amp", val_fraction=0.0,
                         classes=("a", "b", "c", "d")), REG, "train")
  with pytest.raises(ReaderError) as e:
    src[0]
  assert str(tmp_path / "masks" / "t0.png") in _message(e) and "mask value 4" in _message(e)


def test_seg_pairs_size_mismatch_names_both_files_and_shapes(tmp_path):
  _seg_tree(tmp_path, n=1)
  _write(str(tmp_path / "masks" / "t0.png"), np.zeros((1, S, S - 4), np.uint8))
  src = make_reader(_cfg("seg_pairs", tmp_path, "gaofen3_amp", val_fraction=0.0,
                         classes=("a",)), REG, "train")
  with pytest.raises(ReaderError) as e:
    src[0]
  msg = _message(e)
  assert str(tmp_path / "masks" / "t0.png") in msg and str(tmp_path / "images" / "t0.tif") in msg
  assert f"{S}x{S - 4}" in msg and f"{S}x{S}" in msg


def test_seg_pairs_multiband_mask_and_missing_mask(tmp_path):
  _seg_tree(tmp_path, n=2)
  _write(str(tmp_path / "masks" / "t0.png"), np.zeros((3, S, S), np.uint8))
  cfg = _cfg("seg_pairs", tmp_path, "gaofen3_amp", val_fraction=0.0, classes=("a",))
  with pytest.raises(ReaderError) as e:
    make_reader(cfg, REG, "train")[0]
  assert "t0.png: a mask must be a single-band raster" in _message(e) and "3 bands" in _message(e)
  os.remove(tmp_path / "masks" / "t1.png")
  with pytest.raises(ReaderError) as e:
    make_reader(cfg, REG, "train")
  assert str(tmp_path / "masks" / "t1.tif") in _message(e) and "missing" in _message(e)
  with pytest.raises(ReaderError) as e:  # no classes anywhere
    make_reader(dict(cfg, classes=()), REG, "train")
  assert "task.reader.classes" in _message(e) and "classes.txt" in _message(e)


def test_height_pairs_nodata_and_nan_to_nan(tmp_path):
  _write(str(tmp_path / "images" / "h.png"), _rgb(3))
  ndsm = np.random.default_rng(0).uniform(0, 30, (1, S, S)).astype(np.float32)
  ndsm[0, 2, :] = -9999.0
  ndsm[0, 7, 7] = np.nan
  _write(str(tmp_path / "ndsm" / "h.tif"), ndsm, nodata=-9999.0)
  src = make_reader(_cfg("height_pairs", tmp_path, "gaofen2_pms", val_fraction=0.0), REG, "train")
  rec = src[0]
  assert rec["name"] == "h.png" and rec["height"].dtype == np.float32
  expect = np.where(ndsm[0] == -9999.0, np.nan, ndsm[0])
  np.testing.assert_array_equal(rec["height"], expect)  # NaN where nodata or NaN
  assert np.isnan(rec["height"][2]).all() and np.isnan(rec["height"][7, 7])
  np.testing.assert_array_equal(rec["views"][0]["pixels"], np.moveaxis(_rgb(3), 0, -1))


# --- LEVIR-CD ----------------------------------------------------------------------------------
def _levir(root):
  for split, names in (("train", ("train_1", "train_2")), ("val", ("val_1",)),
                       ("test", ("test_1",))):
    for i, n in enumerate(names):
      _write(str(root / split / "A" / f"{n}.png"), _rgb(i))
      _write(str(root / split / "B" / f"{n}.png"), _rgb(i + 10))
      label = np.zeros((1, S, S), np.uint8)
      label[0, 4:8, 4:8] = 255
      _write(str(root / split / "label" / f"{n}.png"), label)


def test_levircd_two_views_change_map_and_splits(tmp_path):
  _levir(tmp_path)
  cfg = _cfg("levircd", tmp_path, "gaofen2_pms", sensor_after="jilin1")
  train, ev = make_reader(cfg, REG, "train"), make_reader(cfg, REG, "eval")
  assert len(train) == 2 and len(ev) == 1 and ev[0]["name"] == "val_1.png"  # val/ before test/
  assert train.num_classes == 2
  rec = train[1]
  assert rec["name"] == "train_2.png"
  before, after = rec["views"]
  assert (before["sensor"], after["sensor"]) == ("gaofen2_pms", "jilin1")
  np.testing.assert_array_equal(before["pixels"], np.moveaxis(_rgb(1), 0, -1))
  np.testing.assert_array_equal(after["pixels"], np.moveaxis(_rgb(11), 0, -1))
  assert rec["change"].dtype == np.int32 and set(np.unique(rec["change"])) == {0, 1}
  assert rec["change"][4:8, 4:8].all() and rec["change"].sum() == 16


def test_levircd_missing_after_image_names_it(tmp_path):
  _levir(tmp_path)
  os.remove(tmp_path / "train" / "B" / "train_2.png")
  with pytest.raises(ReaderError) as e:
    make_reader(_cfg("levircd", tmp_path, "gaofen2_pms"), REG, "train")
  assert str(tmp_path / "train" / "B" / "train_2.png") in _message(e)


# --- raster errors -----------------------------------------------------------------------------
def test_read_image_channel_count_dtype_and_not_a_raster(tmp_path):
  path = _write(str(tmp_path / "x.tif"), _s2(0)[:4])
  with pytest.raises(ReaderError) as e:
    raster.read_image(path, REG.get("sentinel2_l2a"))
  assert f"{path}: 4 band(s) but sensor 'sentinel2_l2a' has 12" in _message(e)
  with pytest.raises(ReaderError) as e:
    raster.read_image(path, REG.get("gaofen2_pms"), bands=(1, 2, 9))
  assert "band 9 requested" in _message(e) and "4 band(s)" in _message(e)
  floats = _write(str(tmp_path / "f.tif"), _s2(0).astype(np.float32))
  with pytest.raises(ReaderError) as e:  # reflectances would be scaled twice
    raster.read_image(floats, REG.get("sentinel2_l2a"))
  assert f"{floats}: stores float32" in _message(e) and "uint16" in _message(e)
  fake = tmp_path / "fake.tif"
  fake.write_text("not a raster")
  with pytest.raises(ReaderError) as e:
    raster.read_image(str(fake), REG.get("gaofen2_pms"))
  assert f"{fake}: not a readable raster" in _message(e)
  with pytest.raises(ReaderError) as e:
    raster.read_mask(str(tmp_path / "nope.png"))
  assert "nope.png: no such file" in _message(e)


def test_make_reader_bad_format_root_sensor_and_empty_split(tmp_path):
  with pytest.raises(ReaderError) as e:
    make_reader(_cfg("voc", tmp_path, "gaofen2_pms"), REG, "train")
  assert "task.reader.format='voc'" in _message(e) and "class_folders" in _message(e)
  with pytest.raises(ReaderError) as e:
    make_reader(_cfg("class_folders", tmp_path / "absent", "gaofen2_pms"), REG, "train")
  assert "absent: no such directory" in _message(e)
  with pytest.raises(UnknownSensorError):
    make_reader(_cfg("class_folders", tmp_path, "hubble"), REG, "train")
  _write(str(tmp_path / "a" / "1.png"), _rgb(0))
  with pytest.raises(ReaderError) as e:
    make_reader(_cfg("class_folders", tmp_path, "gaofen2_pms", val_fraction=0.0), REG, "eval")
  assert "no records for the 'eval' split" in _message(e)
  assert set(READERS) == {"class_folders", "multilabel", "seg_pairs", "levircd",
                          "height_pairs", "tfds", "coco", "dota"}


# --- TFDS --------------------------------------------------------------------------------------
def test_tfds_element_mapping_single_and_multi_label():
  s2 = np.random.default_rng(0).integers(1000, 3000, (8, 8, 13)).astype(np.float32)
  s2[0, 0] = 0  # all-bands 0 = the sensor's dn_nodata
  rec = tfds_source.element_to_record(
      {"sentinel2": s2, "label": np.int64(7), "filename": b"Pasture_12.tif"}, "eurosat",
      REG.get("sentinel2_l1c"), num_classes=10, index=3)
  assert rec["name"] == "Pasture_12.tif" and rec["label"] == 7
  np.testing.assert_allclose(rec["views"][0]["pixels"][1:], s2[1:] * 1e-4 - 0.1, rtol=1e-5,
                             atol=1e-6)
  assert not rec["views"][0]["valid"][0, 0] and rec["views"][0]["valid"].sum() == 63
  sizes = {"B01": 2, "B09": 2, "B05": 6, "B06": 6, "B07": 6, "B8A": 6, "B11": 6, "B12": 6}
  element = {b: np.full((sizes.get(b, 12),) * 2, 1000 + i, np.float32)
             for i, b in enumerate(tfds_source.BIGEARTHNET_BANDS)}
  element.update(labels=np.array([2, 40]), filename=b"S2A_patch")
  rec = tfds_source.element_to_record(element, "bigearthnet", REG.get("sentinel2_l2a"),
                                      num_classes=43, index=0)
  pixels = rec["views"][0]["pixels"]
  assert pixels.shape == (12, 12, 12)  # upsampled to the 10 m grid, L2A band order
  np.testing.assert_allclose(pixels[5, 7], (1000 + np.arange(12)) * 1e-4 - 0.1, rtol=1e-5,
                             atol=1e-6)
  assert rec["labels"].shape == (43,) and rec["labels"].sum() == 2 and rec["labels"][40] == 1
  rgb = tfds_source.element_to_record(
      {"image": np.ones((4, 4, 3), np.uint8), "label": 1, "filename": "a.jpg"}, "resisc45",
      REG.get("gaofen2_pms"), num_classes=45, index=0, bands=(3, 2, 1))
  assert rgb["views"][0]["pixels"].shape == (4, 4, 3)
  with pytest.raises(ReaderError) as e:  # so2sat 'all' for a SAR sensor: 8 channels, 1 expected
    tfds_source.element_to_record({"sentinel1": np.zeros((4, 4, 8), np.float32), "label": 0},
                                  "so2sat", REG.get("gaofen3_amp"), num_classes=17, index=5)
  assert "tfds so2sat element 5: 8 band(s)" in _message(e)


def test_tfds_unprepared_says_what_to_run(tmp_path):
  with pytest.raises(ReaderError) as e:
    make_reader(_cfg("tfds", f"eurosat/rgb@{tmp_path}", "gaofen2_pms"), REG, "train")
  assert "tfds build eurosat/rgb" in _message(e) or "pip install" in _message(e)
  with pytest.raises(ReaderError) as e:
    make_reader(_cfg("tfds", "imagenet2012", "gaofen2_pms"), REG, "train")
  assert "eurosat" in _message(e)


def test_reader_records_go_through_the_task_pipeline(tmp_path):
  from ringmoe_jax.data import task_pipeline  # pylint: disable=import-outside-toplevel
  _levir(tmp_path / "levir")
  _seg_tree(tmp_path / "seg", n=2)
  cases = ((_cfg("levircd", tmp_path / "levir", "gaofen2_pms"), 2, "change"),
           (_cfg("seg_pairs", tmp_path / "seg", "gaofen3_amp", val_fraction=0.0,
                 classes=("a", "b", "c", "d")), 1, "mask"))
  for cfg, views, key in cases:
    src = make_reader(cfg, REG, "train")
    ds = task_pipeline.make_task_eval_dataset(
        src, registry=REG, num_views=views, batch_size=2, crop_size=S, max_channels=3,
        num_classes=src.num_classes, min_tile_size=4)
    batch = ds[0]
    assert batch["pixels"].shape == (2, views, S, S, 3) and batch[key].shape == (2, S, S)
  # nodata of the SAR view (column 0) -> ignored label
  assert (batch["mask"][:, :, 0] == 255).all()
