"""Whole-scene prediction (issue 15 item 1): window grid and blending, georeference and nodata
kept, a window alone equals the scene's interior, no seams, scene-wide box merging into WGS84
GeoJSON, and each bad input's message with nothing left behind.

The model tests share one micro segmentation checkpoint in the trainer's layout (Orbax state,
meta with the config and the sensor registry) whose state is made on the host (`host_state`):
a 1-step training run costs ~50 s on the 2-core machine and compiling the init alone ~25 s,
and prediction does not care whether the weights were trained. Capacity dispatch as the micro
configs use, with `moe.eval_capacity_factor=16`: at the default 2.0 the special experts of a
single-modality batch hold T/8 tokens each (1/4 of the tokens expected per modality), so
tokens drop and a window's output depends on its batch (measured: the window-alone check is
off by 0.17 in probability); 16 makes each expert's capacity T, and the check is exact.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from helpers import micro_finetune_config

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402
from rasterio.warp import transform as warp_transform  # noqa: E402

from ringmoe_jax.errors import ReaderError, UserError  # noqa: E402
from ringmoe_jax.ops import boxes as box_ops  # noqa: E402
from ringmoe_jax.predict import vector, windows  # noqa: E402
from ringmoe_jax.predict.raster_io import SceneReader  # noqa: E402
from ringmoe_jax.predict.scene import CLASS_NODATA, predict_scene  # noqa: E402
from ringmoe_jax.sensors.registry import default_registry  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {"moe.eval_capacity_factor": 16.0}
H, W = 100, 140
TRANSFORM = from_origin(500000.0, 5000000.0, 10.0, 10.0)
SIZE, OVERLAP = 32, 8


def write_scene(path, data, *, crs="EPSG:32633", transform=TRANSFORM, nodata=0.0, **kw):
  data = np.asarray(data)
  prof = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
              dtype=data.dtype.name, transform=transform, nodata=nodata, **kw)
  if crs:
    prof["crs"] = crs
  with rasterio.open(path, "w", **prof) as dst:
    dst.write(data)
  return str(path)


def _scene(seed=0):
  """(3, H, W) optical DN with a nodata rectangle and a few NaN pixels."""
  rng = np.random.default_rng(seed)
  data = rng.uniform(20, 250, (3, H, W)).astype(np.float32)
  data[:, 62:80, 100:131] = 0          # nodata (the file's tag)
  data[1, 5, 7] = np.nan               # one NaN band -> that pixel is nodata
  return data


def _read(path):
  with rasterio.open(path) as src:
    return src.read(), src.profile, src.tags(ns="IMAGE_STRUCTURE")


def host_state(abstract, seed=0):
  """A train state of `abstract`'s structure made on the host: the model's own init rules
  (norm scales 1, biases 0, SwinV2 logit scale log 10, weights N(0, 1 / fan_in)); optimizer
  state and counters 0. Compiling the real init costs ~25 s here; prediction only needs
  finite, non-trivial weights in the trainer's checkpoint layout."""
  import jax  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    key = str(getattr(path[-1], "key", path[-1]))
    if not str(getattr(path[0], "key", "")) == "params":
      return np.zeros(a.shape, a.dtype)
    if key in ("scale", "norm_scale"):
      return np.ones(a.shape, a.dtype)
    if key == "logit_scale":
      return np.full(a.shape, np.log(10.0), a.dtype)
    if "bias" in key or key in ("b1", "b2"):
      return np.zeros(a.shape, a.dtype)
    fan_in = a.shape[-2] if len(a.shape) >= 2 else 50.0 ** 2
    return (rng.standard_normal(a.shape) / np.sqrt(fan_in)).astype(a.dtype)
  return jax.tree_util.tree_map_with_path(leaf, abstract)


