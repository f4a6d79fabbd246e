"""Scene rasters for whole-scene prediction: checked input windows and an atomic COG output.

  SceneReader(path, sensor, bands)   one input view: checks, then `read(y0, x0, size)` ->
                                     pixels (S, S, C) float32 physical + valid (S, S) bool
  check_co_registered(a, b)          same grid, CRS and transform (change detection, fusion)
  CogWriter(path, like, ...)         rows written into a tiled GeoTIFF aside, then overviews and
                                     GDAL's COG driver, then one os.replace: a reader of `path`
                                     never sees a half-written file; `abort()` removes the temps

Every problem with an input is a `ReaderError` naming the file (and the sensor and what was
expected where it is about bands or dtype): not a raster, empty, no CRS, a band count or dtype
that does not fit the sensor, a damaged / truncated file, every pixel nodata, a band that is
NaN everywhere. `scan()` reads the whole scene once, in strips, before any output exists, so a
truncated file fails before anything is written rather than half-way.

Values: file DN -> physical by the sensor (`Sensor.to_physical`, as the readers and ingestion
do); a pixel is nodata where every band equals the file's nodata tag (else the sensor's
`dn_nodata`) or any band is NaN / Inf (`data.readers.raster.to_view`). GDAL's block cache is
capped (`GDAL_CACHE_MB`) for the whole run, so neither the input's nor the output's blocks pile
up in memory with the scene's size.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np

from ringmoe_jax.data import ingest
from ringmoe_jax.data.readers.raster import to_view
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor

GDAL_CACHE_MB = 128   # GDAL block cache while predicting (its default is 5% of the RAM)
BLOCK = 256           # tile size of the GeoTIFF written aside; the COG's is COG_BLOCK
COG_BLOCK = 512
SCAN_PIXELS = 1 << 20  # pixels per strip of the input scan (rows = this / width)


def _rasterio():
  import rasterio  # pylint: disable=import-outside-toplevel
  return rasterio


class SceneReader:
  """One input scene read window by window (see the module docstring).

  Attributes: path, sensor, bands (1-based file band indices), height, width, crs, transform,
  nodata (file units or None).
  """

  def __init__(self, path: str, sensor: Sensor, bands: Sequence[int] | None = None):
    self.path, self.sensor = path, sensor
    if os.path.isfile(path) and os.path.getsize(path) == 0:
      raise ReaderError(f"{path}: empty file (0 bytes), expected a GeoTIFF")
    try:
      self._src = ingest._open(path)  # pylint: disable=protected-access
    except ingest.IngestError as e:
      raise ReaderError(str(e)) from None
    src = self._src
    try:
      self.height, self.width = int(src.height), int(src.width)
      want = f"sensor {sensor.name!r} expects {sensor.num_channels} band(s) " \
             f"({', '.join(sensor.band_names)})"
      if src.count == 0 or self.height == 0 or self.width == 0:
        raise ReaderError(f"{path}: empty raster ({src.count} bands, {self.width}x"
                          f"{self.height} px); {want}")
      if src.crs is None:
        raise ReaderError(f"{path}: no CRS (not georeferenced); predict copies the input's CRS "
                          "and transform to its output, so the scene needs them (gdal_edit.py "
                          "-a_srs / -a_ullr)")
      if bands:
        self.bands = [int(b) for b in bands]
        bad = [b for b in self.bands if not 1 <= b <= src.count]
        if bad:
          raise ReaderError(f"{path}: band {bad[0]} requested (--bands, 1-based) but the file "
                            f"has {src.count} band(s)")
        if len(self.bands) != sensor.num_channels:
          raise ReaderError(f"{path}: --bands picks {len(self.bands)} band(s) but {want}")
      else:
        if src.count != sensor.num_channels:
          raise ReaderError(f"{path}: {src.count} band(s) but {want}; pick them with "
                            "--bands=i,j,... (1-based, in the sensor's band order)")
        self.bands = list(range(1, src.count + 1))
      dtypes = {src.dtypes[b - 1] for b in self.bands}
      if any(d.startswith("complex") for d in dtypes):
        raise ReaderError(f"{path}: complex-valued bands; {want} as real values (ingest complex "
                          "SAR products with python -m ringmoe_jax.data.ingest)")
      if sensor.dtype is not None and dtypes != {sensor.dtype}:
        raise ReaderError(f"{path}: stores {', '.join(sorted(dtypes))} but sensor "
                          f"{sensor.name!r} products store {sensor.dtype} (physical = DN * gain "
                          "+ offset); use the DN product or a sensor without dn_gain")
      self.crs, self.transform = src.crs, src.transform
      self.nodata = src.nodata
      self._strip = None   # ((y0, S), pixels (h, W, C), valid (h, W)) of the last window row
    except BaseException:
      src.close()
      raise

  def close(self) -> None:
    self._src.close()

  def _read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """(h, w, C) file values of the window; a damaged block -> ReaderError naming the file."""
    rasterio = _rasterio()
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        data = self._src.read(self.bands, window=rasterio.windows.Window(x0, y0, w, h))
    except Exception as e:  # RasterioIOError / CPLE_*: truncated or damaged file
      raise ReaderError(f"{self.path}: read failed at rows {y0}-{y0 + h}, damaged or truncated "
                        f"raster ({e})") from None
    return np.moveaxis(data, 0, -1)

  def read(self, y0: int, x0: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The size x size window at (y0, x0) -> pixels (S, S, C) float32 physical (0 where not
    valid), valid (S, S) bool; past the scene's edge: padding, not valid.

    Windows come row by row, so the rows [y0, y0 + S) are read and converted once, for the
    whole width, and the windows of that row are cut from them (one strip held).
    """
    if self._strip is None or self._strip[0] != (y0, size):
      h = min(size, self.height - y0)
      pixels, valid = to_view(self._read(y0, 0, h, self.width), self.sensor, self.nodata,
                              self.path)
      self._strip = ((y0, size), pixels, valid)
    _, pixels, valid = self._strip
    h, w = pixels.shape[0], min(size, self.width - x0)
    if (h, w) == (size, size):
      return pixels[:, x0:x0 + size].copy(), valid[:, x0:x0 + size].copy()
    pad_p = np.zeros((size, size, pixels.shape[-1]), np.float32)
    pad_v = np.zeros((size, size), bool)
    pad_p[:h, :w], pad_v[:h, :w] = pixels[:, x0:x0 + w], valid[:, x0:x0 + w]
    return pad_p, pad_v

  def scan(self) -> dict[str, int]:
    """Reads the scene once in strips; ReaderError if no pixel is valid or a band is NaN
    everywhere. -> {"pixels": H W, "valid": valid pixels}."""
    finite = np.zeros(len(self.bands), np.int64)
    valid_count = 0
    rows = max(1, SCAN_PIXELS // self.width)
    for y in range(0, self.height, rows):
      dn = self._read(y, 0, min(rows, self.height - y), self.width)
      finite += np.isfinite(dn).reshape(-1, dn.shape[-1]).sum(0)
      valid_count += int(to_view(dn, self.sensor, self.nodata, self.path)[1].sum())
    nan_bands = [b for b, n in zip(self.bands, finite) if n == 0]
    if nan_bands:
      raise ReaderError(f"{self.path}: band {nan_bands[0]} is NaN / Inf everywhere (sensor "
                        f"{self.sensor.name!r}, band "
                        f"{self.sensor.band_names[self.bands.index(nan_bands[0])]!r}); expected "
                        "finite values outside nodata areas")
    if valid_count == 0:
      fill = self.nodata if self.nodata is not None else self.sensor.dn_nodata
      raise ReaderError(f"{self.path}: every pixel is nodata (nodata value {fill}, or NaN); "
                        "nothing to predict")
    return {"pixels": self.height * self.width, "valid": valid_count}


def check_co_registered(a: SceneReader, b: SceneReader) -> None:
  """ReaderError unless b has a's grid (size), CRS and transform."""
  if (a.height, a.width) != (b.height, b.width):
    raise ReaderError(f"{b.path}: {b.width}x{b.height} px but {a.path} is {a.width}x{a.height};"
                      " the views must be co-registered (same grid)")
  if a.crs != b.crs:
    raise ReaderError(f"{b.path}: CRS {b.crs} but {a.path} has {a.crs}; the views must be "
                      "co-registered (reproject with gdalwarp)")
  if not a.transform.almost_equals(b.transform):
    raise ReaderError(f"{b.path}: transform {tuple(b.transform)[:6]} but {a.path} has "
                      f"{tuple(a.transform)[:6]}; the views must be co-registered")


class CogWriter:
  """Rows of a (K, H, W) output written to `path` as a Cloud-Optimised GeoTIFF, atomically.

  write(top, rows (K, n, W)) in increasing row order (any strip heights: rows are held until a
  whole row of BLOCK-high tiles is complete, so each tile is compressed once); finish() builds
  the overviews (nearest for class ids, average otherwise), converts with the COG driver to a
  second temp name and os.replace()s it onto `path`; abort() removes whatever exists.
  """

  def __init__(self, path: str, like: SceneReader, count: int, dtype: str, nodata: float,
               resampling: str = "nearest"):
    rasterio = _rasterio()
    self.path, self.count, self.dtype = path, count, np.dtype(dtype)
    self.height, self.width, self.resampling = like.height, like.width, resampling
    self.tmp = f"{path}.tmp-{os.getpid()}"
    self.cog_tmp = f"{path}.cog-tmp-{os.getpid()}"
    self.nodata = nodata
    self._pending: list[np.ndarray] = []
    self._pending_top = 0
    blk = BLOCK if min(self.height, self.width) >= BLOCK else None
    profile = dict(driver="GTiff", height=self.height, width=self.width, count=count,
                   dtype=self.dtype.name, crs=like.crs, transform=like.transform, nodata=nodata,
                   compress="deflate", BIGTIFF="IF_SAFER")
    if blk:
      profile.update(tiled=True, blockxsize=blk, blockysize=blk)
    self._block_rows = blk or self.height
    self._dst = rasterio.open(self.tmp, "w", **profile)

  def write(self, top: int, rows: np.ndarray) -> None:
    if top != self._pending_top + sum(r.shape[1] for r in self._pending):
      raise ValueError(f"rows must come in order: got row {top}")
    self._pending.append(np.asarray(rows, self.dtype))
    end = top + rows.shape[1]
    whole = end - end % self._block_rows if end < self.height else end
    if whole > self._pending_top:
      self._emit(whole)

  def _emit(self, upto: int) -> None:
    rasterio = _rasterio()
    data = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
    n = upto - self._pending_top
    self._dst.write(data[:, :n], window=rasterio.windows.Window(0, self._pending_top,
                                                                 self.width, n))
    rest = data[:, n:]
    self._pending = [rest] if rest.shape[1] else []
    self._pending_top = upto

  def finish(self) -> None:
    from rasterio import shutil as rio_shutil  # pylint: disable=import-outside-toplevel
    from rasterio.enums import Resampling  # pylint: disable=import-outside-toplevel
    if self._pending_top != self.height or self._pending:
      raise ValueError(f"{self.path}: rows {self._pending_top}.. of {self.height} not written")
    factors = overview_factors(self.height, self.width)
    if factors:
      self._dst.build_overviews(factors, getattr(Resampling, self.resampling))
    self._dst.close()
    rio_shutil.copy(self.tmp, self.cog_tmp, driver="COG", COMPRESS="DEFLATE",
                    BLOCKSIZE=COG_BLOCK, OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE",
                    BIGTIFF="IF_SAFER")
    os.replace(self.cog_tmp, self.path)
    os.remove(self.tmp)

  def abort(self) -> None:
    """Closes and removes the temporary files (a failed run leaves nothing behind)."""
    try:
      if not self._dst.closed:
        self._dst.close()
    finally:
      for p in (self.tmp, self.cog_tmp, self.tmp + ".ovr", self.tmp + ".aux.xml"):
        if os.path.exists(p):
          os.remove(p)


def overview_factors(height: int, width: int) -> list[int]:
  """Overview decimations 2, 4, ... while the overview is at least half a COG tile wide."""
  out, f = [], 2
  while max(height, width) / f >= COG_BLOCK / 2:
    out.append(f)
    f *= 2
  return out
