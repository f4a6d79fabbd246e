"""Object detection metrics on the host: COCO mAP (horizontal boxes, pycocotools) and DOTA mAP@50
(rotated boxes, the devkit's matching on exact polygon IoU).

Inputs of `update(pred, batch)` (numpy; `pred` from the jitted predict, e.g.
`ops.nms.topk_detections` vmapped over the batch):
  pred   "boxes" (B, D, 4 | 5), "scores" (B, D), "classes" (B, D) int, "valid" (B, D) bool
  batch  "gt_boxes" (B, G, 4 | 5), "gt_classes" (B, G) int, "gt_valid" (B, G) bool,
         optional ignore flags (B, G) bool (below), "weight" (B,): 0 = padding example, skipped
         (any other weight counts the image once: detection metrics have no sample weights).
Boxes follow ringmoe_jax.ops.boxes: xyxy pixels (COCO), (cx, cy, w, h, angle) le90 (DOTA).
Entries with valid False are dropped before any check, so padding may hold anything. Classes are
0-based ids in [0, num_classes). An image without ground truth and detections is fine.

Undefined values are NaN (as in the other accumulators), never pycocotools' -1: a class without
(non-ignored) ground truth has NaN AP and is left out of the means; its detections then count
nowhere (COCO and the DOTA devkit both skip such classes).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Sequence

import numpy as np

from ringmoe_jax.metrics._util import as_int, as_weight, check_compatible, check_range, class_keys
from ringmoe_jax.ops.boxes import rotated_iou_np


class _DetectionImages:
  """Per-image detections and ground truth accumulated by `update`, shared by both evaluators."""

  box_dim = 4
  ignore_keys: tuple[str, ...] = ()

  def __init__(self, num_classes: int, class_names: Sequence[str] | None = None):
    self.num_classes = int(num_classes)
    self.keys = class_keys(self.num_classes, class_names)
    self.reset()

  def reset(self) -> None:
    # One dict per image: det_boxes (n, d), det_scores (n,), det_classes (n,), gt_boxes (m, d),
    # gt_classes (m,), gt_ignore (m,) bool.
    self.images: list[dict[str, np.ndarray]] = []

  def _boxes(self, x, name: str, lead: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.shape != lead + (self.box_dim,):
      raise ValueError(f"{name} must be {lead + (self.box_dim,)}, got shape {x.shape}")
    return x

  def update(self, pred: dict, batch: dict) -> None:
    """pred / batch: the dicts of the module docstring."""
    scores = np.asarray(pred["scores"], np.float64)
    if scores.ndim != 2:
      raise ValueError(f"scores must be (B, D), got shape {scores.shape}")
    b, d = scores.shape
    boxes = self._boxes(pred["boxes"], "boxes", (b, d))
    classes = as_int(pred["classes"], "classes")
    valid = np.asarray(pred["valid"]).astype(bool)
    gt_classes = as_int(batch["gt_classes"], "gt_classes")
    if gt_classes.ndim != 2 or gt_classes.shape[0] != b:
      raise ValueError(f"gt_classes must be ({b}, G), got shape {gt_classes.shape}")
    g = gt_classes.shape[1]
    gt_boxes = self._boxes(batch["gt_boxes"], "gt_boxes", (b, g))
    gt_valid = np.asarray(batch["gt_valid"]).astype(bool)
    ignore = np.zeros((b, g), bool)
    for key in self.ignore_keys:
      if key in batch:
        ignore |= np.asarray(batch[key]).astype(bool).reshape(b, g)
    for name, x, shape in (("classes", classes, (b, d)), ("valid", valid, (b, d)),
                           ("gt_valid", gt_valid, (b, g))):
      if x.shape != shape:
        raise ValueError(f"{name} must be {shape}, got shape {x.shape}")
    w = as_weight(batch.get("weight"), b)
    for i in np.flatnonzero(w != 0):
      dm, gm = valid[i], gt_valid[i]
      check_range(classes[i][dm], self.num_classes, "detection class")
      check_range(gt_classes[i][gm], self.num_classes, "ground-truth class")
      if not np.all(np.isfinite(scores[i][dm])) or not np.all(np.isfinite(boxes[i][dm])):
        raise ValueError("valid detections contain NaN or inf (scores or boxes)")
      self.images.append({
          "det_boxes": boxes[i][dm], "det_scores": scores[i][dm], "det_classes": classes[i][dm],
          "gt_boxes": gt_boxes[i][gm], "gt_classes": gt_classes[i][gm], "gt_ignore": ignore[i][gm],
      })

  def merge(self, other: "_DetectionImages") -> "_DetectionImages":
    check_compatible(self, other, self._settings())
    self.images += other.images
    return self

  def _settings(self) -> tuple[str, ...]:
    return ("num_classes", "keys")


# ---------------------------------------------------------------------------------- COCO


def _mean_valid(x: np.ndarray) -> float:
  """pycocotools' mean over the defined entries (> -1), NaN instead of -1 when there is none."""
  x = x[x > -1]
  return float(np.mean(x)) if x.size else float("nan")