def make_predictor(workdir, task, arg=""):
  """A micro `task` run's checkpoint (host-made state, see host_state) in workdir, loaded."""
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel.mesh import make_mesh
  from ringmoe_jax.parallel.sharding import rules_for
  from ringmoe_jax.predict.predictor import WindowPredictor
  from ringmoe_jax.tasks import get_task
  from ringmoe_jax.train.checkpoint import Checkpointer
  from ringmoe_jax.train.trainer import build_registry, programs
  c = micro_finetune_config(task, arg, **OVERRIDES)
  registry = build_registry(c)
  t = get_task(c, registry)
  setup, _ = programs(c, t, make_mesh(c.mesh), rules_for(c))
  ckpt = Checkpointer(str(workdir / "checkpoints"), max_to_keep=1, async_save=False)
  ckpt.save(0, host_state(setup.builder.abstract), {"step": 0},
            {"config": json.loads(c.to_json_best_effort()), "task": t.name,
             "sensors": json.loads(registry.to_json())})
  ckpt.close()
  p = WindowPredictor.from_workdir(c, str(workdir))
  p.workdir = str(workdir)
  return p


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
  return make_predictor(tmp_path_factory.mktemp("seg_run"), "segmentation", "fusion=off")


# ----------------------------------------------------------------------------- no model


def test_grid_covers_scene_and_last_window_shifts_in():
  assert windows.starts(100, 32, 8) == [0, 24, 48, 68]
  assert windows.starts(140, 32, 8) == [0, 24, 48, 72, 96, 108]
  assert windows.starts(20, 32, 8) == [0]          # smaller than a window: one, padded
  w = windows.window_weight(32, 8)
  assert w.min() > 0 and w[8:24, 8:24].min() == 1 and w[0, 0] < 0.01


def test_progress_without_tqdm_prints_rate_and_eta(monkeypatch, capsys):
  from ringmoe_jax.predict.scene import Progress  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, "tqdm", None)          # import tqdm -> ImportError
  bar = Progress(10, every=0.0)
  bar.update(4)
  bar.update(6)
  bar.close()
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 2 and lines[-1].startswith("predict: 10/10 tiles, ")
  assert "tiles/s, ETA 0 s" in lines[-1]


class PointwisePredictor:
  """A stand-in whose output at a pixel depends only on that pixel (softmax of its bands): any
  correct blend of overlapping windows reproduces it exactly, so every misplaced, missed or
  unnormalised window pixel shows."""

  def __init__(self, sensor, batch_size=3, fail_at=None):
    self.task = type("T", (), {"name": "segmentation"})()
    self.size, self.sensors, self.batch_size, self.channels = SIZE, [sensor], batch_size, 3
    self.calls, self.fail_at = 0, fail_at

  @staticmethod
  def expected(data):
    x = np.nan_to_num(data.astype(np.float64) / 50.0)
    e = np.exp(x - x.max(0))
    return (e / e.sum(0)).astype(np.float32)

  def dispatch(self, views):
    self.calls += 1
    if self.fail_at is not None and self.calls == self.fail_at:
      raise RuntimeError("device lost")
    px = np.stack([v[0][0] for v in views])                  # (n, S, S, C) physical
    valid = np.stack([v[0][1] for v in views])
    return self.expected(np.moveaxis(px, -1, 1).swapaxes(0, 1)).swapaxes(0, 1), len(views), valid

  def collect(self, pending):
    return pending[0]


class _FakeReader:
  """read(y0, x0, size) of a scene whose window (y0, x0) holds y0 * 1000 + x0; nodata where
  y0 == `nodata_row`; a ReaderError at row `fail_row`."""

  def __init__(self, fail_row=None, nodata_row=None):
    self.fail_row, self.nodata_row, self.reads = fail_row, nodata_row, 0

  def read(self, y0, x0, size):
    self.reads += 1
    if y0 == self.fail_row:
      raise ReaderError(f"scene.tif: read failed at rows {y0}-{y0 + size}")
    return (np.full((size, size, 1), y0 * 1000 + x0, np.float32),
            np.full((size, size), y0 != self.nodata_row))


