"""metrics/detection.py: CocoEvaluator against pycocotools run by hand on a COCO file written here,
DotaEvaluator against an example whose AP is computed by hand below."""
import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from ringmoe_jax.metrics.detection import CocoEvaluator, DotaEvaluator, allpoint_ap, voc07_ap
from ringmoe_jax.ops.boxes import rbox_to_corners, rotated_iou_np

HP = math.pi / 2


def _pad_batch(images, box_dim, d_max=20, g_max=9):
  """Per-image lists -> the padded (B, ...) pred / batch dicts of update(); padding slots hold
  garbage (NaN boxes, out-of-range classes) that must be dropped by the valid masks."""
  b = len(images)
  pred = {"boxes": np.full((b, d_max, box_dim), np.nan), "scores": np.full((b, d_max), np.nan),
          "classes": np.full((b, d_max), 99, np.int32), "valid": np.zeros((b, d_max), bool)}
  batch = {"gt_boxes": np.full((b, g_max, box_dim), np.nan),
           "gt_classes": np.full((b, g_max), -7, np.int32), "gt_valid": np.zeros((b, g_max), bool),
           "gt_difficult": np.ones((b, g_max), bool), "weight": np.ones((b,), np.float32)}
  for i, im in enumerate(images):
    for j, (box, score, cls) in enumerate(im.get("dets", [])):
      pred["boxes"][i, j], pred["scores"][i, j], pred["classes"][i, j] = box, score, cls
      pred["valid"][i, j] = True
    for j, (box, cls, diff) in enumerate(im.get("gts", [])):
      batch["gt_boxes"][i, j], batch["gt_classes"][i, j] = box, cls
      batch["gt_valid"][i, j], batch["gt_difficult"][i, j] = True, diff
    if im.get("padding"):
      batch["weight"][i] = 0
  return pred, batch


def _scene(seed=0):
  """3 real images (2 classes, jittered and false detections, one crowd box, one empty image)
  and one padding example (weight 0) holding boxes that would change every number."""
  rng = np.random.default_rng(seed)
  images = []
  for i in range(3):
    gts, dets = [], []
    for _ in range(rng.integers(3, 7)):
      xy, wh = rng.uniform(0, 200, 2), rng.uniform(8, 120, 2)
      box, cls = np.r_[xy, xy + wh], int(rng.integers(0, 2))
      gts.append((box, cls, False))
      if rng.uniform() < 0.8:
        dets.append((box + rng.normal(0, 0.08 * wh.mean(), 4), rng.uniform(0.2, 1), cls))
      if rng.uniform() < 0.3:
        dets.append((box + rng.normal(0, 0.3 * wh.mean(), 4), rng.uniform(0, 0.6), 1 - cls))
    for _ in range(2):
      xy = rng.uniform(0, 250, 2)
      dets.append((np.r_[xy, xy + rng.uniform(5, 60, 2)], rng.uniform(0, 0.7),
                   int(rng.integers(0, 2))))
    images.append({"gts": gts, "dets": dets})
  images[1]["gts"].append((np.array([0.0, 0, 300, 40]), 0, True))      # crowd region
  images[1]["dets"].append((np.array([10.0, 5, 50, 30]), 0.95, 0))      # inside it
  images.insert(2, {})                                                  # no GT, no detection
  images.append({"gts": [(np.array([0.0, 0, 10, 10]), 0, False)],
                 "dets": [(np.array([50.0, 50, 60, 60]), 0.99, 1)], "padding": True})
  return images