class CocoEvaluator(_DetectionImages):
  """COCO bbox mAP of horizontal boxes with pycocotools' COCOeval.

  Export: image k (in update order, merged accumulators after this one's) has id k + 1; class c
  has category id c + 1 (COCO ids start at 1; annotation ids must be > 0 for COCOeval's
  matching); boxes become [x, y, w, h] with area w * h.

  Ignored ground truth: any of the batch keys `gt_iscrowd`, `gt_ignore`, `gt_difficult` marks a
  box iscrowd=1, COCO's only ignore mechanism for bbox (COCOeval overwrites an 'ignore' field with
  iscrowd): detections matched to it count neither as TP nor FP, with IoU = intersection /
  detection area, and it is not in the recall denominator.

  `max_det`: COCOeval's params.maxDets = [1, 10, max_det] (dense scenes have far more than COCO's
  100 objects; pycocotools applies it per image and category). The metrics come from
  eval['precision'] directly, not from summarize(), whose first AP is hard-wired to maxDets=100.

  compute() returns
    map                AP averaged over IoU .50:.05:.95, recall points and classes with GT
    map50, map75       at IoU .5 / .75
    map_small, map_medium, map_large   COCO's area ranges (< 32^2, 32^2-96^2, > 96^2 px^2)
    mar@<max_det>      mean recall over IoUs and classes with <= max_det detections
    ap/<name>, ap50/<name>   per class (NaN: no ground truth of that class)
    images             number of images evaluated
  """

  ignore_keys = ("gt_iscrowd", "gt_ignore", "gt_difficult")

  def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
               max_det: int = 300):
    self.max_det = int(max_det)
    if self.max_det < 10:
      raise ValueError(f"max_det must be >= 10 (maxDets = [1, 10, max_det]), got {max_det}")
    super().__init__(num_classes, class_names)

  def _settings(self) -> tuple[str, ...]:
    return ("num_classes", "keys", "max_det")

  def to_coco(self) -> tuple[dict, list[dict]]:
    """(ground-truth dataset dict, results list), both JSON-serialisable."""
    images, annotations, results = [], [], []
    for k, im in enumerate(self.images):
      image_id = k + 1
      images.append({"id": image_id})
      for box, cls, ign in zip(im["gt_boxes"], im["gt_classes"], im["gt_ignore"]):
        xywh = _xywh(box)
        annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                            "category_id": int(cls) + 1, "bbox": xywh,
                            "area": xywh[2] * xywh[3], "iscrowd": int(ign)})
      for box, score, cls in zip(im["det_boxes"], im["det_scores"], im["det_classes"]):
        results.append({"image_id": image_id, "category_id": int(cls) + 1, "bbox": _xywh(box),
                        "score": float(score)})
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(self.keys)]
    return {"images": images, "annotations": annotations, "categories": categories}, results

  def to_coco_json(self, path: str, results_path: str | None = None) -> tuple[str, str]:
    """Write the ground truth to `path` and the results to `results_path` (default: `path` with
    `.json` replaced by `_results.json`); returns both paths (for COCO(path).loadRes(...))."""
    if results_path is None:
      stem = path[:-5] if path.endswith(".json") else path
      results_path = stem + "_results.json"
    gt, results = self.to_coco()
    for p, obj in ((path, gt), (results_path, results)):
      with open(p, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return path, results_path

  def _run_cocoeval(self):
    # Imported here: only evaluation needs pycocotools, not the model code that imports metrics.
    from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
    from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
    gt, results = self.to_coco()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints every step
      coco_gt = COCO()
      coco_gt.dataset = gt
      coco_gt.createIndex()
      if results:
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes adds fields in place
      else:  # loadRes indexes results[0]
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(gt["images"]), "categories": gt["categories"],
                           "annotations": []}
        coco_dt.createIndex()
      ev = COCOeval(coco_gt, coco_dt, "bbox")
      ev.params.maxDets = [1, 10, self.max_det]
      ev.evaluate()
      ev.accumulate()
    return ev

  def compute(self) -> dict[str, float]:
    nan = float("nan")
    out = {"map": nan, "map50": nan, "map75": nan, "map_small": nan, "map_medium": nan,
           "map_large": nan, f"mar@{self.max_det}": nan}
    per_class = np.full((self.num_classes, 2), nan)
    if self.images:
      ev = self._run_cocoeval()
      prec = ev.eval["precision"]      # (T IoUs, R recall points, K classes, A areas, M maxDets)
      t50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
      t75 = int(np.argmin(np.abs(ev.params.iouThrs - 0.75)))
      out["map"] = _mean_valid(prec[:, :, :, 0, -1])
      out["map50"] = _mean_valid(prec[t50, :, :, 0, -1])
      out["map75"] = _mean_valid(prec[t75, :, :, 0, -1])
      for a, name in ((1, "small"), (2, "medium"), (3, "large")):
        out[f"map_{name}"] = _mean_valid(prec[:, :, :, a, -1])
      out[f"mar@{self.max_det}"] = _mean_valid(ev.eval["recall"][:, :, 0, -1])
      for c in range(self.num_classes):   # catIds are sorted: index c is category c + 1
        per_class[c] = (_mean_valid(prec[:, :, c, 0, -1]), _mean_valid(prec[t50, :, c, 0, -1]))
    out["images"] = float(len(self.images))
    for c, key in enumerate(self.keys):
      out[f"ap/{key}"] = float(per_class[c, 0])
      out[f"ap50/{key}"] = float(per_class[c, 1])
    return out


