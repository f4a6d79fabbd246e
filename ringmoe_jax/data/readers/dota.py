"""DotaDetection: rotated-box object detection in the DOTA layout (DOTA v1.0 / 1.5 / 2.0, and
sets distributed in its format: HRSC2016, DIOR-R, FAIR1M after conversion).

  root/images/<name>.png|tif|jpg      root/labelTxt/<name>.txt
  (optionally under root/train/, root/val/ or root/test/: the split picks the folder; else the
   split is by crc32 of the image file name)

Every image needs the label file of its stem and every label file an image (either missing is an
error naming the file); an empty label file is a negative image. Label file lines:

  x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]      (pixels; difficult 0 / 1, default 0)

Header lines `imagesource:...` and `gsd:...` (DOTA v1) and blank lines are skipped.
Polygon -> le90 (data/box_labels.py): the minimum-area rectangle holding the 4 points (over the
edge directions of their convex hull), written in the one le90 form whose angle is in
[-pi/4, pi/4): an axis-aligned rectangle is angle 0 with w = its x extent, as a COCO box.
Classes: `classes` (names, in id order; a line naming another class is an error naming the file
and line), else the sorted class names found in the training label files (all of labelTxt/
without split folders, train/labelTxt/ with them), scanned at construction, so both splits
number them alike.

Errors (ReaderError naming file:line): fewer than 9 or more than 10 fields, a non-numeric or
non-finite coordinate, a difficult flag other than 0 / 1, a polygon of (near) zero area, a point
outside the image by more than 1 pixel (checked when the record is read, against the raster's
size).

Record: {"views": [{"sensor", "pixels" (H, W, C) float32 physical, "valid" (H, W) bool}],
         "name": image file name, "boxes": (N, 5) float32 le90, "box_classes": (N,) int32,
         "box_difficult": (N,) bool}.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ringmoe_jax.data import box_labels
from ringmoe_jax.data.readers import split as split_lib
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor

IMAGE_DIR = "images"
LABEL_DIR = "labelTxt"
HEADERS = ("imagesource:", "gsd:")
TOLERANCE = 1.0  # pixels a point may lie past the image edge
MIN_AREA = 1e-2  # px^2: a polygon with a smaller hull area is degenerate


def _hull(points: np.ndarray) -> np.ndarray:
  """(K, 2) -> (M, 2) convex hull, counter-clockwise (x right, y up sense), collinear points
  dropped (Andrew's monotone chain)."""
  pts = sorted(map(tuple, np.asarray(points, np.float64)))
  if len(set(pts)) < 3:
    return np.asarray(sorted(set(pts)), np.float64).reshape(-1, 2)

  def cross(o, a, b):
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

  def chain(seq):
    out: list[tuple[float, float]] = []
    for p in seq:
      while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
        out.pop()
      out.append(p)
    return out

  lower, upper = chain(pts), chain(pts[::-1])
  return np.asarray(lower[:-1] + upper[:-1], np.float64)


def polygon_area(points: np.ndarray) -> float:
  """Area of the convex hull of (K, 2) points."""
  h = _hull(points)
  if len(h) < 3:
    return 0.0
  return 0.5 * abs(float(np.dot(h[:, 0], np.roll(h[:, 1], -1))
                         - np.dot(h[:, 1], np.roll(h[:, 0], -1))))


def min_area_rect(points: np.ndarray) -> np.ndarray:
  """(K, 2) points (x, y) -> (5,) le90 (cx, cy, w, h, angle) of the smallest rectangle holding
  them, angle in [-pi/4, pi/4) (module docstring). Needs a hull of >= 3 points."""
  pts = np.asarray(points, np.float64)
  hull = _hull(pts)
  best = None
  for i in range(len(hull)):
    d = hull[(i + 1) % len(hull)] - hull[i]
    theta = float(np.arctan2(d[1], d[0]))
    u_dir = np.array([np.cos(theta), np.sin(theta)])  # w runs along (cos, sin)
    v_dir = np.array([-np.sin(theta), np.cos(theta)])
    u, v = hull @ u_dir, hull @ v_dir
    w, h = u.max() - u.min(), v.max() - v.min()
    if best is None or w * h < best[0] * (1 - 1e-9):
      centre = (u.max() + u.min()) / 2 * u_dir + (v.max() + v.min()) / 2 * v_dir
      best = (w * h, centre, w, h, theta)
  _, centre, w, h, theta = best
  # Of the rectangle's two le90 forms (theta, w, h) and (theta + pi/2, h, w), the one with the
  # angle in [-pi/4, pi/4); a turn by pi is the same rectangle (wrap_le90).
  quarter = int(np.floor((theta + np.pi / 4) / (np.pi / 2)))
  angle = theta - quarter * np.pi / 2
  if quarter % 2:
    w, h = h, w
  angle = float(box_labels.wrap_le90(angle))
  if angle >= np.pi / 4:  # rounding at the boundary
    angle, w, h = float(box_labels.wrap_le90(angle - np.pi / 2)), h, w
  return np.array([centre[0], centre[1], w, h, angle], np.float64)


def parse_label_file(path: str) -> list[tuple[np.ndarray, str, bool, int]]:
  """-> [(polygon (4, 2) float64, class name, difficult, line number (1-based))]."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise ReaderError(f"{path}: cannot read the DOTA label file ({e})") from None
  objects = []
  for n, line in enumerate(lines, start=1):
    text = line.strip()
    if not text or text.lower().startswith(HEADERS):
      continue
    fields = text.split()
    if not 9 <= len(fields) <= 10:
      raise ReaderError(f"{path}:{n}: {len(fields)} fields in {text!r}; expected 'x1 y1 x2 y2 "
                        "x3 y3 x4 y4 class difficult' (difficult optional)")
    try:
      coords = np.array([float(v) for v in fields[:8]], np.float64)
    except ValueError:
      raise ReaderError(f"{path}:{n}: non-numeric coordinate in {text!r}; expected 'x1 y1 x2 y2 "
                        "x3 y3 x4 y4 class difficult'") from None
    if not np.all(np.isfinite(coords)):
      raise ReaderError(f"{path}:{n}: non-finite coordinate in {text!r}")
    difficult = fields[9] if len(fields) == 10 else "0"
    if difficult not in ("0", "1"):
      raise ReaderError(f"{path}:{n}: difficult flag {difficult!r} in {text!r}; expected 0 or 1")
    polygon = coords.reshape(4, 2)
    if polygon_area(polygon) < MIN_AREA:
      raise ReaderError(f"{path}:{n}: the polygon {coords.tolist()} has (near) zero area")
    objects.append((polygon, fields[8], difficult == "1", n))
  return objects


def _pairs(directory: str) -> list[tuple[str, str]]:
  """-> [(image file name, label path)] of one split folder, sorted by image name; an image
  without its label file or a label file without its image is an error."""
  image_dir, label_dir = os.path.join(directory, IMAGE_DIR), os.path.join(directory, LABEL_DIR)
  images = split_lib.list_images(image_dir, "images/ folder")
  if not os.path.isdir(label_dir):
    raise ReaderError(f"{label_dir}: no such labelTxt/ folder (DOTA label files)")
  labels = {os.path.splitext(n)[0]: n for n in os.listdir(label_dir)
            if n.lower().endswith(".txt") and not n.startswith(".")}
  by_stem: dict[str, str] = {}
  for name in images:
    stem = os.path.splitext(name)[0]
    if stem in by_stem:
      raise ReaderError(f"{image_dir}: {by_stem[stem]} and {name} share the stem {stem!r}; "
                        f"the label file {stem}.txt cannot tell which it labels")
    by_stem[stem] = name
  for stem, label in sorted(labels.items()):
    if stem not in by_stem:
      raise ReaderError(f"{os.path.join(label_dir, label)}: label file without an image "
                        f"{stem}.png|tif|jpg in {image_dir}")
  out = []
  for name in images:
    stem = os.path.splitext(name)[0]
    if stem not in labels:
      raise ReaderError(f"{os.path.join(image_dir, name)}: image without its label file "
                        f"{os.path.join(label_dir, stem + '.txt')} (an image without objects "
                        "needs an empty label file)")
    out.append((name, os.path.join(label_dir, labels[stem])))
  return out


class DotaDetection(split_lib.ListedSource):
  """Grain source of images with rotated boxes from DOTA label files (module docstring);
  `.num_classes`, `.class_names`."""

  def __init__(self, root: str, sensor: Sensor, split: str = "train", *,
               classes: Sequence[str] | None = None, val_fraction: float = 0.2,
               bands: Sequence[int] | None = None):
    split_lib.check_split(split, val_fraction)
    directory, by_folder = split_lib.split_root(root, split)
    pairs = _pairs(directory)
    parsed = {label: parse_label_file(label) for _, label in pairs}
    if classes:
      names = tuple(classes)
      if len(set(names)) != len(names):
        raise ReaderError(f"task.reader.classes: a class is named twice ({', '.join(names)})")
      known = set(names)
      for label, objects in parsed.items():
        for _, cls, _, n in objects:
          if cls not in known:
            raise ReaderError(f"{label}:{n}: class {cls!r} is not in task.reader.classes "
                              f"({', '.join(names)})")
    else:
      train_dir = os.path.join(root, "train") if by_folder else directory
      train = parsed if train_dir == directory else {
          label: parse_label_file(label) for _, label in _pairs(train_dir)}
      names = tuple(sorted({o[1] for objects in train.values() for o in objects}))
      if not names:
        raise ReaderError(f"{os.path.join(train_dir, LABEL_DIR)}: no objects in the label "
                          "files; set task.reader.classes")
      for label, objects in parsed.items():
        for _, cls, _, n in objects:
          if cls not in names:
            raise ReaderError(f"{label}:{n}: class {cls!r} does not occur in the training "
                              f"label files ({', '.join(names)})")
    index = {c: i for i, c in enumerate(names)}
    image_dir = os.path.join(directory, IMAGE_DIR)
    items = []
    for name, label in pairs:
      if not (by_folder or split_lib.in_split(name, split, val_fraction)):
        continue
      objects = parsed[label]
      items.append((os.path.join(image_dir, name), name, label,
                    np.asarray([min_area_rect(o[0]) for o in objects],
                               np.float32).reshape(-1, 5),
                    np.asarray([index[o[1]] for o in objects], np.int32),
                    np.asarray([o[2] for o in objects], bool),
                    np.asarray([o[0] for o in objects], np.float32).reshape(-1, 4, 2),
                    np.asarray([o[3] for o in objects], np.int32)))
    self._finish(items, image_dir, split, sensor, bands, names)

  def _read(self, item) -> dict[str, Any]:
    image_path, name, label, boxes, classes, difficult, polygons, lines = item
    view = self._view(image_path)
    height, width = view["pixels"].shape[:2]
    outside = ((polygons[..., 0] < -TOLERANCE) | (polygons[..., 1] < -TOLERANCE)
               | (polygons[..., 0] > width + TOLERANCE)
               | (polygons[..., 1] > height + TOLERANCE)).any(-1)
    if outside.any():
      i = int(np.argmax(outside))
      raise ReaderError(f"{label}:{int(lines[i])}: polygon {polygons[i].reshape(-1).tolist()} "
                        f"leaves the image {image_path} ({width} x {height} pixels, W x H) by "
                        f"more than {TOLERANCE:g} pixel")
    return {"views": [view], "name": name, "boxes": boxes.copy(), "box_classes": classes.copy(),
            "box_difficult": difficult.copy()}
