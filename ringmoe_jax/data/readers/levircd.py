"""LevirCD: bi-temporal change detection in the LEVIR-CD layout (also WHU-CD, S2Looking tiles).

  root/A/<name>.png       the image before      (sensor)
  root/B/<name>.png       the image after       (sensor_after; default: sensor)
  root/label/<name>.png   the change map: LEVIR's 0 / 255 (also 0 / 1) -> 0 = no change,
                          1 = change
  (optionally under root/train/, root/val/ or root/test/ as distributed; else the split is by
   crc32 of <name>)

Every A/ image needs a B/ image and a label of the same file name (or stem); A, B and label must
have the same size. A label value other than 0, 1, 255 (e.g. a JPEG-compressed label) is an
error naming the file.

Record: {"views": [before, after] with view = {"sensor", "pixels" (H, W, C) float32 physical,
         "valid" (H, W) bool}, "name", "change": (H, W) int32 0 / 1}.
`.num_classes` = 2, `.class_names` = ("no_change", "change").
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ringmoe_jax.data.readers import split as split_lib
from ringmoe_jax.data.readers.raster import check_same_size, read_mask
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor


class LevirCD(split_lib.ListedSource):
  """Grain source of before / after / change-map triples (module docstring)."""

  class_names = ("no_change", "change")
  num_classes = 2

  def __init__(self, root: str, sensor: Sensor, split: str = "train", *,
               sensor_after: Sensor | None = None, val_fraction: float = 0.2,
               bands: Sequence[int] | None = None):
    split_lib.check_split(split, val_fraction)
    directory, by_folder = split_lib.split_root(root, split)
    a_dir = os.path.join(directory, "A")
    names = [n for n in split_lib.list_images(a_dir, "A/ folder (images before)")
             if by_folder or split_lib.in_split(n, split, val_fraction)]
    after = split_lib.partners(os.path.join(directory, "B"), names, a_dir, "image after in B/")
    labels = split_lib.partners(os.path.join(directory, "label"), names, a_dir,
                                "change map in label/")
    self.sensor_after = sensor_after or sensor
    self._finish([(os.path.join(a_dir, n), b, lab, n) for n, b, lab in zip(names, after, labels)],
                 a_dir, split, sensor, bands)

  def _read(self, item) -> dict[str, Any]:
    a_path, b_path, label_path, name = item
    views = [self._view(a_path), self._view(b_path, self.sensor_after)]
    check_same_size(a_path, views[0]["pixels"].shape, b_path, views[1]["pixels"].shape)
    label = read_mask(label_path, "change map")
    check_same_size(a_path, views[0]["pixels"].shape, label_path, label.shape)
    bad = (label != 0) & (label != 1) & (label != 255)
    if bad.any():
      raise ReaderError(f"{label_path}: change map value {int(label[bad][0])}; expected 0 (no "
                        "change) and 255 or 1 (change), as in LEVIR-CD (a lossless PNG / TIFF)")
    return {"views": views, "name": name, "change": (label != 0).astype(np.int32)}
