"""Image / label-raster pairs: SegmentationPairs (class masks) and HeightPairs (nDSM heights).

Layout (ISPRS Vaihingen / Potsdam, LoveDA, DFC-style tiles, after tiling to files):

  root/images/<name>.tif|png|jpg      root/masks/<name>.png|tif   (SegmentationPairs)
  root/images/<name>.tif              root/ndsm/<name>.tif        (HeightPairs)
  (optionally under root/train/, root/val/ or root/test/: the split picks the folder;
   else the split is by crc32 of <name>)

A label file has the image's file name, or the same stem with another suffix. Image and label
must have the same size (an error names both files and both shapes).

SegmentationPairs record: {"views": [view], "name", "mask": (H, W) int32 class ids, 255 =
  ignore}. Classes: `classes` (names in id order), else `<root>/classes.txt` (one name a line);
  the masks cannot be scanned for them without reading every file. A mask value outside
  [0, num_classes) other than 255 is an error naming the file and the value; masks must be
  single-band (palette PNGs are: their indices are the class ids).
HeightPairs record: {"views": [view], "name", "height": (H, W) float32 metres, NaN = no value
  (the nDSM's nodata value or NaN)}.
view = {"sensor", "pixels" (H, W, C) float32 physical, "valid" (H, W) bool}.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ringmoe_jax.data.readers import split as split_lib
from ringmoe_jax.data.readers.raster import check_same_size, read_height, read_mask
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor

IGNORE = 255
CLASSES_FILE = "classes.txt"


class _Pairs(split_lib.ListedSource):
  """images/ + <LABEL_DIR>/ of one split; items are (image path, label path, name)."""

  LABEL_DIR = ""
  LABEL_WHAT = ""

  def _list(self, root: str, sensor: Sensor, split: str, val_fraction: float,
            bands: Sequence[int] | None, class_names: Sequence[str] | None = None) -> None:
    split_lib.check_split(split, val_fraction)
    directory, by_folder = split_lib.split_root(root, split)
    image_dir = os.path.join(directory, "images")
    names = [n for n in split_lib.list_images(image_dir, "images/ folder")
             if by_folder or split_lib.in_split(n, split, val_fraction)]
    labels = split_lib.partners(os.path.join(directory, self.LABEL_DIR), names, image_dir,
                                self.LABEL_WHAT)
    self._finish([(os.path.join(image_dir, n), lab, n) for n, lab in zip(names, labels)],
                 image_dir, split, sensor, bands, class_names)

  def _checked_view(self, image_path: str, label_path: str, label: np.ndarray) -> dict[str, Any]:
    view = self._view(image_path)
    check_same_size(image_path, view["pixels"].shape, label_path, label.shape)
    return view


def read_classes_file(root: str) -> tuple[str, ...] | None:
  path = os.path.join(root, CLASSES_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    names = tuple(line.strip() for line in f if line.strip())
  if not names:
    raise ReaderError(f"{path}: empty; expected one class name a line")
  return names


class SegmentationPairs(_Pairs):
  """Grain source of image / class-mask pairs (module docstring); `.num_classes`,
  `.class_names`."""

  LABEL_DIR = "masks"
  LABEL_WHAT = "mask in masks/"

  def __init__(self, root: str, sensor: Sensor, split: str = "train", *,
               classes: Sequence[str] | None = None, val_fraction: float = 0.2,
               bands: Sequence[int] | None = None):
    names = tuple(classes) if classes else read_classes_file(root)
    if not names:
      raise ReaderError(f"{root}: segmentation needs its class names: set task.reader.classes "
                        f"(in mask id order) or write {os.path.join(root, CLASSES_FILE)}")
    if len(names) >= IGNORE:
      raise ReaderError(f"task.reader.classes: {len(names)} classes; ids must stay below "
                        f"{IGNORE} (the ignore value)")
    self._list(root, sensor, split, val_fraction, bands, names)

  def _read(self, item) -> dict[str, Any]:
    image_path, mask_path, name = item
    mask = read_mask(mask_path)
    bad = (mask < 0) | ((mask >= self.num_classes) & (mask != IGNORE))
    if bad.any():
      raise ReaderError(f"{mask_path}: mask value {int(mask[bad][0])} is not a class id in "
                        f"[0, {self.num_classes}) nor {IGNORE} (ignore); classes: "
                        f"{', '.join(self.class_names)}")
    return {"views": [self._checked_view(image_path, mask_path, mask)], "name": name, "mask": mask}


class HeightPairs(_Pairs):
  """Grain source of image / nDSM pairs (module docstring)."""

  LABEL_DIR = "ndsm"
  LABEL_WHAT = "height raster in ndsm/"

  def __init__(self, root: str, sensor: Sensor, split: str = "train", *,
               val_fraction: float = 0.2, bands: Sequence[int] | None = None):
    self._list(root, sensor, split, val_fraction, bands)

  def _read(self, item) -> dict[str, Any]:
    image_path, height_path, name = item
    height = read_height(height_path)
    return {"views": [self._checked_view(image_path, height_path, height)], "name": name,
            "height": height}
