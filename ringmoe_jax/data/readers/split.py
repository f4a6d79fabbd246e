"""File listing, train / eval splits and the base source shared by the file readers.

Splits: a root with a `train/` subfolder and a `val/` (or else `test/`) one: 'train' reads
`train/`, 'eval' reads `val/` (or `test/`). Otherwise every record is assigned by the crc32 of
its name (its path relative to the split folder; stable across machines, Python versions and
file listings, unlike `hash()`): eval if crc32 % 1000 < round(val_fraction * 1000).
"""
from __future__ import annotations

import os
import zlib
from typing import Any, Sequence

from ringmoe_jax.data.readers.raster import is_image, read_image
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor

SPLITS = ("train", "eval")
EVAL_FOLDERS = ("val", "test")


def check_split(split: str, val_fraction: float) -> None:
  if split not in SPLITS:
    raise ReaderError(f"split {split!r}; expected 'train' or 'eval'")
  if not 0.0 <= float(val_fraction) < 1.0:
    raise ReaderError(f"task.reader.val_fraction={val_fraction}; expected a fraction in [0, 1)")


def split_root(root: str, split: str) -> tuple[str, bool]:
  """-> (directory of the split, True if the split comes from train/ val/ test/ folders)."""
  if not os.path.isdir(root):
    raise ReaderError(f"task.reader.root={root}: no such directory")
  if not os.path.isdir(os.path.join(root, "train")):
    return root, False
  if split == "train":
    return os.path.join(root, "train"), True
  for name in EVAL_FOLDERS:
    if os.path.isdir(os.path.join(root, name)):
      return os.path.join(root, name), True
  raise ReaderError(f"{root}: has train/ but no val/ or test/ folder for the eval split")


def in_split(name: str, split: str, val_fraction: float) -> bool:
  """Whether record `name` belongs to `split` under the crc32 rule (module docstring)."""
  is_eval = zlib.crc32(name.encode("utf-8")) % 1000 < int(round(float(val_fraction) * 1000))
  return is_eval == (split == "eval")


def list_images(directory: str, what: str = "image folder") -> list[str]:
  """Sorted raster file names directly in `directory` (hidden files and non-rasters skipped)."""
  if not os.path.isdir(directory):
    raise ReaderError(f"{directory}: no such {what}")
  return sorted(n for n in os.listdir(directory)
                if is_image(n) and os.path.isfile(os.path.join(directory, n)))


def partners(directory: str, names: Sequence[str], image_dir: str, what: str) -> list[str]:
  """The file in `directory` labelling each image of `names` (in `image_dir`): the same file
  name, else the one file with the same stem (masks are often PNG next to GeoTIFF images)."""
  present = list_images(directory, what)
  by_stem: dict[str, list[str]] = {}
  for n in present:
    by_stem.setdefault(os.path.splitext(n)[0], []).append(n)
  present_set, out = set(present), []
  for name in names:
    found = [name] if name in present_set else by_stem.get(os.path.splitext(name)[0], [])
    if len(found) != 1:
      raise ReaderError(f"{os.path.join(directory, name)}: missing; every image needs its "
                        f"{what} of the same file name (image {os.path.join(image_dir, name)})")
    out.append(os.path.join(directory, found[0]))
  return out


class ListedSource:
  """Grain random-access source over a fixed list of items, each read on `__getitem__`.

  Subclasses set `self._items` (a sorted list, built at construction) and implement
  `_read(item) -> task record`. Picklable: items are paths and the sensors are plain dataclasses,
  so Grain worker processes re-read files themselves.
  """

  _items: Sequence[Any]

  def _finish(self, items: Sequence[Any], where: str, split: str, sensor: Sensor,
              bands: Sequence[int] | None, class_names: Sequence[str] | None = None) -> None:
    """Keeps the items (an error naming `where` if there are none) and the reading settings."""
    if not items:
      raise ReaderError(f"{where}: no records for the {split!r} split (an empty folder, or "
                        "task.reader.val_fraction leaves none)")
    self._items = list(items)
    self.sensor = sensor
    self.bands = tuple(bands) if bands else None
    if class_names is not None:
      self.class_names = tuple(class_names)
      self.num_classes = len(self.class_names)

  def _view(self, path: str, sensor: Sensor | None = None) -> dict[str, Any]:
    """One record view read from the image at `path` (default sensor: the source's)."""
    sensor = sensor or self.sensor
    pixels, valid = read_image(path, sensor, self.bands)
    return {"sensor": sensor.name, "pixels": pixels, "valid": valid}

  def __len__(self) -> int:
    return len(self._items)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < len(self._items):
      raise IndexError(f"record {index} out of range for {len(self._items)} records")
    return self._read(self._items[index])

  def _read(self, item: Any) -> dict[str, Any]:
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}({len(self)} records)"
