"""Object boxes in task records and batches: crop / flip, drop-and-count, fixed-size padding.

Convention (one for every reader, the simulator and the detector): a box is a rotated
rectangle `(cx, cy, w, h, angle)` in pixels of its tile, **le90**: angle in [-pi/2, pi/2)
radians, `w` the side along the direction (cos angle, sin angle) in image coordinates (x right,
y down: a positive angle turns the x axis toward y). A horizontal box (COCO) is angle 0 with
w = x2 - x1, h = y2 - y1; horizontal detection uses every box's axis-aligned envelope.

Record keys (readers/, data/task_sources.py):
  "boxes" (N, 5) float32, "box_classes" (N,) int, optional "box_difficult" (N,) bool (DOTA).
Batch keys (`pad_boxes`, G = task.max_boxes):
  "gt_boxes" (B, G, 5) float32, "gt_classes" (B, G) int32, "gt_valid" (B, G) float32,
  "gt_difficult" (B, G) float32, "gt_dropped" (B,) int32 = boxes of the record not in the batch
  (left the crop, or past G): never silently lost, the task logs their sum.

A box survives a crop while at least `MIN_VISIBLE` of its area stays inside the crop window;
it keeps its full extent (a detector should predict the whole object at the tile edge; COCO /
DOTA evaluation of crops does the same), else it is dropped and counted.
"""
from __future__ import annotations

import numpy as np

from ringmoe_jax.ops.boxes import rbox_to_corners, rbox_to_hbox

MIN_VISIBLE = 0.5  # fraction of a box's area inside the crop for it to stay a ground truth


def wrap_le90(angle: np.ndarray) -> np.ndarray:
  """Any angle -> [-pi/2, pi/2): a rectangle turned by pi is the same rectangle."""
  return (np.asarray(angle, np.float64) + np.pi / 2) % np.pi - np.pi / 2


def from_simulator(rb: np.ndarray) -> np.ndarray:
  """The simulator's (cy, cx, h, w, a) (its mask: height axis along (y, x) = (cos a, sin a),
  width axis along (x, y) = (cos a, -sin a)) -> le90 (cx, cy, w, h, -a wrapped). (N, 5)."""
  rb = np.asarray(rb, np.float64).reshape(-1, 5)
  return np.stack([rb[:, 1], rb[:, 0], rb[:, 3], rb[:, 2], wrap_le90(-rb[:, 4])],
                  axis=1).astype(np.float32)


def corners(boxes: np.ndarray) -> np.ndarray:
  """(N, 5) le90 -> (N, 4, 2) corners (x, y) (`ops.boxes.rbox_to_corners`, float64)."""
  return rbox_to_corners(np.asarray(boxes, np.float64).reshape(-1, 5))


def _clip_area(poly: np.ndarray, size: float) -> float:
  """Area of polygon (K, 2) inside [0, size]^2 (Sutherland-Hodgman against the 4 edges)."""
  pts = [tuple(p) for p in poly]
  for axis, bound, keep_less in ((0, 0.0, False), (0, size, True), (1, 0.0, False),
                                 (1, size, True)):
    inside = (lambda p: p[axis] <= bound) if keep_less else (lambda p: p[axis] >= bound)
    out = []
    for i, cur in enumerate(pts):
      prev = pts[i - 1]
      if inside(cur) != inside(prev):
        t = (bound - prev[axis]) / (cur[axis] - prev[axis])
        out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
      if inside(cur):
        out.append(cur)
    pts = out
    if not pts:
      return 0.0
  p = np.asarray(pts)
  return 0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], -1))
                         - np.dot(p[:, 1], np.roll(p[:, 0], -1))))


def window(boxes: np.ndarray, classes: np.ndarray, difficult: np.ndarray, y: int, x: int,
           size: int, flip_h: bool, flip_v: bool):
  """Boxes of a record after cutting rows y..y+size, cols x..x+size and the flips (applied in
  that order, as task_pipeline._window does to the pixels). -> (boxes, classes, difficult,
  dropped) with dropped = boxes with less than MIN_VISIBLE of their area left."""
  b = np.asarray(boxes, np.float64).reshape(-1, 5).copy()
  b[:, 0] -= x
  b[:, 1] -= y
  if flip_h:  # x -> size - x mirrors the direction (cos a, sin a) to (-cos a, sin a)
    b[:, 0] = size - b[:, 0]
    b[:, 4] = -b[:, 4]
  if flip_v:
    b[:, 1] = size - b[:, 1]
    b[:, 4] = -b[:, 4]
  b[:, 4] = wrap_le90(b[:, 4])
  area = b[:, 2] * b[:, 3]
  keep = np.zeros(len(b), bool)
  for i, poly in enumerate(corners(b)):
    keep[i] = area[i] > 0 and _clip_area(poly, float(size)) >= MIN_VISIBLE * area[i]
  return (b[keep].astype(np.float32), np.asarray(classes)[keep],
          np.asarray(difficult, bool)[keep], int((~keep).sum()))


def pad_boxes(boxes: np.ndarray, classes: np.ndarray, difficult: np.ndarray, max_boxes: int,
              dropped: int = 0) -> dict[str, np.ndarray]:
  """Fixed-size ground truth of one example (batch keys in the module docstring). Boxes past
  max_boxes are dropped (the largest kept first) and counted in gt_dropped."""
  b = np.asarray(boxes, np.float32).reshape(-1, 5)
  order = np.argsort(-(b[:, 2] * b[:, 3]), kind="stable")[:max_boxes]
  order = np.sort(order)  # keep the record's order among the kept ones
  n = len(order)
  out = {"gt_boxes": np.zeros((max_boxes, 5), np.float32),
         "gt_classes": np.zeros((max_boxes,), np.int32),
         "gt_valid": np.zeros((max_boxes,), np.float32),
         "gt_difficult": np.zeros((max_boxes,), np.float32),
         "gt_dropped": np.int32(dropped + len(b) - n)}
  out["gt_boxes"][:n] = b[order]
  out["gt_classes"][:n] = np.asarray(classes, np.int32)[order]
  out["gt_valid"][:n] = 1
  out["gt_difficult"][:n] = np.asarray(difficult, bool)[order]
  return out


def envelope(boxes: np.ndarray) -> np.ndarray:
  """(..., 5) le90 -> (..., 4) axis-aligned (x1, y1, x2, y2) holding the rectangle (float64)."""
  return rbox_to_hbox(np.asarray(boxes, np.float64))