def test_read_ahead_thread_yields_the_batches_in_order_and_raises_its_errors():
  from ringmoe_jax.predict import scene  # pylint: disable=import-outside-toplevel
  grid = [(y, x) for y in (0, 8, 16) for x in (0, 8, 16)]
  want = list(scene._batches(grid, [_FakeReader(nodata_row=8)], 8, 2))  # pylint: disable=protected-access
  ahead = scene.ReadAhead(grid, [_FakeReader(nodata_row=8)], 8, 2)
  got = list(ahead)
  ahead.close()
  assert [(i, p) for i, p, _ in got] == [(i, p) for i, p, _ in want]
  assert [v is None for *_, v in got] == [False, False, True, True, True, False, False]
  for (*_, a), (*_, b) in zip(got, want):
    if a is not None:
      np.testing.assert_array_equal(np.asarray([w[0][0] for w in a]),
                                    np.asarray([w[0][0] for w in b]))
  with pytest.raises(ReaderError, match="rows 16-24"):
    ahead = scene.ReadAhead(grid, [_FakeReader(fail_row=16)], 8, 2)
    try:
      list(ahead)
    finally:
      ahead.close()
  # A consumer that stops early: close() ends the thread, which reads no further.
  reader = _FakeReader()
  ahead = scene.ReadAhead(grid, [reader], 8, 1, depth=1)
  next(iter(ahead))
  ahead.close()
  assert not ahead._thread.is_alive() and reader.reads < len(grid)  # pylint: disable=protected-access


def test_blend_of_pointwise_windows_is_exact_tall_scene_and_constant(tmp_path):
  sensor = default_registry().get("gaofen2_pms")
  rng = np.random.default_rng(1)
  data = rng.uniform(20, 250, (3, 230, 45)).astype(np.float32)   # tall, narrow: many rows
  data[:, 90:160] = 0                                            # whole window rows nodata
  src = write_scene(tmp_path / "tall.tif", data)
  p = PointwisePredictor(sensor)
  out = str(tmp_path / "p.tif")
  r = predict_scene(p, [src], out, overlap=OVERLAP, probabilities=True, progress=False)
  got, prof, _ = _read(out)
  nodata = (data == 0).all(0)
  np.testing.assert_allclose(got[:, ~nodata], p.expected(data)[:, ~nodata], atol=1e-6)
  assert np.isnan(got[:, nodata]).all() and r["skipped"] > 0
  # A constant scene -> one constant value (no seam at any window edge).
  const = write_scene(tmp_path / "const.tif", np.full((3, 100, 140), 90, np.float32))
  predict_scene(p, [const], out, overlap=OVERLAP, probabilities=True, progress=False)
  got = _read(out)[0]
  assert np.ptp(got.reshape(3, -1), axis=1).max() < 1e-6
  # An error half-way (the second batch) leaves neither output nor temporary files.
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(RuntimeError, match="device lost"):
    predict_scene(PointwisePredictor(sensor, fail_at=2), [src], str(tmp_path / "x.tif"),
                  overlap=OVERLAP, progress=False)
  assert sorted(os.listdir(tmp_path)) == before


def _brute_nms(boxes, scores, classes, thr):
  order = np.lexsort((np.arange(len(boxes)), -scores))
  kept = []
  for i in order:
    if boxes.shape[1] == 5:
      ious = [box_ops.rotated_iou_np(boxes[i][None], boxes[j][None])[0, 0] for j in kept]
    else:
      ious = [vector.hbox_iou_one(boxes[i], boxes[j][None])[0] for j in kept]
    if not any(iou > thr and classes[i] == classes[j] for iou, j in zip(ious, kept)):
      kept.append(i)
  return np.asarray(kept)


@pytest.mark.parametrize("rotated", [False, True])
def test_merge_nms_equals_global_greedy_nms(rotated):
  rng = np.random.default_rng(2)
  n = 60
  c = rng.uniform(0, 200, (n, 2))
  wh = rng.uniform(5, 40, (n, 2))
  boxes = (np.concatenate([c, wh, rng.uniform(-1.5, 1.5, (n, 1))], 1) if rotated else
           np.concatenate([c - wh / 2, c + wh / 2], 1))
  scores, classes = rng.uniform(0, 1, n), rng.integers(0, 2, n)
  got = vector.merge_nms(boxes, scores, classes, 0.3, cell=32.0)
  np.testing.assert_array_equal(got, _brute_nms(boxes, scores, classes, 0.3))
  assert 0 < len(got) < n


