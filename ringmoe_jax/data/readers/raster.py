"""Reading one image or label raster for the readers: GeoTIFF, PNG, JPEG (anything rasterio /
GDAL opens), with errors (`ReaderError`) that name the file and what was expected.

  read_image(path, sensor, bands) -> pixels (H, W, C) float32 in the sensor's physical scale,
                                     valid (H, W) bool
  read_mask(path)                 -> (H, W) int32 class ids (single-band integer raster)
  read_height(path)               -> (H, W) float32 metres, NaN where nodata / NaN
  check_same_size(...)            -> ReaderError naming both files and both shapes

Opening goes through `data.ingest._open` (the same "no such file" / "not a readable raster"
handling as ingestion); DN -> physical is `Sensor.to_physical`, and a pixel is invalid where
every band equals the nodata value (the file's tag, else the sensor's `dn_nodata`) or any band is
NaN / Inf, as in ingestion. Invalid pixels hold 0.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ringmoe_jax.data import ingest
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2")


def is_image(name: str) -> bool:
  """True for a file name with a raster suffix this package reads (case-insensitive)."""
  return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def read_raster(path: str, bands: Sequence[int] | None = None) -> tuple[np.ndarray, float | None]:
  """-> (C, H, W) file values of `bands` (1-based; None: all), the file's nodata tag."""
  import rasterio  # pylint: disable=import-outside-toplevel
  try:
    src = ingest._open(path)  # pylint: disable=protected-access
  except ingest.IngestError as e:
    raise ReaderError(str(e)) from None
  with src:
    if bands:
      bad = [b for b in bands if not 1 <= int(b) <= src.count]
      if bad:
        raise ReaderError(f"{path}: band {bad[0]} requested (task.reader.bands, 1-based) but "
                          f"the file has {src.count} band(s)")
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        data = src.read([int(b) for b in bands]) if bands else src.read()
    except Exception as e:  # rasterio: RasterioIOError / CPLE_* for truncated or damaged files
      raise ReaderError(f"{path}: read failed, damaged or truncated raster ({e})") from None
    return data, src.nodata


def to_view(dn: np.ndarray, sensor: Sensor, nodata: float | None,
            where: str) -> tuple[np.ndarray, np.ndarray]:
  """(H, W, C) file values -> pixels (H, W, C) float32 physical, valid (H, W) bool.

  nodata: the fill value in file units (None: the sensor's `dn_nodata`, may be None too).
  where: the file (or dataset element) named in errors.
  """
  if dn.ndim != 3 or dn.shape[-1] != sensor.num_channels:
    got = dn.shape[-1] if dn.ndim == 3 else f"shape {dn.shape}"
    raise ReaderError(f"{where}: {got} band(s) but sensor {sensor.name!r} has "
                      f"{sensor.num_channels} ({', '.join(sensor.band_names)}); pick the file's "
                      "bands with task.reader.bands (1-based) or use a sensor with these bands")
  if np.iscomplexobj(dn):
    raise ReaderError(f"{where}: complex-valued bands; the readers take real bands (ingest "
                      "complex SAR products with python -m ringmoe_jax.data.ingest)")
  fill = nodata if nodata is not None else sensor.dn_nodata
  finite = np.isfinite(dn)
  valid = finite.all(-1)
  if fill is not None:
    valid &= ~(dn == fill).all(-1)
  with np.errstate(invalid="ignore", over="ignore"):
    pixels = sensor.to_physical(np.where(finite, dn, 0))
  pixels[~valid] = 0
  return pixels, valid


def read_image(path: str, sensor: Sensor,
               bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """-> pixels (H, W, C) float32 physical, valid (H, W) bool.

  C (after `bands`, 1-based file band indices) must be the sensor's channel count, and a sensor
  with a storage dtype (a fixed DN scaling, e.g. Sentinel-2 uint16) needs that dtype, so a file
  of reflectances is not scaled twice.
  """
  data, nodata = read_raster(path, bands)
  if sensor.dtype is not None and data.dtype.name != sensor.dtype:
    raise ReaderError(f"{path}: stores {data.dtype.name} but sensor {sensor.name!r} products "
                      f"store {sensor.dtype} (physical = DN * gain + offset); use the DN product "
                      "or a sensor without dn_gain")
  return to_view(np.moveaxis(data, 0, -1), sensor, nodata, path)


def read_mask(path: str, what: str = "mask") -> np.ndarray:
  """A single-band integer label raster -> (H, W) int32 (values as stored; no nodata mapping,
  since a mask's fill value is usually a class of the dataset)."""
  data, _ = read_raster(path)
  if data.shape[0] != 1:
    raise ReaderError(f"{path}: a {what} must be a single-band raster of class ids, got "
                      f"{data.shape[0]} bands")
  band = data[0]
  if not np.issubdtype(band.dtype, np.integer):
    if not np.all(np.isfinite(band)) or np.any(band != np.round(band)):
      raise ReaderError(f"{path}: {what} values must be integer class ids, got {band.dtype} "
                        "with fractional or NaN values")
  return band.astype(np.int32)


def read_height(path: str) -> np.ndarray:
  """A single-band height raster (nDSM, metres) -> (H, W) float32, NaN where nodata / NaN."""
  data, nodata = read_raster(path)
  if data.shape[0] != 1:
    raise ReaderError(f"{path}: a height (nDSM) raster must be single-band, got "
                      f"{data.shape[0]} bands")
  height = data[0].astype(np.float32)
  if nodata is not None:
    height[data[0] == nodata] = np.nan
  height[~np.isfinite(height)] = np.nan
  return height


def check_same_size(image_path: str, image_shape: Sequence[int], other_path: str,
                    other_shape: Sequence[int]) -> None:
  """ReaderError unless the two rasters have the same (H, W)."""
  if tuple(image_shape[:2]) != tuple(other_shape[:2]):
    raise ReaderError(f"{other_path}: {other_shape[0]}x{other_shape[1]} pixels (H x W) but "
                      f"{image_path} is {image_shape[0]}x{image_shape[1]}; they must be the "
                      "same size")