def _xywh(box: np.ndarray) -> list[float]:
  x1, y1, x2, y2 = (float(v) for v in box)
  return [x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)]


# ---------------------------------------------------------------------------------- DOTA


def voc07_ap(rec: np.ndarray, prec: np.ndarray) -> float:
  """VOC2007 11-point AP, the DOTA devkit's `voc_ap(use_07_metric=True)` line for line: the mean
  over t in np.arange(0, 1.1, 0.1) of the best precision at recall >= t (0 if never reached).
  The thresholds are np.arange's (0.30000000000000004, not 0.3), exactly as the devkit."""
  ap = 0.0
  for t in np.arange(0.0, 1.1, 0.1):
    p = float(np.max(prec[rec >= t])) if np.any(rec >= t) else 0.0
    ap += p / 11.0
  return ap


def allpoint_ap(rec: np.ndarray, prec: np.ndarray) -> float:
  """Area under the monotone (right-to-left running max) precision envelope, the devkit's
  `voc_ap(use_07_metric=False)` (VOC2010+)."""
  mrec = np.concatenate([[0.0], rec, [1.0]])
  mpre = np.concatenate([[0.0], prec, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  i = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


class DotaEvaluator(_DetectionImages):
  """DOTA task-1 (oriented boxes) mAP at one IoU threshold (0.5), the devkit's convention.

  Per class, over the whole dataset:
  - detections are visited by descending score (stable: ties in update order);
  - each takes the ground truth of its image and class with the highest exact polygon IoU
    (`ops.boxes.rotated_iou_np`), among ALL of them (already matched and difficult included), as
    the devkit's voc_eval and mmrotate's eval_rbbox_map do; with IoU >= iou_threshold (the devkit
    writes >, which differs only at exactly 0.5):
      difficult GT            -> neither TP nor FP,
      not yet matched         -> TP, the GT becomes matched,
      already matched         -> FP (a duplicate; it does NOT fall back to the next-best GT),
    otherwise FP;
  - recall = TP / (non-difficult GT), precision = TP / (TP + FP) along the ranking;
  - AP: VOC07 11-point (DOTA's published number) and all-point beside it.
  Ground truth are rotated rectangles: DOTA's 8-point polygons go through
  `ops.boxes.corners_to_rbox` in the reader (as mmrotate evaluates), so IoUs are rectangle IoUs,
  not the devkit's IoU of the raw quadrilaterals.

  Difficult flags: batch key `gt_difficult` (or `gt_ignore`).

  compute() returns (for iou_threshold 0.5; the number is round(100 t))
    map50, map50_allpoint                mean AP over classes with non-difficult GT
    ap50/<name>, ap50_allpoint/<name>    per class (NaN: no non-difficult GT of that class)
    images
  """

  box_dim = 5
  ignore_keys = ("gt_difficult", "gt_ignore")

  def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
               iou_threshold: float = 0.5):
    self.iou_threshold = float(iou_threshold)
    super().__init__(num_classes, class_names)

  def _settings(self) -> tuple[str, ...]:
    return ("num_classes", "keys", "iou_threshold")

  def class_pr(self, c: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(recall, precision) along class c's ranking and its number of non-difficult GT."""
    scores, hit, gt_id, gt_difficult = [], [], [], []
    offset, npos = 0, 0
    for im in self.images:
      gm = im["gt_classes"] == c
      gts, diff = im["gt_boxes"][gm], im["gt_ignore"][gm]
      npos += int(np.sum(~diff))
      dm = im["det_classes"] == c
      if dm.any():
        scores.append(im["det_scores"][dm])
        if gts.shape[0]:
          iou = rotated_iou_np(im["det_boxes"][dm], gts)
          hit.append(iou.max(axis=1) >= self.iou_threshold)
          gt_id.append(offset + iou.argmax(axis=1))   # first of equal IoUs, as np.argmax
        else:
          hit.append(np.zeros(int(dm.sum()), bool))
          gt_id.append(np.zeros(int(dm.sum()), np.int64))
      gt_difficult.append(diff)
      offset += gts.shape[0]
    if not scores:
      return np.zeros(0), np.zeros(0), npos
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    hit = np.concatenate(hit)[order]
    gt_id = np.concatenate(gt_id)[order]
    difficult = np.concatenate(gt_difficult)[gt_id] & hit if offset else np.zeros_like(hit)
    cand = hit & ~difficult
    # The first candidate (in score order) on each GT is its TP; later ones are duplicates.
    tp = np.zeros(hit.shape, bool)
    pos = np.flatnonzero(cand)
    _, first = np.unique(gt_id[pos], return_index=True)
    tp[pos[first]] = True
    fp = ~hit | (cand & ~tp)
    tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
    rec = tp_c / npos if npos else np.full(tp_c.shape, np.nan)
    prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
    return rec, prec, npos

  def compute(self) -> dict[str, float]:
    ap07 = np.full(self.num_classes, np.nan)
    apall = np.full(self.num_classes, np.nan)
    for c in range(self.num_classes):
      rec, prec, npos = self.class_pr(c)
      if npos:
        ap07[c], apall[c] = voc07_ap(rec, prec), allpoint_ap(rec, prec)
    has = ~np.isnan(ap07)
    t = f"{round(100 * self.iou_threshold)}"
    out = {
        f"map{t}": float(np.mean(ap07[has])) if has.any() else float("nan"),
        f"map{t}_allpoint": float(np.mean(apall[has])) if has.any() else float("nan"),
        "images": float(len(self.images)),
    }
    for c, key in enumerate(self.keys):
      out[f"ap{t}/{key}"] = float(ap07[c])
      out[f"ap{t}_allpoint/{key}"] = float(apall[c])
    return out