class BoxPredictor:
  """Detection stand-in on a scene whose bands 1 and 2 hold column + 1 and row + 1: it reads
  where its window is and reports two scene boxes in window pixels wherever they fit, so an
  object in two overlapping windows comes twice (the later window scoring lower)."""

  def __init__(self, sensor, boxes):
    self.task = type("T", (), {"name": "detection"})()
    self.config = type("C", (), {"task": type("K", (), {"nms_iou": 0.5})()})()
    self.size, self.sensors, self.batch_size, self.channels = SIZE, [sensor], 4, 0
    self.rotated, self.class_names, self.boxes, self.seen = False, ("ship",), boxes, 0

  def dispatch(self, views):
    out = []
    for v in views:
      x0, y0 = int(v[0][0][0, 0, 0]) - 1, int(v[0][0][0, 0, 1]) - 1
      local = self.boxes - np.array([x0, y0, x0, y0], np.float64)
      fits = ((local >= 0) & (local <= SIZE)).all(1)
      self.seen += int(fits[0])
      out.append((local[fits], (0.9 - 0.01 * self.seen - 0.1 * np.arange(2)[fits]).astype(
          np.float32), np.zeros(int(fits.sum()), np.int32)))
    return out, len(views), np.stack([v[0][1] for v in views])

  def collect(self, pending):
    return pending[0]


def test_detection_boxes_merge_across_windows_into_wgs84_geojson(tmp_path):
  rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
  data = np.stack([cols + 1, rows + 1, np.full_like(rows, 50)])
  data[:, 60:66, 110:130] = 0                       # nodata, away from window corners
  src = write_scene(tmp_path / "s.tif", data)
  # Scene xyxy: one box inside windows x0 = 0 and x0 = 24, one centred on the nodata area.
  boxes = np.array([[26.0, 10.0, 30.0, 20.0], [116.0, 59.0, 124.0, 67.0]])
  p = BoxPredictor(default_registry().get("gaofen2_pms"), boxes)
  out = str(tmp_path / "boxes.geojson")
  r = predict_scene(p, [src], out, overlap=OVERLAP, progress=False)
  fc = json.loads(pathlib.Path(out).read_text())
  assert p.seen == 2 and r["detections"] == 1 and len(fc["features"]) == 1
  f = fc["features"][0]
  assert f["properties"]["class"] == "ship" and f["properties"]["score"] == pytest.approx(0.89)
  ring = np.asarray(f["geometry"]["coordinates"][0])
  assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
  x, y = ring[:-1, 0], ring[:-1, 1]
  assert np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0     # counter-clockwise
  # The top-left corner, pixel (26, 10) -> UTM 33N -> lon / lat.
  ex, ey = TRANSFORM @ (26.0, 10.0)
  lon, lat = warp_transform("EPSG:32633", "EPSG:4326", [ex], [ey])
  assert np.min(np.hypot(ring[:, 0] - lon[0], ring[:, 1] - lat[0])) < 1e-9
  assert 14 < lon[0] < 16 and 44 < lat[0] < 46                   # lon first (RFC 7946)


# ------------------------------------------------------------------------------ the model


def test_scene_keeps_grid_crs_and_nodata_and_bands_pick(predictor, tmp_path):
  data = _scene()
  src = write_scene(tmp_path / "s.tif", data)
  out = str(tmp_path / "classes.tif")
  r = predict_scene(predictor, [src], out, overlap=OVERLAP, progress=False)
  got, prof, tags = _read(out)
  assert r["tiles"] == 4 * 6 and prof["dtype"] == "uint8" and prof["nodata"] == CLASS_NODATA
  assert (prof["height"], prof["width"], prof["count"]) == (H, W, 1)
  assert prof["crs"].to_epsg() == 32633 and prof["transform"] == TRANSFORM
  assert tags.get("LAYOUT") == "COG"
  nodata = (data == 0).all(0) | np.isnan(data).any(0)
  np.testing.assert_array_equal(got[0] == CLASS_NODATA, nodata)
  assert got[0][~nodata].max() < predictor.channels
  # --bands: the sensor's bands picked (in order) from a 5-band file give the same map.
  five = np.stack([data[2], np.ones_like(data[0]), data[0], data[1], data[1] * 0 + 7])
  src5 = write_scene(tmp_path / "five.tif", five)
  out5 = str(tmp_path / "five_out.tif")
  predict_scene(predictor, [src5], out5, bands=[[3, 4, 1]], overlap=OVERLAP, progress=False)
  np.testing.assert_array_equal(_read(out5)[0], got)
  leftovers = [n for n in os.listdir(tmp_path) if "tmp" in n]
  assert not leftovers, leftovers


