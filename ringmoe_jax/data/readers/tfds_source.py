"""TfdsSource: prepared TensorFlow Datasets builders as task records, via `tfds.data_source`.

  format='tfds', root='<builder>[/<config>][@<data_dir>]', e.g. 'eurosat/all',
  'bigearthnet/rgb@/data/tensorflow_datasets' (no data_dir: TFDS's default, ~/tensorflow_datasets)

Builders and their features (`element_to_record` maps one element):

  eurosat      'image' (rgb, uint8) | 'sentinel2' (all, 13 bands)   'label'    'filename'
  resisc45     'image' (uint8)                                       'label'    'filename'
  so2sat       'image' (rgb) | 'sentinel2' (10) | 'sentinel1' (8)    'label'    'sample_id'
  bigearthnet  'image' (rgb) | 'B01'..'B12', 'B8A' (all, 20/60/120 px; upsampled to the largest
               by pixel repetition, in Sentinel-2 L2A band order)    'labels' multi-hot
So2Sat 'all' holds both sensors: a SAR `sensor` takes 'sentinel1', any other 'sentinel2'.
Pixels are the stored values through `sensor.to_physical` (e.g. EuroSAT's Sentinel-2 DNs with
'sentinel2_l1c'; uint8 RGB needs a sensor whose dn_gain maps 0..255 to its scale); `bands`
(1-based) picks channels; the channel count must match the sensor's.

Splits: 'train' -> the builder's train split; 'eval' -> 'validation' or 'test' where the builder
has one, else the last `val_fraction` of 'train' ('train[:80%]' / 'train[80%:]', deterministic).
TFDS needs the ArrayRecord format for random access: prepare with
  tfds build <builder> --data_dir=<dir> --file_format=array_record
tensorflow_datasets is imported only when a TfdsSource is built.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ringmoe_jax.data.readers.raster import to_view
from ringmoe_jax.data.readers.split import check_split
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor

BUILDERS = ("eurosat", "so2sat", "bigearthnet", "resisc45")
# BigEarthNet 'all': one feature per band, in the band order of sensor 'sentinel2_l2a'.
BIGEARTHNET_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                     "B11", "B12")
_NAME_KEYS = ("filename", "sample_id")


def parse_root(root: str) -> tuple[str, str, str | None]:
  """'<builder>[/<config>][@<data_dir>]' -> (builder, tfds name, data_dir or None)."""
  name, _, data_dir = str(root).partition("@")
  builder = name.split("/")[0].split(":")[0]
  if builder not in BUILDERS:
    raise ReaderError(f"task.reader.root={root!r}: TFDS builder {builder!r}; expected "
                      f"'<builder>[/<config>][@<data_dir>]' with builder one of "
                      f"{', '.join(BUILDERS)}")
  return builder, name, data_dir or None


def _image(element: Mapping[str, Any], builder: str, sensor: Sensor) -> np.ndarray:
  """The element's (H, W, C) image array for `sensor`."""
  keys = ("sentinel1",) if sensor.modality.startswith("sar") else ("image", "sentinel2")
  for key in keys:
    if key in element:
      return np.asarray(element[key])
  if builder == "bigearthnet" and all(b in element for b in BIGEARTHNET_BANDS):
    bands = [np.asarray(element[b]) for b in BIGEARTHNET_BANDS]
    size = max(b.shape[0] for b in bands)
    # Pixel repetition keeps the stored values (no interpolated DNs); sizes divide 120.
    return np.stack([np.repeat(np.repeat(b, size // b.shape[0], 0), size // b.shape[1], 1)
                     for b in bands], axis=-1)
  raise ReaderError(f"tfds {builder}: element has no image feature for sensor {sensor.name!r} "
                    f"({sensor.modality}); expected one of {', '.join(keys)}, got "
                    f"{', '.join(sorted(element))}")


def element_to_record(element: Mapping[str, Any], builder: str, sensor: Sensor, *,
                      num_classes: int, index: int, bands: Sequence[int] | None = None
                      ) -> dict[str, Any]:
  """One TFDS element (numpy features) -> a task record with 'label' or 'labels' (K,)."""
  where = f"tfds {builder} element {index}"
  image = _image(element, builder, sensor)
  if image.ndim == 2:
    image = image[..., None]
  if bands:
    bad = [b for b in bands if not 1 <= int(b) <= image.shape[-1]]
    if bad:
      raise ReaderError(f"{where}: band {bad[0]} requested (task.reader.bands, 1-based) but "
                        f"the image has {image.shape[-1]} channel(s)")
    image = image[..., [int(b) - 1 for b in bands]]
  pixels, valid = to_view(image, sensor, None, where)
  name = next((element[k] for k in _NAME_KEYS if k in element), index)
  name = np.asarray(name).item() if np.ndim(name) == 0 else name  # numpy scalars from TFDS
  name = name.decode() if isinstance(name, bytes) else str(name)
  record = {"views": [{"sensor": sensor.name, "pixels": pixels, "valid": valid}], "name": name}
  if "labels" in element:
    ids = np.asarray(element["labels"], np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
      raise ReaderError(f"{where}: label id {int(ids.max())} outside [0, {num_classes})")
    labels = np.zeros(num_classes, np.float32)
    labels[ids] = 1.0
    record["labels"] = labels
  elif "label" in element:
    record["label"] = int(np.asarray(element["label"]))
  else:
    raise ReaderError(f"{where}: no 'label' or 'labels' feature")
  return record


class TfdsSource:
  """Grain random-access source over a prepared TFDS builder (module docstring);
  `.num_classes`, `.class_names` from the builder's label feature."""

  def __init__(self, root: str, sensor: Sensor, split: str = "train", *,
               classes: Sequence[str] | None = None, val_fraction: float = 0.2,
               bands: Sequence[int] | None = None):
    check_split(split, val_fraction)
    self.builder, self.tfds_name, self.data_dir = parse_root(root)
    try:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ReaderError("format='tfds' needs tensorflow_datasets: pip install "
                        "tensorflow-datasets array_record") from None
    prepare = (f"prepare it with: tfds build {self.tfds_name} --file_format=array_record"
               + (f" --data_dir={self.data_dir}" if self.data_dir else ""))
    try:
      info = tfds.builder(self.tfds_name, data_dir=self.data_dir).info
      splits = set(info.splits.keys())
    except Exception as e:  # tfds raises DatasetNotFoundError, AssertionError, OSError, ...
      raise ReaderError(f"tfds {self.tfds_name}: not available ({type(e).__name__}: {e}); "
                        f"{prepare}") from None
    if "train" not in splits:
      raise ReaderError(f"tfds {self.tfds_name}: no prepared data in "
                        f"{self.data_dir or 'the TFDS default data_dir'}; {prepare}")
    if split == "train":
      tfds_split = "train" if "validation" in splits or "test" in splits else (
          f"train[:{100 - round(100 * val_fraction)}%]")
    else:
      tfds_split = next((s for s in ("validation", "test") if s in splits),
                        f"train[{100 - round(100 * val_fraction)}%:]")
    try:
      # download=False: a missing dataset is the user's to prepare, never fetched from here.
      self._source = tfds.data_source(self.tfds_name, split=tfds_split, data_dir=self.data_dir,
                                      download=False)
    except Exception as e:  # prepared as TFRecord (no random access), damaged files, ...
      raise ReaderError(f"tfds {self.tfds_name} split {tfds_split!r}: no prepared ArrayRecord "
                        f"data ({type(e).__name__}: {e}); {prepare}") from None
    label = info.features["labels" if "labels" in info.features else "label"]
    label = getattr(label, "feature", label)  # Sequence(ClassLabel) for multi-label
    self.class_names = tuple(classes) if classes else tuple(label.names)
    self.num_classes = len(self.class_names)
    self.sensor = sensor
    self.bands = tuple(bands) if bands else None
    self.split = tfds_split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return element_to_record(self._source[int(index)], self.builder, self.sensor,
                             num_classes=self.num_classes, index=int(index), bands=self.bands)

  def __repr__(self) -> str:
    return f"TfdsSource({self.tfds_name}, {self.split}, {len(self)} records)"
