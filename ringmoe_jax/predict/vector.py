"""Detections of a whole scene: merging the windows' boxes, GeoJSON in WGS84.

  merge_nms(boxes, scores, classes, iou, cell)  greedy per-class NMS over the whole scene
  to_feature_collection(...)                    RFC 7946 FeatureCollection (lon / lat, WGS84)
  write_geojson(path, collection)               aside, then os.replace (never half-written)

Boxes are in scene pixel coordinates (x right, y down, pixel (col, row) covers [col, col + 1) x
[row, row + 1)): horizontal (N, 4) xyxy or rotated (N, 5) le90 (`ops/boxes.py`). A window's own
predictions are already NMS-ed by the task; the same object seen by two overlapping windows
gives two boxes, which `merge_nms` resolves like one NMS over the scene (highest score first; a
box goes when a kept box of its class overlaps it with IoU > threshold). Candidates are found
through a grid of `cell`-pixel buckets, so the work is about N x (boxes per neighbourhood), not
N^2, and a scene's worth of boxes merges in seconds.

Geometry: the four corners of a box go through the scene's affine transform into its CRS, then
`rasterio.warp.transform` to EPSG:4326 (longitude, latitude order, as RFC 7946 requires); each
polygon ring is closed and counter-clockwise (the right-hand rule of RFC 7946 section 3.1.6).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from ringmoe_jax.ops import boxes as box_ops


def _area(b: np.ndarray) -> np.ndarray:
  return np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)


def hbox_iou_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of one xyxy box a (4,) with boxes b (M, 4) -> (M,); 0 where the union is 0."""
  iw = np.maximum(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0)
  ih = np.maximum(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0)
  inter = iw * ih
  union = _area(a) + _area(b) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def envelopes(boxes: np.ndarray) -> np.ndarray:
  """(N, 4) xyxy or (N, 5) le90 -> (N, 4) enclosing xyxy."""
  boxes = np.asarray(boxes, np.float64)
  return boxes if boxes.shape[-1] == 4 else box_ops.rbox_to_hbox(boxes)


def merge_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
              iou_threshold: float, cell: float = 64.0) -> np.ndarray:
  """Indices of the boxes kept by greedy per-class NMS, best score first (module docstring).

  boxes (N, 4) xyxy or (N, 5) le90; scores (N,); classes (N,) int. Ties: the lower index first.
  """
  boxes = np.asarray(boxes, np.float64)
  n = len(boxes)
  if n == 0:
    return np.zeros(0, np.int64)
  rotated = boxes.shape[1] == 5
  env = envelopes(boxes)
  order = np.lexsort((np.arange(n), -np.asarray(scores, np.float64)))
  lo = np.floor(env[:, :2] / cell).astype(np.int64)
  hi = np.floor(env[:, 2:] / cell).astype(np.int64)
  buckets: dict[tuple[int, int, int], list[int]] = {}
  kept: list[int] = []
  for i in order:
    keys = [(int(classes[i]), cx, cy) for cx in range(lo[i, 0], hi[i, 0] + 1)
            for cy in range(lo[i, 1], hi[i, 1] + 1)]
    near = sorted({j for k in keys for j in buckets.get(k, ())})
    if near:
      others = boxes[near]
      if rotated:
        iou = box_ops.rotated_iou_np(boxes[i][None], others)[0]
      else:
        iou = hbox_iou_one(boxes[i], others)
      if np.any(iou > iou_threshold):
        continue
    kept.append(int(i))
    for k in keys:
      buckets.setdefault(k, []).append(int(i))
  return np.asarray(kept, np.int64)


def corners(boxes: np.ndarray) -> np.ndarray:
  """(N, 4) xyxy or (N, 5) le90 -> (N, 4, 2) corner points (x, y) in pixels."""
  boxes = np.asarray(boxes, np.float64)
  if boxes.shape[-1] == 5:
    return box_ops.rbox_to_corners(boxes)
  x1, y1, x2, y2 = boxes.T
  return np.stack([np.stack([x1, y1], -1), np.stack([x2, y1], -1), np.stack([x2, y2], -1),
                   np.stack([x1, y2], -1)], axis=1)


def pixel_to_lonlat(points: np.ndarray, transform, crs) -> np.ndarray:
  """(..., 2) pixel (x, y) -> (..., 2) (longitude, latitude) in degrees, WGS84."""
  from rasterio.warp import transform as warp  # pylint: disable=import-outside-toplevel
  pts = np.asarray(points, np.float64)
  flat = pts.reshape(-1, 2)
  a, b, c, d, e, f = tuple(transform)[:6]
  xs = a * flat[:, 0] + b * flat[:, 1] + c
  ys = d * flat[:, 0] + e * flat[:, 1] + f
  if flat.shape[0] == 0:
    return pts
  lon, lat = warp(crs, "EPSG:4326", xs.tolist(), ys.tolist())
  return np.stack([np.asarray(lon), np.asarray(lat)], -1).reshape(pts.shape)


def to_feature_collection(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                          class_names: Sequence[str], transform, crs,
                          extra: dict | None = None) -> dict:
  """RFC 7946 FeatureCollection: one Polygon per box, properties class / class_id / score."""
  ring = pixel_to_lonlat(corners(boxes), transform, crs)      # (N, 4, 2) lon, lat
  features = []
  for k in range(len(ring)):
    pts = ring[k]
    x, y = pts[:, 0], pts[:, 1]
    if np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:   # clockwise -> reverse
      pts = pts[::-1]
    coords = [[float(p[0]), float(p[1])] for p in pts] + [[float(pts[0, 0]), float(pts[0, 1])]]
    cid = int(classes[k])
    features.append({
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [coords]},
        "properties": {"class": class_names[cid] if 0 <= cid < len(class_names) else str(cid),
                       "class_id": cid, "score": float(scores[k])}})
  out = {"type": "FeatureCollection", "features": features}
  if extra:
    out.update(extra)
  return out


def write_geojson(path: str, collection: dict) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(collection, f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
