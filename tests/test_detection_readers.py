"""Detection readers (data/readers/coco.py, dota.py): boxes from files written here, class ids,
difficult flags, splits, the task pipeline, and bad input.

Sensor 'gaofen2_pms' (default_registry): 3 bands (R, G, B), physical = the file's values.
Boxes: le90 (cx, cy, w, h, angle) pixels (data/box_labels.py).
"""
import json
import os
import pickle
import warnings

import numpy as np
import pytest
import rasterio

from ringmoe_jax.data import box_labels
from ringmoe_jax.data.readers import CocoDetection, DotaDetection, make_reader
from ringmoe_jax.data.readers import dota
from ringmoe_jax.data.task_pipeline import make_task_eval_dataset
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import default_registry

REG = default_registry()
SENSOR = REG.get("gaofen2_pms")


def _write(path, height, width, seed=0):
  """A (3, height, width) uint8 PNG / GeoTIFF by suffix (no georeference: not needed here)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data = np.random.default_rng(seed).integers(1, 255, (3, height, width)).astype(np.uint8)
  driver = "PNG" if path.endswith(".png") else "GTiff"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
    with rasterio.open(path, "w", driver=driver, width=width, height=height, count=3,
                       dtype="uint8") as f:
      f.write(data)
  return data


# --- COCO --------------------------------------------------------------------------------------
CATEGORIES = [{"id": 7, "name": "ship"}, {"id": 3, "name": "plane"}, {"id": 12, "name": "car"}]


def _coco_doc():
  """a.png 48 x 40 (W x H) with 3 boxes, b.tif 32 x 32 with 1 crowd box, c.png a negative."""
  return {
      "images": [{"id": 1, "file_name": "a.png", "width": 48, "height": 40},
                 {"id": 5, "file_name": "b.tif", "width": 32, "height": 32},
                 {"id": 9, "file_name": "c.png", "width": 32, "height": 32}],
      "categories": CATEGORIES,
      "annotations": [
          {"id": 100, "image_id": 1, "category_id": 7, "bbox": [10, 6, 12, 10], "iscrowd": 0},
          {"id": 101, "image_id": 5, "category_id": 12, "bbox": [0.5, 1.5, 20.25, 8],
           "iscrowd": 1},
          {"id": 102, "image_id": 1, "category_id": 3, "bbox": [40, 30, 8, 10]},
          {"id": 103, "image_id": 1, "category_id": 12, "bbox": [20, 20, 4, 6], "iscrowd": 0},
      ]}


def _coco_tree(root, doc=None, json_name="annotations.json"):
  for im in (doc or _coco_doc())["images"]:
    _write(os.path.join(root, "images", im["file_name"]), im["height"], im["width"])
  with open(os.path.join(root, json_name), "w") as f:
    json.dump(doc or _coco_doc(), f)
  return str(root)


def test_coco_boxes_category_ids_crowd_negatives_and_pickle(tmp_path):
  root = _coco_tree(tmp_path)
  src = CocoDetection(root, SENSOR, "train", val_fraction=0.0)
  assert src.class_names == ("plane", "ship", "car") and src.num_classes == 3  # by category id
  assert len(src) == 3 and [src[i]["name"] for i in range(3)] == ["a.png", "b.tif", "c.png"]
  a, b, c = (src[i] for i in range(3))
  np.testing.assert_array_equal(a["boxes"], np.array(
      [[16, 11, 12, 10, 0], [44, 35, 8, 10, 0], [22, 23, 4, 6, 0]], np.float32))
  assert a["boxes"].dtype == np.float32 and a["box_classes"].dtype == np.int32
  np.testing.assert_array_equal(a["box_classes"], [1, 0, 2])  # ship, plane, car (json order)
  np.testing.assert_array_equal(a["box_difficult"], [False, False, False])
  np.testing.assert_array_equal(b["boxes"], [[10.625, 5.5, 20.25, 8, 0]])
  assert b["box_difficult"].tolist() == [True] and b["box_classes"].tolist() == [2]  # iscrowd
  assert c["boxes"].shape == (0, 5) and c["box_classes"].shape == (0,)  # a negative, kept
  assert c["box_difficult"].shape == (0,)
  (view,) = a["views"]
  assert view["sensor"] == "gaofen2_pms" and view["pixels"].shape == (40, 48, 3)
  # classes given: numbered in that order.
  named = CocoDetection(root, SENSOR, "train", classes=("ship", "car", "plane"), val_fraction=0.0)
  assert named.class_names == ("ship", "car", "plane")
  assert named[0]["box_classes"].tolist() == [0, 2, 1] and named[1]["box_classes"].tolist() == [1]
  again = pickle.loads(pickle.dumps(src))  # Grain workers
  np.testing.assert_array_equal(again[0]["boxes"], a["boxes"])
  # crc32 split (a.png 247, b.tif 394, c.png 423 of 1000): disjoint and complete.
  train, ev = (CocoDetection(root, SENSOR, s, val_fraction=0.3) for s in ("train", "eval"))
  names = [r["name"] for r in train] + [r["name"] for r in ev]
  assert sorted(names) == ["a.png", "b.tif", "c.png"] and [r["name"] for r in ev] == ["a.png"]


def test_coco_split_by_json_and_instances_layout(tmp_path):
  doc = _coco_doc()
  train = dict(doc, images=doc["images"][:2],
               annotations=[a for a in doc["annotations"] if a["image_id"] in (1, 5)])
  val = dict(doc, images=doc["images"][2:], annotations=[])
  _coco_tree(tmp_path, train, "train.json")
  _coco_tree(tmp_path, val, "val.json")
  tr = CocoDetection(str(tmp_path), SENSOR, "train", val_fraction=0.5)  # the json decides
  ev = CocoDetection(str(tmp_path), SENSOR, "eval", val_fraction=0.5)
  assert [r["name"] for r in tr] == ["a.png", "b.tif"] and [r["name"] for r in ev] == ["c.png"]
  # COCO 2017 layout: annotations/instances_<split>2017.json + <split>2017/ image folders.
  coco = tmp_path / "coco"
  os.makedirs(coco / "annotations")
  for name, part in (("train2017", train), ("val2017", val)):
    for im in part["images"]:
      _write(str(coco / name / im["file_name"]), im["height"], im["width"])
    (coco / "annotations" / f"instances_{name}.json").write_text(json.dumps(part))
  assert [r["name"] for r in CocoDetection(str(coco), SENSOR, "eval")] == ["c.png"]
  assert len(CocoDetection(str(coco), SENSOR, "train")) == 2
  os.remove(coco / "annotations" / "instances_val2017.json")
  with pytest.raises(ReaderError, match="none for the 'eval' split"):
    CocoDetection(str(coco), SENSOR, "eval")


def _coco_error(tmp_path, edit, read=False):
  doc = _coco_doc()
  edit(doc)
  root = tmp_path / "bad"
  os.makedirs(root / "images", exist_ok=True)
  for im in _coco_doc()["images"]:
    _write(str(root / "images" / im["file_name"]), im["height"], im["width"])
  (root / "annotations.json").write_text(json.dumps(doc) if isinstance(doc, dict) else doc)
  with pytest.raises(ReaderError) as e:
    src = CocoDetection(str(root), SENSOR, "train", val_fraction=0.0)
    if read:
      [src[i] for i in range(len(src))]
  assert "annotations.json" in str(e.value)
  return str(e.value)


def _ann(i, **kw):
  def edit(doc):
    doc["annotations"][i].update(kw)
  return edit


def test_coco_bad_input_names_the_json_and_annotation(tmp_path):
  msg = _coco_error(tmp_path, _ann(0, bbox=[40, 6, 12, 10]))  # x + w = 52 > 48 + 1
  assert "annotation 100" in msg and "leaves the image" in msg
  assert "annotation 102" in _coco_error(tmp_path, _ann(2, bbox=[-1.5, 30, 8, 10]))
  assert "annotation 103" in _coco_error(tmp_path, _ann(3, bbox=[20, 20, 4, 21.5]))  # y+h=41.5
  msg = _coco_error(tmp_path, _ann(1, bbox=[0, 0, 0, 4]))
  assert "annotation 101 (image 5, b.tif)" in msg and "size <= 0" in msg
  assert "annotation 101" in _coco_error(tmp_path, _ann(1, bbox=[0, 0, 4, -2]))
  assert "annotation 101" in _coco_error(tmp_path, _ann(1, bbox=[0, 0, 4]))
  msg = _coco_error(tmp_path, _ann(3, category_id=4))
  assert "annotation 103" in msg and "category_id 4" in msg
  msg = _coco_error(tmp_path, _ann(2, image_id=77))
  assert "annotation 102" in msg and "image_id 77" in msg
  msg = _coco_error(tmp_path, lambda d: d["images"].append(
      {"id": 11, "file_name": "gone.png", "width": 32, "height": 32}))
  assert "gone.png" in msg and "not found" in msg

  def size(doc):
    doc["images"][2]["width"] = 40  # c.png is 32 x 32 on disk
  msg = _coco_error(tmp_path, size, read=True)
  assert "image 9 (c.png)" in msg and "40 x 32" in msg
  root = tmp_path / "bad"
  (root / "annotations.json").write_text('{"images": [')
  with pytest.raises(ReaderError, match="annotations.json: not valid JSON"):
    CocoDetection(str(root), SENSOR, "train")
  ok = _coco_doc()
  ok["annotations"][0]["bbox"] = [-0.5, 6, 49.4, 10]  # within the 1-pixel tolerance
  (root / "annotations.json").write_text(json.dumps(ok))
  assert len(CocoDetection(str(root), SENSOR, "train", val_fraction=0.0)) == 3
  with pytest.raises(ReaderError, match="classes names boat, not among the json's categories"):
    CocoDetection(str(root), SENSOR, "train", classes=("ship", "boat"), val_fraction=0.0)
  with pytest.raises(ReaderError, match=r"annotation 102 .*category 'plane' \(id 3\) is not in "
                     "task.reader.classes"):
    CocoDetection(str(root), SENSOR, "train", classes=("ship", "car"), val_fraction=0.0)
  ok["annotations"] = [a for a in ok["annotations"] if a["category_id"] != 3]
  (root / "annotations.json").write_text(json.dumps(ok))  # 'plane' unused: may be left out
  assert CocoDetection(str(root), SENSOR, "train", classes=("ship", "car"),
                       val_fraction=0.0).class_names == ("ship", "car")


# --- DOTA --------------------------------------------------------------------------------------
def _line(poly, cls, difficult=None):
  text = " ".join(f"{v:.6f}" for v in np.asarray(poly, np.float64).reshape(-1)) + f" {cls}"
  return text + ("" if difficult is None else f" {difficult}")


ROTATED = np.array([[32.0, 30.0, 20.0, 10.0, 0.3], [20.0, 44.0, 16.0, 6.0, -1.2]])


def _dota_tree(root):
  """P1.png 64 x 64: header lines, an axis-aligned wide and tall box, 2 rotated ones;
  P2.tif 32 x 48 (W x H): one difficult box; P3.png: an empty label file (negative)."""
  _write(os.path.join(root, "images", "P1.png"), 64, 64)
  _write(os.path.join(root, "images", "P2.tif"), 48, 32, seed=1)
  _write(os.path.join(root, "images", "P3.png"), 32, 32, seed=2)
  rot = box_labels.corners(ROTATED)
  lines = ["imagesource:GoogleEarth", "gsd:0.146343590398",
           _line([[10, 12], [30, 12], [30, 20], [10, 20]], "plane", 0),
           _line([[9, 25], [5, 25], [5, 5], [9, 5]], "ship", 0),  # tall, clockwise order
           "",
           _line(np.roll(rot[0], 1, axis=0), "small-vehicle", 0),  # another start point
           _line(rot[1][::-1], "ship")]  # reversed order, no difficult field
  os.makedirs(os.path.join(root, "labelTxt"))
  with open(os.path.join(root, "labelTxt", "P1.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(root, "labelTxt", "P2.txt"), "w") as f:
    f.write(_line([[2, 3], [12, 3], [12, 9], [2, 9]], "plane", 1) + "\n")
  open(os.path.join(root, "labelTxt", "P3.txt"), "w").close()
  return str(root)


def _same_polygon(box, poly):
  """Corners of le90 `box` equal the 4 points of `poly`, up to order, within 1e-4."""
  got = box_labels.corners(box)[0]
  dist = np.linalg.norm(got[:, None] - np.asarray(poly)[None], axis=-1)
  assert dist.min(1).max() < 1e-4 and dist.min(0).max() < 1e-4, (got, poly)


def test_dota_polygons_to_le90_difficult_headers_and_classes(tmp_path):
  root = _dota_tree(tmp_path)
  src = DotaDetection(root, SENSOR, "train", val_fraction=0.0)
  assert src.class_names == ("plane", "ship", "small-vehicle") and src.num_classes == 3  # sorted
  assert [r["name"] for r in src] == ["P1.png", "P2.tif", "P3.png"]
  p1, p2, p3 = (src[i] for i in range(3))
  assert p1["boxes"].shape == (4, 5) and p1["boxes"].dtype == np.float32
  np.testing.assert_allclose(p1["boxes"][0], [20, 16, 20, 8, 0], atol=1e-5)  # angle 0, w = x
  np.testing.assert_allclose(p1["boxes"][1], [7, 15, 4, 20, 0], atol=1e-5)
  rot = box_labels.corners(ROTATED)
  _same_polygon(p1["boxes"][2], rot[0])
  np.testing.assert_allclose(p1["boxes"][2], ROTATED[0], atol=1e-5)  # angle 0.3 is kept
  _same_polygon(p1["boxes"][3], rot[1])
  # angle -1.2 is outside [-pi/4, pi/4): the same rectangle with w, h swapped, angle + pi/2.
  np.testing.assert_allclose(p1["boxes"][3], [20, 44, 6, 16, -1.2 + np.pi / 2], atol=1e-5)
  assert np.all((p1["boxes"][:, 4] >= -np.pi / 2) & (p1["boxes"][:, 4] < np.pi / 2))
  assert p1["box_classes"].tolist() == [0, 1, 2, 1] and not p1["box_difficult"].any()
  assert p2["box_difficult"].tolist() == [True] and p2["box_classes"].tolist() == [0]
  np.testing.assert_allclose(p2["boxes"], [[7, 6, 10, 6, 0]], atol=1e-5)
  assert p2["views"][0]["pixels"].shape == (48, 32, 3)
  assert p3["boxes"].shape == (0, 5) and p3["box_difficult"].shape == (0,)
  named = DotaDetection(root, SENSOR, "train", classes=("ship", "small-vehicle", "plane", "x"),
                        val_fraction=0.0)
  assert named.num_classes == 4 and named[0]["box_classes"].tolist() == [2, 0, 1, 0]
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(src))[0]["boxes"], p1["boxes"])


def test_min_area_rect_of_a_general_quadrilateral_holds_its_points():
  quad = np.array([[0, 0], [10, 1], [11, 7], [1, 5]], np.float64)
  box = dota.min_area_rect(quad)
  assert -np.pi / 4 <= box[4] < np.pi / 4
  c = box_labels.corners(box)[0]
  u = np.array([np.cos(box[4]), np.sin(box[4])])
  v = np.array([-np.sin(box[4]), np.cos(box[4])])
  for d, half in ((u, box[2] / 2), (v, box[3] / 2)):  # every point inside the rectangle
    assert np.all(np.abs((quad - box[:2]) @ d) <= half + 1e-9)
  assert box[2] * box[3] <= 11 * 7  # no bigger than the axis-aligned envelope
  assert np.isclose(dota.polygon_area(c), box[2] * box[3])


def _dota_error(tmp_path, label_text, classes=None, read=False, name="P1"):
  root = tmp_path / f"bad{len(os.listdir(tmp_path))}"
  _write(str(root / "images" / f"{name}.png"), 32, 32)
  os.makedirs(root / "labelTxt")
  (root / "labelTxt" / f"{name}.txt").write_text(label_text)
  with pytest.raises(ReaderError) as e:
    src = DotaDetection(str(root), SENSOR, "train", classes=classes, val_fraction=0.0)
    if read:
      [src[i] for i in range(len(src))]
  return str(e.value), root


def test_dota_bad_input_names_the_file_and_line(tmp_path):
  good = _line([[2, 3], [12, 3], [12, 9], [2, 9]], "plane", 0)
  msg, _ = _dota_error(tmp_path, f"gsd:0.5\n{good}\n1 2 3 4 5 6 plane 0\n")
  assert "P1.txt:3" in msg and "fields" in msg
  msg, _ = _dota_error(tmp_path, f"{good}\n1 2 3 4 5 6 7 x8 plane 0\n")
  assert "P1.txt:2" in msg and "non-numeric" in msg
  msg, _ = _dota_error(tmp_path, f"{good}\n1 1 5 5 9 9 3 3 plane 0\n")  # collinear
  assert "P1.txt:2" in msg and "zero area" in msg
  msg, _ = _dota_error(tmp_path, f"{good}\n{good[:-1]}2\n")
  assert "P1.txt:2" in msg and "difficult flag" in msg
  msg, _ = _dota_error(tmp_path, f"{good}\n{good.replace('plane', 'boat')}\n",
                       classes=("plane",))
  assert "P1.txt:2" in msg and "'boat'" in msg
  outside = _line([[20, 20], [33.5, 20], [33.5, 30], [20, 30]], "plane", 0)  # 32 px image
  msg, _ = _dota_error(tmp_path, f"{good}\n{outside}\n", read=True)
  assert "P1.txt:2" in msg and "leaves the image" in msg
  within = _line([[20, 20], [32.9, 20], [32.9, 30], [-0.9, 30]], "plane", 0)
  root = tmp_path / "ok"
  _write(str(root / "images" / "P1.png"), 32, 32)
  os.makedirs(root / "labelTxt")
  (root / "labelTxt" / "P1.txt").write_text(within + "\n")
  assert len(DotaDetection(str(root), SENSOR, "train", val_fraction=0.0)[0]["boxes"]) == 1
  (root / "labelTxt" / "P9.txt").write_text(good + "\n")  # a label file without its image
  with pytest.raises(ReaderError, match=r"P9\.txt: label file without an image"):
    DotaDetection(str(root), SENSOR, "train", val_fraction=0.0)
  os.remove(root / "labelTxt" / "P9.txt")
  _write(str(root / "images" / "P2.png"), 32, 32)  # an image without its label file
  with pytest.raises(ReaderError, match=r"P2\.png: image without its label file"):
    DotaDetection(str(root), SENSOR, "train", val_fraction=0.0)


def test_dota_split_folders_number_classes_by_the_training_labels(tmp_path):
  for part, cls in (("train", "ship"), ("val", "plane")):
    _write(str(tmp_path / part / "images" / "P1.png"), 32, 32)
    os.makedirs(tmp_path / part / "labelTxt")
    (tmp_path / part / "labelTxt" / "P1.txt").write_text(
        _line([[2, 3], [12, 3], [12, 9], [2, 9]], cls, 0) + "\n"
        + _line([[20, 3], [30, 3], [30, 9], [20, 9]], "plane", 0) + "\n")
  ev = DotaDetection(str(tmp_path), SENSOR, "eval")
  assert ev.class_names == ("plane", "ship") and ev[0]["box_classes"].tolist() == [0, 0]
  (tmp_path / "val" / "labelTxt" / "P1.txt").write_text(
      _line([[2, 3], [12, 3], [12, 9], [2, 9]], "car", 0) + "\n")
  with pytest.raises(ReaderError, match=r"P1\.txt:1: class 'car' does not occur"):
    DotaDetection(str(tmp_path), SENSOR, "eval")


# --- make_reader and the task pipeline ---------------------------------------------------------
def test_make_reader_and_eval_pipeline_batches_boxes(tmp_path):
  coco_root = _coco_tree(tmp_path / "coco")
  src = make_reader({"format": "coco", "root": coco_root, "sensor": "gaofen2_pms",
                     "val_fraction": 0.0}, REG, "train")
  assert isinstance(src, CocoDetection) and src.num_classes == 3
  batches = list(make_task_eval_dataset(src, registry=REG, num_views=1, batch_size=2,
                                        crop_size=32, max_channels=4, num_classes=3,
                                        max_boxes=8))
  assert len(batches) == 2
  first = batches[0]
  assert first["gt_boxes"].shape == (2, 8, 5) and first["gt_valid"].shape == (2, 8)
  # a.png 48 x 40: centre crop at x = 8, y = 4; the box at x 40..48 leaves it (dropped).
  assert first["gt_valid"].sum(1).tolist() == [2, 1] and first["gt_dropped"].tolist() == [1, 0]
  np.testing.assert_allclose(first["gt_boxes"][0, :2], [[8, 7, 12, 10, 0], [14, 19, 4, 6, 0]])
  assert first["gt_classes"][0, :2].tolist() == [1, 2]
  assert first["gt_difficult"][1].tolist() == [1] + [0] * 7
  assert batches[1]["gt_valid"].sum(1).tolist() == [0, 0]  # the negative, then padding
  assert batches[1]["weight"].tolist() == [1, 0]

  dota_root = _dota_tree(tmp_path / "dota")
  src = make_reader({"format": "dota", "root": dota_root, "sensor": "gaofen2_pms",
                     "classes": ["plane", "ship", "small-vehicle"], "val_fraction": 0.0},
                    REG, "train")
  assert isinstance(src, DotaDetection) and src.class_names == ("plane", "ship", "small-vehicle")
  batch = next(iter(make_task_eval_dataset(src, registry=REG, num_views=1, batch_size=2,
                                           crop_size=32, max_channels=4, num_classes=3,
                                           max_boxes=8)))
  assert batch["gt_boxes"].shape == (2, 8, 5)
  # P1 64 x 64, centre crop at (16, 16): the plane (x 10..30, y 12..20) keeps 35% of its area
  # and the tall ship (x 5..9) none: both dropped; the rotated boxes stay.
  # P2 32 x 48 (W x H): crop at y = 8; its box (y 3..9) keeps 1/6: dropped.
  assert batch["gt_valid"].sum(1).tolist() == [2, 0]
  assert batch["gt_dropped"].tolist() == [2, 1]
  np.testing.assert_allclose(batch["gt_boxes"][0, :2],
                             [[16, 14, 20, 10, 0.3], [4, 28, 6, 16, np.pi / 2 - 1.2]], atol=1e-5)