def test_window_alone_equals_scene_interior_and_constant_scene(predictor, tmp_path):
  data = _scene()
  src = write_scene(tmp_path / "s.tif", data)
  out = str(tmp_path / "probs.tif")
  predict_scene(predictor, [src], out, overlap=OVERLAP, probabilities=True, progress=False)
  scene_p, prof, _ = _read(out)
  assert prof["count"] == predictor.channels and prof["dtype"] == "float32"
  np.testing.assert_allclose(np.nansum(scene_p, 0)[~np.isnan(scene_p[0])], 1, atol=1e-5)
  # The window at (24, 24) alone (batched with padding instead of 7 scene windows); rows and
  # columns 32-48 are covered by that window only.
  y0 = x0 = 24
  alone = write_scene(tmp_path / "w.tif", data[:, y0:y0 + SIZE, x0:x0 + SIZE],
                      transform=TRANSFORM @ rasterio.Affine.translation(x0, y0))
  out_w = str(tmp_path / "w_out.tif")
  predict_scene(predictor, [alone], out_w, overlap=OVERLAP, probabilities=True, progress=False)
  win_p = _read(out_w)[0]
  inner = slice(OVERLAP, SIZE - OVERLAP)
  np.testing.assert_allclose(scene_p[:, y0 + OVERLAP:y0 + SIZE - OVERLAP,
                                     x0 + OVERLAP:x0 + SIZE - OVERLAP],
                             win_p[:, inner, inner], atol=2e-6)
  assert np.ptp(win_p[:, inner, inner]) > 1e-3        # not trivially constant
  # A constant scene: every blended value lies within the range of one constant window's
  # (a blend is a convex combination of windows; unnormalised or misplaced sums leave it).
  const = np.full((3, H, W), 120, np.float32)
  out_c = str(tmp_path / "c.tif")
  predict_scene(predictor, [write_scene(tmp_path / "cs.tif", const)], out_c,
                overlap=OVERLAP, probabilities=True, progress=False)
  predict_scene(predictor, [write_scene(tmp_path / "c1.tif", const[:, :SIZE, :SIZE])],
                str(tmp_path / "c1_out.tif"), overlap=OVERLAP, probabilities=True,
                progress=False)
  c_scene, c_win = _read(out_c)[0], _read(str(tmp_path / "c1_out.tif"))[0]
  lo, hi = c_win.min((1, 2)), c_win.max((1, 2))
  assert (c_scene.min((1, 2)) >= lo - 1e-6).all() and (c_scene.max((1, 2)) <= hi + 1e-6).all()


def _pipeline_batch(p, windows):
  """The batch the task pipeline makes of `windows` one by one (PrepareViews + ToTaskExample,
  as evaluation feeds a tile), padded to B with all-zero examples."""
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.data import task_pipeline
  from ringmoe_jax.tasks.base import max_channels
  prepare = task_pipeline.PrepareViews(p.registry, len(p.sensors), int(p.config.model.patch_size))
  to_example = task_pipeline.ToTaskExample(p.registry, max_channels(p.config, p.registry))
  exs = [to_example.map(prepare.map({"name": f"w{i}", "views": [
      {"sensor": s.name, "pixels": px, "valid": v} for s, (px, v) in zip(p.sensors, views)]}))
         for i, views in enumerate(windows)]
  exs += [{k: np.zeros_like(v) for k, v in exs[0].items()}] * (p.batch_size - len(exs))
  return {k: np.stack([e[k] for e in exs]) for k in exs[0]}


def test_stacked_examples_equal_the_task_pipeline_bit_for_bit(predictor):
  """predictor.examples normalises the stacked windows at once; the model must see exactly the
  batch evaluation's pipeline makes of each window (nodata, NaN, sensor nodata, padding)."""
  rng = np.random.default_rng(3)
  s = predictor.sensors[0]
  windows = []
  for i in range(predictor.batch_size - 1):              # one padding example
    px = rng.uniform(0, 0.4, (SIZE, SIZE, s.num_channels)).astype(np.float32)
    valid = rng.uniform(size=(SIZE, SIZE)) > 0.1
    px[~valid] = 0
    px[i, :4, 1] = np.nan                                 # NaN in a "valid" pixel
    if s.nodata is not None:
      px[i + 1, :3] = s.nodata
    windows.append([(px, valid)])
  got, valid = predictor.examples(windows)
  want = _pipeline_batch(predictor, windows)
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  np.testing.assert_array_equal(valid, want["valid"][:len(windows)].min(1) > 0)
  assert not valid[0, 0, :4].any() and valid.mean() > 0.8