def _pycocotools_reference(images):
  """COCO file and results written directly from the image lists (own ids: images 101..,
  categories 7 and 9) -> COCOeval with its default parameters and summarize()."""
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  cat = {0: 7, 1: 9}
  gt = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "a"},
                                                        {"id": 9, "name": "b"}]}
  res = []
  real = [im for im in images if not im.get("padding")]
  for k, im in enumerate(real):
    gt["images"].append({"id": 101 + k, "width": 400, "height": 400})
    for box, cls, crowd in im.get("gts", []):
      w, h = box[2] - box[0], box[3] - box[1]
      gt["annotations"].append({"id": 1000 + len(gt["annotations"]), "image_id": 101 + k,
                                "category_id": cat[cls], "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": int(crowd)})
    for box, score, cls in im.get("dets", []):
      res.append({"image_id": 101 + k, "category_id": cat[cls], "score": score,
                  "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
  gt, res = json.loads(json.dumps(gt)), json.loads(json.dumps(res))  # plain JSON types
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(res), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  prec = ev.eval["precision"][:, :, :, 0, -1]
  return ev.stats, [float(np.mean(prec[:, :, k])) for k in range(2)]


def test_coco_matches_pycocotools(tmp_path):
  images = _scene()
  stats, per_class = _pycocotools_reference(images)
  assert 0.2 < stats[0] < 0.95                                   # a non-trivial score
  ev = CocoEvaluator(2, ["a", "b"], max_det=300)
  pred, batch = _pad_batch(images, 4)
  batch["gt_iscrowd"] = batch.pop("gt_difficult")
  ev.update({k: v[:2] for k, v in pred.items()}, {k: v[:2] for k, v in batch.items()})
  ev.update({k: v[2:] for k, v in pred.items()}, {k: v[2:] for k, v in batch.items()})
  out = ev.compute()
  assert out["images"] == 4
  for key, s in (("map", 0), ("map50", 1), ("map75", 2), ("map_small", 3), ("map_medium", 4),
                 ("map_large", 5), ("mar@300", 8)):
    ref = stats[s] if stats[s] > -1 else float("nan")
    np.testing.assert_allclose(out[key], ref, atol=1e-12, err_msg=key)
  np.testing.assert_allclose([out["ap/a"], out["ap/b"]], per_class, atol=1e-12)
  # The exported files are a standard COCO pair.
  gt_path, res_path = ev.to_coco_json(str(tmp_path / "gt.json"))
  with open(gt_path) as f, open(res_path) as g:
    gt, res = json.load(f), json.load(g)
  assert len(gt["images"]) == 4 and len(res) == sum(len(im.get("dets", [])) for im in images[:4])
  assert {a["iscrowd"] for a in gt["annotations"]} == {0, 1}


def test_coco_merge_equals_single():
  images = _scene(1)
  pred, batch = _pad_batch(images, 4)
  one, a, b = CocoEvaluator(2), CocoEvaluator(2), CocoEvaluator(2)
  one.update(pred, batch)
  a.update({k: v[:1] for k, v in pred.items()}, {k: v[:1] for k, v in batch.items()})
  b.update({k: v[1:] for k, v in pred.items()}, {k: v[1:] for k, v in batch.items()})
  assert a.merge(b).compute() == pytest.approx(one.compute(), nan_ok=True)
  with pytest.raises(ValueError, match="max_det"):
    a.merge(CocoEvaluator(2, max_det=100))


def test_coco_perfect_empty_and_missing_class():
  gts = [(np.array([10.0, 10, 50, 40]), 0, False), (np.array([60.0, 5, 90, 90]), 1, False)]
  images = [{"gts": gts, "dets": [(b, 0.9, c) for b, c, _ in gts]}, {}]
  ev = CocoEvaluator(3, ["x", "y", "z"])
  ev.update(*_pad_batch(images, 4))
  out = ev.compute()
  assert out["map"] == pytest.approx(1.0) and out["map50"] == pytest.approx(1.0)
  assert out["ap/x"] == pytest.approx(1.0) and math.isnan(out["ap/z"])   # z: no ground truth
  # Ground truth but no detection at all (pycocotools' loadRes cannot take an empty list): 0.
  ev = CocoEvaluator(3)
  ev.update(*_pad_batch([{"gts": gts}, {}], 4))
  assert ev.compute()["map"] == 0.0
  # Nothing at all: NaN, no crash.
  ev = CocoEvaluator(3)
  ev.update(*_pad_batch([{}, {}], 4))
  assert math.isnan(ev.compute()["map"])
  assert math.isnan(CocoEvaluator(3).compute()["map50"])


def _dota_images():
  """Class 0 (ap by hand in test_dota_hand_computed), class 1 (a duplicate), class 2 (no GT)."""
  a = np.array([30.0, 30, 24, 10, 0.7])
  b = np.array([120.0, 40, 30, 12, -1.2])
  c = np.array([60.0, 80, 20, 20, 0.0])
  d = np.array([150.0, 150, 40, 4, -HP])
  g1 = np.array([50.0, 50, 20, 10, 0])
  g2 = np.array([51.0, 50, 20, 10, 0])
  images = [
      {"gts": [(a, 0, False), (b, 0, True), (g1, 1, False), (g2, 1, False)],
       "dets": [(np.array([30.0, 30, 10, 24, 0.7 + HP]), 0.9, 0),   # a, twin representation
                (b + [0.5, 0, 0, 0, 0], 0.8, 0),                    # difficult b
                (g1, 0.9, 1), (np.array([50.2, 50, 20, 10, 0]), 0.8, 1), (g2, 0.7, 1),
                (c, 0.5, 2)]},
      {"gts": [(c, 0, False), (d, 0, False)],
       "dets": [(np.array([150.0, 150, 40, 4, 0.0]), 0.7, 0),       # crosses d at 90 deg
                (c + [1, 1, 0, 0, 0.05], 0.6, 0)]},
      {},
      {"gts": [(a, 0, False)], "dets": [(a, 0.95, 0), (d, 0.99, 0)], "padding": True},
  ]
  return images


def test_dota_hand_computed():
  images = _dota_images()
  # The IoUs the hand computation relies on, checked with shapely.
  poly = lambda r: Polygon(rbox_to_corners(np.asarray(r, np.float64)))  # noqa: E731
  pairs = [(im_dets[0], gt[0]) for im_dets, gt in (
      (images[0]["dets"][0], images[0]["gts"][0]), (images[0]["dets"][1], images[0]["gts"][1]),
      (images[1]["dets"][0], images[1]["gts"][1]), (images[1]["dets"][1], images[1]["gts"][0]),
      (images[0]["dets"][3], images[0]["gts"][2]), (images[0]["dets"][3], images[0]["gts"][3]))]
  ious = np.array([float(rotated_iou_np(p[None], q[None])[0, 0]) for p, q in pairs])
  ref = np.array([poly(p).intersection(poly(q)).area / poly(p).union(poly(q)).area
                  for p, q in pairs])
  np.testing.assert_allclose(ious, ref, atol=1e-9)
  assert ious[0] == pytest.approx(1) and ious[1] > 0.9 and ious[2] < 0.1 and ious[3] > 0.5
  assert ious[4] > ious[5] > 0.5          # the duplicate's best GT is g1; g2 also >= 0.5
  # Class 0: 3 non-difficult GT (a, c, d), difficult b. Detections by score:
  #   .9 on a -> TP   .8 on b (difficult) -> ignored   .7 across d (IoU .05) -> FP   .6 on c -> TP
  #   tp = 1 1 1 2, fp = 0 0 1 1, recall = 1/3 1/3 1/3 2/3, precision = 1 1 1/2 2/3.
  #   11-point: t = 0, .1, .2, .3 -> max precision 1 (recall 1/3 >= t); t = .4, .5, .6 -> 2/3;
  #   t >= .7 -> 0: AP = (4 + 3 * 2/3) / 11 = 6/11.
  #   all-point: envelope 1 up to recall 1/3, 2/3 up to 2/3: 1/3 + 2/9 = 5/9.
  # Class 1: GT g1, g2 (IoU(g1, g2) = 19/21). Detections: .9 = g1 -> TP; .8 best on g1 (already
  #   matched) -> FP, not re-matched to g2; .7 = g2 -> TP. recall .5 .5 1, precision 1 .5 2/3.
  #   11-point: t <= .5 (6 points) -> 1, t >= .6 (5 points) -> 2/3: (6 + 10/3) / 11 = 28/33.
  #   all-point: .5 * 1 + .5 * 2/3 = 5/6.
  # Class 2: a detection, no GT -> NaN, not in the mean.
  ev = DotaEvaluator(3, ["plane", "ship", "tank"])
  pred, batch = _pad_batch(images, 5)
  ev.update(pred, batch)
  out = ev.compute()
  assert out["ap50/plane"] == pytest.approx(6 / 11, abs=1e-12)
  assert out["ap50_allpoint/plane"] == pytest.approx(5 / 9, abs=1e-12)
  assert out["ap50/ship"] == pytest.approx(28 / 33, abs=1e-12)
  assert out["ap50_allpoint/ship"] == pytest.approx(5 / 6, abs=1e-12)
  assert math.isnan(out["ap50/tank"])
  assert out["map50"] == pytest.approx((6 / 11 + 28 / 33) / 2, abs=1e-12)
  assert out["map50_allpoint"] == pytest.approx((5 / 9 + 5 / 6) / 2, abs=1e-12)
  assert out["images"] == 3
  # Same numbers from two halves merged; the difficult flag is what makes class 0's AP.
  h1, h2 = DotaEvaluator(3, ["plane", "ship", "tank"]), DotaEvaluator(3, ["plane", "ship", "tank"])
  h1.update({k: v[:1] for k, v in pred.items()}, {k: v[:1] for k, v in batch.items()})
  h2.update({k: v[1:] for k, v in pred.items()}, {k: v[1:] for k, v in batch.items()})
  assert h1.merge(h2).compute() == pytest.approx(out, nan_ok=True)
  no_diff = copy.deepcopy(batch)
  no_diff.pop("gt_difficult")
  ev = DotaEvaluator(3, ["plane", "ship", "tank"])
  ev.update(pred, no_diff)
  assert ev.compute()["ap50/plane"] != pytest.approx(6 / 11)


def test_voc_ap_helpers():
  rec, prec = np.array([0.3, 0.3, 0.6]), np.array([1.0, 0.5, 0.5])
  # np.arange gives 0.30000000000000004 and 0.6000000000000001: recall 0.3 does not reach the
  # t = 0.3 point, 0.6 not the t = 0.6 point: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> .5; else 0.
  assert voc07_ap(rec, prec) == pytest.approx((3 * 1 + 3 * 0.5) / 11)
  assert allpoint_ap(rec, prec) == pytest.approx(0.3 + 0.3 * 0.5)
  assert voc07_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_update_checks():
  ev = DotaEvaluator(2)
  pred, batch = _pad_batch([{"gts": [(np.zeros(5), 0, False)],
                             "dets": [(np.zeros(5), 0.5, 2)]}], 5)
  with pytest.raises(ValueError, match="detection class"):
    ev.update(pred, batch)
  with pytest.raises(ValueError, match="boxes must be"):
    CocoEvaluator(2).update(pred, batch)
