"""CocoDetection: horizontal-box object detection from a COCO json (DIOR, NWPU VHR-10, xView,
HRSC / DOTA exports as COCO, any COCO-style set).

Annotation json, the first that exists (s = 'train' for the train split; 'val', then 'test' for
eval):
  1. per-split jsons: root/<s>.json, else root/annotations/instances_<s>*.json (exactly one
     match: instances_train.json, instances_train2017.json); when any of them exists for train,
     val or test, the split is the json's and the split's own json must exist;
  2. else root/annotations.json (root/train/annotations.json and root/val|test/annotations.json
     when root has train/ + val/ or test/ folders: the split picks the folder); else the split
     is by crc32 of each image's file_name against `val_fraction` (split.in_split).
Images: an image's `file_name` is looked up, relative to the json's dataset folder (root, or the
split folder), as images/<file_name>, <file_name>, then (for a per-split json named
<s>.json / instances_<tag>.json) <tag>/<file_name> and images/<tag>/<file_name> (COCO 2017:
root/train2017/); absolute file names are kept. Every listed image of the split must exist
(checked at construction; the error names the first missing one and the count).

Boxes: a COCO bbox [x, y, w, h] (top-left corner and size, pixels) -> le90 (x + w/2, y + h/2, w,
h, 0) (data/box_labels.py). Classes: COCO category ids are arbitrary integers; they are numbered
0..K-1 in the order of `classes` (category names) if given, else of the json's categories sorted
by id (a category left out of `classes` may stay in the json while no annotation uses it).
A per-split json's categories number its own split: COCO's per-split jsons list the same
categories; give `classes` to pin the order otherwise. `iscrowd=1` annotations are kept with
box_difficult=True (the evaluators ignore them). Images without annotations are kept
(negative images). Each image's boxes are in the json's annotation order.

Errors (ReaderError naming the json and the annotation id or image): malformed json or
entries, a bbox not 4 finite numbers, w or h <= 0, a box outside its image beyond a 1-pixel
tolerance (the json's width / height; these are checked against the raster's size when the
record is read), a category_id not among the categories (or, with `classes`, of a category not
in them), an image_id not among the images, a name in `classes` that is not a json category, a
missing image file.

Record: {"views": [{"sensor", "pixels" (H, W, C) float32 physical, "valid" (H, W) bool}],
         "name": file_name, "boxes": (N, 5) float32 le90, "box_classes": (N,) int32,
         "box_difficult": (N,) bool}.
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from ringmoe_jax.data.readers import split as split_lib
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor

ANNOTATIONS = "annotations.json"
SPLIT_NAMES = {"train": ("train",), "eval": ("val", "test")}
TOLERANCE = 1.0  # pixels a box may reach past the image edge (rounding in the annotations)


def _split_json(root: str, name: str) -> tuple[str, str] | None:
  """The per-split json of split folder name `name` -> (path, image tag), or None."""
  path = os.path.join(root, f"{name}.json")
  if os.path.isfile(path):
    return path, name
  found = sorted(glob.glob(os.path.join(glob.escape(root), "annotations",
                                        f"instances_{glob.escape(name)}*.json")))
  if len(found) > 1:
    raise ReaderError(f"{os.path.join(root, 'annotations')}: several jsons for the {name!r} "
                      f"split ({', '.join(os.path.basename(f) for f in found)}); keep one")
  if found:
    return found[0], os.path.basename(found[0])[len("instances_"):-len(".json")]
  return None


def find_annotations(root: str, split: str) -> tuple[str, str, str, bool]:
  """-> (json path, dataset folder, image tag ('' = none), True if the split is the file's)."""
  if not os.path.isdir(root):
    raise ReaderError(f"task.reader.root={root}: no such directory")
  per_split = {n: _split_json(root, n) for n in ("train", "val", "test")}
  if any(per_split.values()):
    for name in SPLIT_NAMES[split]:
      if per_split[name]:
        path, tag = per_split[name]
        return path, root, tag, True
    wanted = " or ".join(f"{n}.json / annotations/instances_{n}*.json"
                         for n in SPLIT_NAMES[split])
    raise ReaderError(f"{root}: has per-split COCO jsons but none for the {split!r} split "
                      f"(expected {wanted})")
  directory, by_folder = split_lib.split_root(root, split)
  path = os.path.join(directory, ANNOTATIONS)
  if not os.path.isfile(path):
    raise ReaderError(f"{directory}: no COCO annotations; expected {ANNOTATIONS}, or per-split "
                      "train.json + val.json, or annotations/instances_train*.json + "
                      "annotations/instances_val*.json")
  return path, directory, "", by_folder


def load_json(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      doc = json.load(f)
  except json.JSONDecodeError as e:
    raise ReaderError(f"{path}: not valid JSON ({e})") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ReaderError(f"{path}: cannot read the COCO json ({e})") from None
  if not isinstance(doc, dict):
    raise ReaderError(f"{path}: expected a COCO json object with 'images', 'annotations' and "
                      f"'categories', got {type(doc).__name__}")
  for key in ("images", "categories"):
    if not isinstance(doc.get(key), list):
      raise ReaderError(f"{path}: '{key}' must be a list (a COCO detection json)")
  if not isinstance(doc.get("annotations", []), list):
    raise ReaderError(f"{path}: 'annotations' must be a list")
  return doc


def _is_id(value: Any) -> bool:
  return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _id_key(value: Any) -> tuple[int, Any]:
  return (1, value) if isinstance(value, str) else (0, value)


def _number(value: Any) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def _categories(path: str, doc: dict[str, Any]) -> dict[Any, str]:
  cats: dict[Any, str] = {}
  for i, c in enumerate(doc["categories"]):
    if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(c.get("name"), str):
      raise ReaderError(f"{path}: category {i} ({c!r}) needs an integer 'id' and a 'name'")
    if c["id"] in cats:
      raise ReaderError(f"{path}: category id {c['id']!r} appears twice")
    cats[c["id"]] = c["name"]
  if not cats:
    raise ReaderError(f"{path}: no categories")
  return cats


def class_order(path: str, cats: dict[Any, str],
                classes: Sequence[str] | None) -> tuple[tuple[str, ...], dict[Any, int]]:
  """-> (class names, {category id: class index})."""
  if not classes:
    ids = sorted(cats, key=_id_key)
    return tuple(cats[i] for i in ids), {cid: k for k, cid in enumerate(ids)}
  names = tuple(classes)
  if len(set(names)) != len(names):
    raise ReaderError(f"task.reader.classes: a class is named twice ({', '.join(names)})")
  by_name: dict[str, Any] = {}
  for cid, name in cats.items():
    if name in by_name:
      raise ReaderError(f"{path}: category name {name!r} is used by ids {by_name[name]!r} and "
                        f"{cid!r}; task.reader.classes names categories, so names must be unique")
    by_name[name] = cid
  missing = [n for n in names if n not in by_name]
  if missing:
    raise ReaderError(f"{path}: task.reader.classes names {', '.join(missing)}, not among the "
                      f"json's categories ({', '.join(by_name)})")
  return names, {by_name[n]: k for k, n in enumerate(names)}


def _image_path(base: str, tag: str, file_name: str) -> tuple[str, list[str]]:
  """-> (the existing path or '', the candidates tried)."""
  if os.path.isabs(file_name):
    tried = [file_name]
  else:
    tried = [os.path.join(base, "images", file_name), os.path.join(base, file_name)]
    if tag:
      tried += [os.path.join(base, tag, file_name), os.path.join(base, "images", tag, file_name)]
  return next((p for p in tried if os.path.isfile(p)), ""), tried


class CocoDetection(split_lib.ListedSource):
  """Grain source of images with horizontal boxes from a COCO json (module docstring);
  `.num_classes`, `.class_names`."""

  def __init__(self, root: str, sensor: Sensor, split: str = "train", *,
               classes: Sequence[str] | None = None, val_fraction: float = 0.2,
               bands: Sequence[int] | None = None):
    split_lib.check_split(split, val_fraction)
    path, base, tag, by_file = find_annotations(root, split)
    doc = load_json(path)
    cats = _categories(path, doc)
    names, class_of = class_order(path, cats, classes)

    images: dict[Any, dict[str, Any]] = {}
    files: set[str] = set()
    for i, im in enumerate(doc["images"]):
      if not isinstance(im, dict) or not _is_id(im.get("id")) \
          or not isinstance(im.get("file_name"), str) or not im["file_name"]:
        raise ReaderError(f"{path}: image {i} ({im!r}) needs an 'id' and a 'file_name'")
      where = f"{path} image {im['id']!r} ({im['file_name']})"
      width, height = _number(im.get("width")), _number(im.get("height"))
      if width is None or height is None or width <= 0 or height <= 0:
        raise ReaderError(f"{where}: needs its 'width' and 'height' in pixels, got "
                          f"{im.get('width')!r} x {im.get('height')!r}")
      if im["id"] in images:
        raise ReaderError(f"{where}: image id {im['id']!r} appears twice")
      if im["file_name"] in files:
        raise ReaderError(f"{where}: file_name {im['file_name']!r} is listed twice")
      files.add(im["file_name"])
      images[im["id"]] = {"file": im["file_name"], "width": width, "height": height,
                          "boxes": [], "classes": [], "difficult": []}

    for i, ann in enumerate(doc.get("annotations", [])):
      if not isinstance(ann, dict):
        raise ReaderError(f"{path}: annotation {i} is not an object ({ann!r})")
      where = f"{path} annotation {ann.get('id', f'#{i}')!r}"
      im = images.get(ann.get("image_id")) if _is_id(ann.get("image_id")) else None
      if im is None:
        raise ReaderError(f"{where}: image_id {ann.get('image_id')!r} is not an image of the "
                          "json")
      where += f" (image {ann['image_id']!r}, {im['file']})"
      cid = ann.get("category_id")
      if not _is_id(cid) or cid not in cats:
        raise ReaderError(f"{where}: category_id {cid!r} is not among the json's categories")
      if cid not in class_of:
        raise ReaderError(f"{where}: category {cats[cid]!r} (id {cid!r}) is not in "
                          f"task.reader.classes ({', '.join(names)})")
      bbox = ann.get("bbox")
      xywh = [_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
      if xywh is None or any(v is None for v in xywh):
        raise ReaderError(f"{where}: bbox {bbox!r}; expected [x, y, w, h], 4 finite numbers")
      x, y, w, h = xywh
      if w <= 0 or h <= 0:
        raise ReaderError(f"{where}: bbox {bbox!r} has a size <= 0 (w={w}, h={h})")
      if (x < -TOLERANCE or y < -TOLERANCE or x + w > im["width"] + TOLERANCE
          or y + h > im["height"] + TOLERANCE):
        raise ReaderError(f"{where}: bbox {bbox!r} (x, y, w, h) leaves the image of "
                          f"{im['width']:g} x {im['height']:g} pixels (W x H) by more than "
                          f"{TOLERANCE:g} pixel")
      crowd = ann.get("iscrowd", 0)
      if crowd not in (0, 1):  # True / False compare equal to 1 / 0
        raise ReaderError(f"{where}: iscrowd {crowd!r}; expected 0 or 1")
      im["boxes"].append((x + w / 2, y + h / 2, w, h, 0.0))
      im["classes"].append(class_of[cid])
      im["difficult"].append(bool(crowd))

    items, missing = [], []
    for im_id, im in sorted(images.items(), key=lambda kv: kv[1]["file"]):
      if not (by_file or split_lib.in_split(im["file"], split, val_fraction)):
        continue
      image_path, tried = _image_path(base, tag, im["file"])
      if not image_path:
        missing.append(" or ".join(tried))
        continue
      items.append((image_path, im["file"], im_id, (int(round(im["height"])),
                                                    int(round(im["width"]))),
                    np.asarray(im["boxes"], np.float32).reshape(-1, 5),
                    np.asarray(im["classes"], np.int32),
                    np.asarray(im["difficult"], bool)))
    if missing:
      raise ReaderError(f"{path}: {len(missing)} listed image(s) of the {split!r} split not "
                        f"found; the first: {missing[0]}")
    self.annotations = path
    self._finish(items, path, split, sensor, bands, names)

  def _read(self, item) -> dict[str, Any]:
    image_path, name, im_id, size, boxes, classes, difficult = item
    view = self._view(image_path)
    if tuple(view["pixels"].shape[:2]) != size:
      raise ReaderError(f"{self.annotations} image {im_id!r} ({name}): the json says "
                        f"{size[1]} x {size[0]} pixels (W x H) but {image_path} is "
                        f"{view['pixels'].shape[1]} x {view['pixels'].shape[0]}")
    return {"views": [view], "name": name, "boxes": boxes.copy(), "box_classes": classes.copy(),
            "box_difficult": difficult.copy()}