def _bad_inputs(d):
  data = _scene()
  cases = {}
  (d / "text.tif").write_text("not a raster\n")
  cases["not_a_raster"] = (str(d / "text.tif"), None, "not a readable raster")
  (d / "empty.tif").write_bytes(b"")
  cases["empty"] = (str(d / "empty.tif"), None, "empty file")
  big = np.random.default_rng(3).uniform(1, 200, (3, 300, 300)).astype(np.float32)
  full = write_scene(d / "full.tif", big, compress="deflate", tiled=True, blockxsize=64,
                     blockysize=64)
  blob = pathlib.Path(full).read_bytes()
  (d / "truncated.tif").write_bytes(blob[:int(len(blob) * 0.6)])
  cases["truncated"] = (str(d / "truncated.tif"), None, "damaged or truncated")
  cases["no_crs"] = (write_scene(d / "nocrs.tif", data, crs=None), None, "no CRS")
  cases["all_nodata"] = (write_scene(d / "nodata.tif", np.zeros_like(data)), None,
                         "every pixel is nodata")
  nan_band = data.copy()
  nan_band[2] = np.nan
  cases["nan_band"] = (write_scene(d / "nan.tif", nan_band), None, "band 3 is NaN")
  cases["band_count"] = (write_scene(d / "two.tif", data[:2]), None,
                         "2 band(s) but sensor 'gaofen2_pms' expects 3 band(s) (R, G, B)")
  cases["bands_flag"] = (write_scene(d / "three.tif", data), [1, 2, 4], "band 4 requested")
  cplx = write_scene(d / "cplx.tif", (data + 1j * data).astype(np.complex64), nodata=None)
  cases["dtype"] = (cplx, None, "complex-valued bands; sensor 'gaofen2_pms' expects 3")
  return cases


