"""The Grain pipeline of fine-tuning: task records -> fixed-shape multi-view batches.

Axes: B batch, V views, H = W = crop size (config.model.img_size), Cmax padded channels, K classes.

Training (`make_task_dataset`): source -> seed -> shard slice -> shuffle (re-drawn each epoch)
-> repeat -> validate + normalise every view -> one random crop box and flips shared by all views
and the label maps -> fixed-shape example -> batch. A batch is a pure function of (seed, shard,
step): the iterator state is a step counter and resume is exact, as in pre-training.
Evaluation (`make_task_eval_dataset`): one ordered pass, centre crop, no flip; the last batch is
padded to B with examples of weight 0, so evaluation compiles one program and every batch splits
over the mesh.

Crops are cut, never resampled: label maps stay exact (no interpolated class ids) and a pixel
keeps its ground sampling distance. A tile smaller than the crop is padded with invalid pixels.

Task record (readers/, simulator task sources; see docs/ARCHITECTURE.md):
  {"views": [{"sensor": str, "pixels": (H, W, C) physical, "valid": (H, W) bool}, ...],
   "name": str, and one of "label" int | "labels" (K,) | "mask" (H, W) int | "change" (H, W) int
   | "height" (H, W) float (NaN = no value) | "boxes" (N, 5) le90 + "box_classes" (N,)
   [+ "box_difficult" (N,)] (data/box_labels.py)}

Batch (numpy):
  "pixels":   float32 (B, V, H, W, Cmax)  normalised per sensor; padding and invalid pixels 0
  "valid":    float32 (B, V, H, W)
  "modality": int32 (B, V);  "sensor": int32 (B, V) registry index
  "weight":   float32 (B,)               1, or 0 for padding examples (evaluation)
  "label":    int32 (B,)                 | "labels": float32 (B, K)
  "mask":     int32 (B, H, W)            255 where ignored, where any view has no data, padding
  "change":   int32 (B, H, W)            same convention
  "height":   float32 (B, H, W)          metres (0 where not valid); "height_valid" float32 (B, H, W)
  "gt_boxes": float32 (B, G, 5) + "gt_classes", "gt_valid", "gt_difficult" (B, G), "gt_dropped"
              (B,): boxes cropped / flipped with the pixels, padded to G (data/box_labels.py)
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import grain
import numpy as np

from ringmoe_jax.data import box_labels
from ringmoe_jax.data.pipeline import DEFAULT_MIN_TILE_SIZE, _check_shard, _shard_shuffle_repeat
from ringmoe_jax.data.records import validate_record
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.modalities import modality_id
from ringmoe_jax.sensors.registry import SensorRegistry

IGNORE = 255
DENSE_KEYS = ("mask", "change", "height")
BOX_KEYS = ("boxes", "box_classes", "box_difficult")
LABEL_KEYS = ("label", "labels") + DENSE_KEYS + BOX_KEYS


class PrepareViews(grain.transforms.Map):
  """Validates and normalises each view; checks that views and label maps share one grid."""

  def __init__(self, registry: SensorRegistry, num_views: int, min_size: int):
    self._registry = registry
    self._num_views = num_views
    self._min_size = min_size

  def map(self, record: Mapping[str, Any]) -> dict[str, Any]:
    name = str(record.get("name", "?"))
    views = record.get("views")
    if not isinstance(views, (list, tuple)) or len(views) != self._num_views:
      got = len(views) if isinstance(views, (list, tuple)) else type(views).__name__
      raise ReaderError(f"{name}: expected {self._num_views} view(s) per record, got {got}")
    out_views = []
    shape = None
    for i, view in enumerate(views):
      clean, _ = validate_record(view, self._registry, self._min_size, where=f"{name} view {i}")
      sensor = self._registry.get(clean["sensor"])
      valid = clean["valid"]
      if shape is None:
        shape = valid.shape
      elif valid.shape != shape:
        raise ReaderError(f"{name}: view {i} is {valid.shape[0]}x{valid.shape[1]} pixels but "
                          f"view 0 is {shape[0]}x{shape[1]}; views must be co-registered")
      pixels = np.where(valid[..., None], sensor.normalize(clean["pixels"]), np.float32(0))
      out_views.append({"sensor": sensor.name, "pixels": pixels.astype(np.float32),
                        "valid": valid})
    out = {"name": name, "views": out_views}
    for key in LABEL_KEYS:
      if key not in record:
        continue
      value = np.asarray(record[key])
      if key in DENSE_KEYS and value.shape != shape:
        raise ReaderError(f"{name}: {key} is {value.shape} but the images are {shape}")
      out[key] = value
    if "boxes" in out:
      out.update(_check_boxes(name, out, shape))
    return out


def _check_boxes(name: str, rec: Mapping[str, Any], shape) -> dict[str, np.ndarray]:
  """Boxes of a record as (N, 5) le90, classes (N,), difficult (N,); each bad box named."""
  boxes = np.asarray(rec["boxes"], np.float32)
  if boxes.size == 0:
    boxes = boxes.reshape(0, 5)
  if boxes.ndim != 2 or boxes.shape[1] != 5:
    raise ReaderError(f"{name}: boxes have shape {boxes.shape}, expected (N, 5) "
                      "(cx, cy, w, h, angle)")
  n = len(boxes)
  classes = np.asarray(rec.get("box_classes", np.zeros(0)), np.int64).reshape(-1)
  if len(classes) != n:
    raise ReaderError(f"{name}: {n} boxes but {len(classes)} box_classes")
  difficult = np.asarray(rec.get("box_difficult", np.zeros(n, bool)), bool).reshape(-1)
  for i, b in enumerate(boxes):
    if not np.all(np.isfinite(b)) or b[2] <= 0 or b[3] <= 0:
      raise ReaderError(f"{name}: box {i} {b.tolist()} has a non-finite value or a size <= 0")
  return {"boxes": boxes, "box_classes": classes, "box_difficult": difficult}


def _crop_or_pad(a: np.ndarray, y: int, x: int, size: int, fill) -> np.ndarray:
  """a[y:y+size, x:x+size] (first two axes), padded with `fill` past the edges."""
  h, w = a.shape[:2]
  out = np.full((size, size) + a.shape[2:], fill, a.dtype)
  hh, ww = min(size, h - y), min(size, w - x)
  out[:hh, :ww] = a[y:y + hh, x:x + ww]
  return out


def _window(element: Mapping[str, Any], y: int, x: int, size: int, flip_h: bool,
            flip_v: bool) -> dict[str, Any]:
  def cut(a, fill):
    a = _crop_or_pad(a, y, x, size, fill)
    if flip_h:
      a = a[:, ::-1]
    if flip_v:
      a = a[::-1]
    return np.ascontiguousarray(a)

  out = dict(element)
  out["views"] = [{"sensor": v["sensor"], "pixels": cut(v["pixels"], 0),
                   "valid": cut(v["valid"], False)} for v in element["views"]]
  for key, fill in (("mask", IGNORE), ("change", IGNORE), ("height", np.nan)):
    if key in element:
      out[key] = cut(element[key], fill)
  if "boxes" in element:
    b, c, d, dropped = box_labels.window(element["boxes"], element["box_classes"],
                                         element["box_difficult"], y, x, size, flip_h, flip_v)
    out.update(boxes=b, box_classes=c, box_difficult=d,
               boxes_dropped=int(element.get("boxes_dropped", 0)) + dropped)
  return out


class RandomWindow(grain.transforms.RandomMap):
  """One random crop box and horizontal / vertical flips (p = 0.5 each) for every view and map.

  Both flips: overhead imagery has no preferred orientation."""

  def __init__(self, size: int):
    self._size = size

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    h, w = element["views"][0]["valid"].shape
    y = int(rng.integers(0, max(h - self._size, 0) + 1))
    x = int(rng.integers(0, max(w - self._size, 0) + 1))
    return _window(element, y, x, self._size, bool(rng.random() < 0.5),
                   bool(rng.random() < 0.5))


class CenterWindow(grain.transforms.Map):
  def __init__(self, size: int):
    self._size = size

  def map(self, element: Mapping[str, Any]) -> dict[str, Any]:
    h, w = element["views"][0]["valid"].shape
    return _window(element, max(h - self._size, 0) // 2, max(w - self._size, 0) // 2,
                   self._size, False, False)


class ToTaskExample(grain.transforms.Map):
  """Stacks the views, pads channels to Cmax and turns labels into the batch's fixed form."""

  def __init__(self, registry: SensorRegistry, max_channels: int, num_classes: int = 0,
               max_boxes: int = 0):
    self._registry = registry
    self._max_channels = max_channels
    self._num_classes = num_classes
    self._max_boxes = max_boxes

  def _check_classes(self, name: str, key: str, values: np.ndarray) -> None:
    bad = values[(values != IGNORE) & ((values < 0) | (values >= self._num_classes))]
    if bad.size:
      raise ReaderError(f"{name}: {key} value {int(bad.flat[0])} is not a class id in "
                        f"[0, {self._num_classes}) or {IGNORE} (ignore)")

  def map(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
    name = element["name"]
    pixels, valid, modality, sensor = [], [], [], []
    for v in element["views"]:
      s = self._registry.get(v["sensor"])
      if s.num_channels > self._max_channels:
        raise ReaderError(f"{name}: sensor {s.name!r} has {s.num_channels} channels but the "
                          f"model takes at most {self._max_channels}")
      pixels.append(np.pad(v["pixels"], ((0, 0), (0, 0), (0, self._max_channels - s.num_channels))))
      valid.append(v["valid"].astype(np.float32))
      modality.append(modality_id(s.modality))
      sensor.append(self._registry.index(s.name))
    all_valid = np.min(valid, axis=0) > 0
    ex = {"pixels": np.stack(pixels).astype(np.float32), "valid": np.stack(valid),
          "modality": np.asarray(modality, np.int32), "sensor": np.asarray(sensor, np.int32),
          "weight": np.float32(1)}
    if "label" in element:
      label = int(element["label"])
      if self._num_classes and not 0 <= label < self._num_classes:
        raise ReaderError(f"{name}: label {label} is not a class id in [0, {self._num_classes})")
      ex["label"] = np.int32(label)
    if "labels" in element:
      labels = np.asarray(element["labels"], np.float32)
      if self._num_classes and labels.shape != (self._num_classes,):
        raise ReaderError(f"{name}: multi-hot labels have shape {labels.shape}, expected "
                          f"({self._num_classes},)")
      ex["labels"] = labels
    for key in ("mask", "change"):
      if key in element:
        m = np.asarray(element[key]).astype(np.int64)
        if key == "mask" and self._num_classes:
          self._check_classes(name, key, m)
        elif key == "change":
          bad = m[(m != IGNORE) & (m != 0) & (m != 1)]
          if bad.size:
            raise ReaderError(f"{name}: change value {int(bad.flat[0])}; expected 0, 1 or "
                              f"{IGNORE}")
        ex[key] = np.where(all_valid, m, IGNORE).astype(np.int32)
    if "height" in element:
      h = np.asarray(element["height"], np.float32)
      ok = np.isfinite(h) & all_valid
      ex["height"] = np.where(ok, h, 0).astype(np.float32)
      ex["height_valid"] = ok.astype(np.float32)
    if "boxes" in element:
      if self._max_boxes <= 0:
        raise ReaderError(f"{name}: a record with boxes needs task.max_boxes > 0")
      classes = np.asarray(element["box_classes"])
      if self._num_classes:
        bad = classes[(classes < 0) | (classes >= self._num_classes)]
        if bad.size:
          raise ReaderError(f"{name}: box class {int(bad[0])} is not a class id in "
                            f"[0, {self._num_classes})")
      ex.update(box_labels.pad_boxes(element["boxes"], classes, element["box_difficult"],
                                     self._max_boxes, int(element.get("boxes_dropped", 0))))
    return ex


def make_task_dataset(source, *, registry: SensorRegistry, num_views: int, batch_size: int,
                      crop_size: int, max_channels: int, seed: int, num_classes: int = 0,
                      shard_index: int = 0, shard_count: int = 1,
                      min_tile_size: int = DEFAULT_MIN_TILE_SIZE,
                      max_boxes: int = 0) -> grain.MapDataset:
  """Infinite, shuffled, augmented training batches of this shard (module docstring)."""
  _check_shard(shard_index, shard_count)
  ds = _shard_shuffle_repeat(source, seed, True, shard_index, shard_count)
  ds = ds.map(PrepareViews(registry, num_views, min_tile_size))
  ds = ds.random_map(RandomWindow(crop_size))
  ds = ds.map(ToTaskExample(registry, max_channels, num_classes, max_boxes))
  return ds.batch(batch_size, drop_remainder=True)


def _pad_batch(batch_size: int):
  def pad(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(batch["weight"])
    if n == batch_size:
      return batch
    out = {}
    for k, v in batch.items():
      fill = IGNORE if k in ("mask", "change") else 0
      out[k] = np.concatenate([v, np.full((batch_size - n,) + v.shape[1:], fill, v.dtype)])
    return out
  return pad


def make_task_eval_dataset(source, *, registry: SensorRegistry, num_views: int, batch_size: int,
                           crop_size: int, max_channels: int, num_classes: int = 0,
                           shard_index: int = 0, shard_count: int = 1,
                           min_tile_size: int = DEFAULT_MIN_TILE_SIZE,
                           max_boxes: int = 0) -> grain.MapDataset:
  """One ordered pass over this shard in batches of exactly B (padding has weight 0)."""
  _check_shard(shard_index, shard_count)
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  ds = ds.map(PrepareViews(registry, num_views, min_tile_size))
  ds = ds.map(CenterWindow(crop_size))
  ds = ds.map(ToTaskExample(registry, max_channels, num_classes, max_boxes))
  return ds.batch(batch_size, drop_remainder=False).map(_pad_batch(batch_size))


def view_sensors(spec: str | Sequence[str]) -> tuple[str, ...]:
  """'a+b' or ('a', 'b') -> ('a', 'b'): the sensors of a record's views."""
  if isinstance(spec, str):
    return tuple(s.strip() for s in spec.split("+") if s.strip())
  return tuple(spec)
