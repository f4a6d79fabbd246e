"""Readers: datasets users already have, as Grain random-access sources of task records.

Each source lists its files at construction (sorted, so the record order is deterministic),
reads one record per `__getitem__` (lazily, so worker processes share nothing) and has
`.num_classes` / `.class_names` where meaningful. Task record (docs/ARCHITECTURE.md):

  {"views": [{"sensor": str, "pixels": (H, W, C) float32 physical (Sensor.to_physical of the
              file's values), "valid": (H, W) bool (False at the nodata value or NaN)}, ...],
   "name": str, <label>}
  label: "label" int | "labels" (K,) float32 multi-hot | "mask" (H, W) int32 (255 = ignore) |
         "change" (H, W) int32 0/1 | "height" (H, W) float32 metres (NaN = no value) |
         boxes: "boxes" (N, 5) float32 le90 + "box_classes" (N,) int32 + "box_difficult" (N,)
         bool (data/box_labels.py)

  format          source                          layout                          label
  class_folders   folders.ClassFolders            root/<class>/<image>            label
  multilabel      multilabel.MultiLabelFiles      labels.csv / labels.json        labels
  seg_pairs       pairs.SegmentationPairs         root/images, root/masks         mask
  levircd         levircd.LevirCD                 root/A, root/B, root/label      change
  height_pairs    pairs.HeightPairs               root/images, root/ndsm          height
  tfds            tfds_source.TfdsSource          root='<builder>[/cfg][@dir]'    label(s)
  coco            coco.CocoDetection              annotations.json, root/images   boxes
  dota            dota.DotaDetection              root/images, root/labelTxt      boxes

Splits (split.py): train/ + val/ (or test/) subfolders pick the folder; else crc32 of each
record's name against `val_fraction`. Bad input raises `ReaderError` naming the file.
"""
from __future__ import annotations

from typing import Any

from ringmoe_jax.data.readers.coco import CocoDetection
from ringmoe_jax.data.readers.dota import DotaDetection
from ringmoe_jax.data.readers.folders import ClassFolders
from ringmoe_jax.data.readers.levircd import LevirCD
from ringmoe_jax.data.readers.multilabel import MultiLabelFiles
from ringmoe_jax.data.readers.pairs import HeightPairs, SegmentationPairs
from ringmoe_jax.data.readers.tfds_source import TfdsSource
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import SensorRegistry

READERS = {
    "class_folders": ClassFolders,
    "multilabel": MultiLabelFiles,
    "seg_pairs": SegmentationPairs,
    "levircd": LevirCD,
    "height_pairs": HeightPairs,
    "tfds": TfdsSource,
    "coco": CocoDetection,
    "dota": DotaDetection,
}
# Formats with class names to give (levircd has fixed ones, height_pairs none).
_TAKES_CLASSES = ("class_folders", "multilabel", "seg_pairs", "tfds", "coco", "dota")


def _field(cfg: Any, name: str, default: Any = None) -> Any:
  value = cfg.get(name, default)  # a dict or an ml_collections ConfigDict
  return default if value is None else value


def make_reader(cfg: Any, registry: SensorRegistry, split: str):
  """The source of `cfg` (`config.task.reader`: a ConfigDict or dict) for split 'train' | 'eval'.

  Fields: format (READERS), root, sensor (registry name), sensor_after (levircd; '' = sensor),
  classes (() = discovered), val_fraction (0.2), bands (1-based file bands; () = all).
  Raises ReaderError (bad format / layout / file) or UnknownSensorError.
  """
  fmt = str(_field(cfg, "format", ""))
  if fmt not in READERS:
    raise ReaderError(f"task.reader.format={fmt!r}; expected one of {', '.join(READERS)}")
  root = str(_field(cfg, "root", ""))
  if not root:
    raise ReaderError(f"task.reader.root is empty; format {fmt!r} needs the dataset's "
                      "location")
  sensor_name = str(_field(cfg, "sensor", ""))
  if not sensor_name:
    raise ReaderError(f"task.reader.sensor is empty; name the registry sensor of the images "
                      f"(one of {', '.join(registry.names())})")
  sensor = registry.get(sensor_name)
  try:
    val_fraction = float(_field(cfg, "val_fraction", 0.2))
    bands = tuple(int(b) for b in _field(cfg, "bands", ())) or None
  except (TypeError, ValueError) as e:
    raise ReaderError(f"task.reader.val_fraction / bands: expected a number and 1-based band "
                      f"indices ({e})") from None
  kw: dict[str, Any] = dict(val_fraction=val_fraction, bands=bands)
  if fmt in _TAKES_CLASSES:
    kw["classes"] = tuple(str(c) for c in _field(cfg, "classes", ())) or None
  if fmt == "levircd":
    after = str(_field(cfg, "sensor_after", ""))
    kw["sensor_after"] = registry.get(after) if after else None
  return READERS[fmt](root, sensor, split, **kw)


__all__ = ["READERS", "make_reader", "ClassFolders", "MultiLabelFiles", "SegmentationPairs",
           "HeightPairs", "LevirCD", "TfdsSource", "CocoDetection", "DotaDetection",
           "ReaderError"]