def test_bad_inputs_give_their_message_and_leave_nothing(predictor, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  outdir = tmp_path / "out"
  outdir.mkdir()
  for name, (path, bands, message) in _bad_inputs(inputs).items():
    with pytest.raises(ReaderError, match=None) as e:
      predict_scene(predictor, [path], str(outdir / f"{name}.tif"), bands=[bands],
                    progress=False)
    assert message in str(e.value) and path in str(e.value), (name, str(e.value))
    assert os.listdir(outdir) == [], (name, os.listdir(outdir))
  # A sensor with a storage dtype (Sentinel-2 DN, uint16) refuses a float file.
  s2 = default_registry().get("sentinel2_l2a")
  path = write_scene(inputs / "s2.tif", np.ones((12, 20, 20), np.float32))
  with pytest.raises(ReaderError, match="stores float32 but sensor 'sentinel2_l2a' products "
                                        "store uint16"):
    SceneReader(path, s2)


def test_cli_bad_input_one_error_line_exit_2(predictor, tmp_path):
  config = tmp_path / "micro_seg.py"
  config.write_text(
      "import sys\n"
      f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
      "from helpers import micro_finetune_config\n\n\n"
      "def get_config(arg=None):\n"
      f"  return micro_finetune_config('segmentation', 'fusion=off', **{OVERRIDES!r})\n")
  src = write_scene(tmp_path / "nocrs.tif", _scene(), crs=None)
  out = tmp_path / "o" / "out.tif"
  out.parent.mkdir()
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  p = subprocess.run([sys.executable, "-m", "ringmoe_jax.predict", f"--config={config}",
                      f"--workdir={predictor.workdir}", f"--input={src}", f"--output={out}"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
  assert lines[-1].startswith("error: ") and "no CRS" in lines[-1] and src in lines[-1]
  assert os.listdir(out.parent) == []


def _lonlat_bounds(transform, crs, height, width):
  pts = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
  ll = vector.pixel_to_lonlat(pts, transform, crs)
  return ll.min(0), ll.max(0)


def test_detection_run_writes_merged_wgs84_boxes(tmp_path_factory, tmp_path):
  p = make_predictor(tmp_path_factory.mktemp("det_run"), "detection")
  data = _scene()
  src = write_scene(tmp_path / "s.tif", data)
  out = str(tmp_path / "b.geojson")
  r = predict_scene(p, [src], out, overlap=OVERLAP, progress=False)
  fc = json.loads(pathlib.Path(out).read_text())
  assert fc["type"] == "FeatureCollection" and len(fc["features"]) == r["detections"] > 0
  lo, hi = _lonlat_bounds(TRANSFORM, "EPSG:32633", H, W)
  pad = (hi - lo) * 0.5                       # boxes may reach past the scene a little
  nodata = (data == 0).all(0)
  for f in fc["features"]:
    ring = np.asarray(f["geometry"]["coordinates"][0])
    assert ((ring >= lo - pad) & (ring <= hi + pad)).all(), ring
    assert f["properties"]["class"] == "building" and 0 < f["properties"]["score"] <= 1
    # The centre back in pixels is not on nodata.
    cx, cy = ring[:-1].mean(0)
    ex, ey = warp_transform("EPSG:4326", "EPSG:32633", [cx], [cy])
    col, row = ~TRANSFORM * (ex[0], ey[0])
    if 0 <= row < H and 0 <= col < W:
      assert not nodata[int(row), int(col)]
  with pytest.raises(UserError, match="GeoJSON"):
    predict_scene(p, [src], str(tmp_path / "b.tif"), progress=False)


def test_change_detection_two_co_registered_views(tmp_path_factory, tmp_path):
  """The real change-detection predictor (checkpoint, sensors, the pipeline's two-view
  examples, sharded batches) with its program swapped for a pointwise one (compiling the
  Siamese model costs ~17 s here): 'change' where the views' normalised bands differ by more
  than 1 on average, so the expected map is known at every pixel."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  p = make_predictor(tmp_path_factory.mktemp("cd_run"), "change_detection")
  assert [s.name for s in p.sensors] == ["gaofen2_pms", "gaofen2_pms"]
  rng = np.random.default_rng(0)
  two = [[(rng.uniform(0, 0.3, (SIZE, SIZE, p.sensors[0].num_channels)).astype(np.float32),
           rng.uniform(size=(SIZE, SIZE)) > 0.2) for _ in range(2)] for _ in range(3)]
  got, _ = p.examples(two)
  for k, v in _pipeline_batch(p, two).items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)

  def pointwise(params, batch):
    del params
    d = jnp.mean(jnp.abs(batch["pixels"][:, 0] - batch["pixels"][:, 1]), -1)   # (B, S, S)
    change = jax.nn.sigmoid(4 * (d - 1.0))
    return jnp.stack([1 - change, change], 1)                                  # (B, 2, S, S)
  p._fn = jax.jit(pointwise)  # pylint: disable=protected-access
  before = _scene(0)
  after = before.copy()
  after[:, 30:60, 20:90] = _scene(1)[:, 30:60, 20:90]   # changed here (mostly)
  after[:, 0:10, 0:15] = 0                              # nodata only in the after image
  a = write_scene(tmp_path / "a.tif", before)
  b = write_scene(tmp_path / "b.tif", after)
  out = str(tmp_path / "cd.tif")
  predict_scene(p, [a, b], out, overlap=OVERLAP, progress=False)
  got, prof, _ = _read(out)
  nodata = ((before == 0).all(0) | np.isnan(before).any(0) | (after == 0).all(0)
            | np.isnan(after).any(0))
  np.testing.assert_array_equal(got[0] == CLASS_NODATA, nodata)
  sensor = p.sensors[0]
  norm = lambda x: sensor.normalize(np.moveaxis(x, 0, -1))  # noqa: E731
  expected = np.mean(np.abs(norm(before) - norm(after)), -1) > 1.0
  np.testing.assert_array_equal(got[0][~nodata], expected[~nodata].astype(np.uint8))
  assert 0 < expected[~nodata].mean() < 1 and prof["transform"] == TRANSFORM
  shifted = write_scene(tmp_path / "shifted.tif", after,
                        transform=from_origin(500010.0, 5000000.0, 10.0, 10.0))
  with pytest.raises(ReaderError, match="co-registered"):
    predict_scene(p, [a, shifted], str(tmp_path / "x.tif"), progress=False)
  with pytest.raises(UserError, match="2 input"):
    predict_scene(p, [a], str(tmp_path / "x.tif"), progress=False)
  assert not [n for n in os.listdir(tmp_path) if n.startswith("x.tif")]
