r"""GeoTIFF -> tile shards: `python -m ringmoe_jax.data.ingest`.

  python -m ringmoe_jax.data.ingest --sensor=sentinel2_l2a --bands=B2,B3,B4,B8 \
      --output=/data/tiles scene1.tif scene2.tif
  python -m ringmoe_jax.data.ingest --group --sensor=gaofen2_pms --sensor=gaofen3_amp \
      --output=/data/pairs optical.tif sar.tif

Per input raster (rasterio, read by strips of `--size` rows: never a whole scene in memory):
  1. Bands. Without --bands the file's bands are the sensor's bands in order (a complex band
     fills two channels, real then imag). --bands names the file's bands by sensor band name, in
     file order; or, when the file holds all of the sensor's bands, the subset to keep. A subset
     is written under a derived sensor "<sensor>_<b1>_<b2>..." whose definition is stored in
     the manifest (and registered by `sources.make_source`). Counts that fit neither way are an
     error naming both counts.
  2. Units. DN -> physical per the registry (`Sensor.to_physical`); a sensor with a fixed DN
     scaling requires the product's storage dtype (so a float file is not scaled twice).
  3. Masks. A pixel is invalid if every band equals the nodata value (the file's tag, else the
     sensor's dn_nodata) or any band is NaN/Inf; invalid pixels are written as 0 with valid=0,
     and counted.
  4. Tiles of --size with --stride (default 192 / 64, the paper's); a tile whose invalid fraction
     exceeds --max-nodata-fraction (default 0.15, the paper's SAR-L2 rule) is dropped and counted.
  5. --group: the inputs are co-registered rasters of different sensors (one --sensor each):
     they must share CRS, transform and size; tiles at one window share a group id, and a window
     is dropped for all of them if any exceeds the nodata threshold.
Outputs: `<sensor>-NNNNN.arrayrecord` shards (record format: `tiles.py`) and `manifest.json`:
tiles written, dropped (by reason), masked pixels, per-band statistics of the written valid
pixels (count, mean, std, min, max; one pass, Chan's parallel update), sensors, shards.
Bad input prints `error: <file>: <problem>` and exits with status 2.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import warnings
from typing import Any, Sequence

import numpy as np

from ringmoe_jax.data import tiles as tiles_lib
from ringmoe_jax.errors import EXIT_USER_ERROR, UserError, format_error, run_cli
from ringmoe_jax.sensors.registry import Band, Sensor, SensorRegistry, default_registry

MANIFEST_FORMAT = "ringmoe-tiles"
MANIFEST_VERSION = 1


class IngestError(UserError):
  """Bad input; `str()` is '<file>: <problem>'."""

  def __init__(self, where: str, problem: str):
    super().__init__(f"{where}: {problem}")


class BandStats:
  """Per-band count / mean / M2 / min / max, merged batch by batch (Chan et al. 1979)."""

  def __init__(self, num_bands: int):
    self.n = np.zeros(num_bands, np.float64)
    self.mean = np.zeros(num_bands, np.float64)
    self.m2 = np.zeros(num_bands, np.float64)
    self.min = np.full(num_bands, np.inf)
    self.max = np.full(num_bands, -np.inf)

  def update(self, x: np.ndarray) -> None:
    """x: (N, C) valid pixel values."""
    if len(x) == 0:
      return
    x = x.astype(np.float64)
    nb = len(x)
    mb = x.mean(0)
    m2b = ((x - mb) ** 2).sum(0)
    n = self.n + nb
    delta = mb - self.mean
    self.mean = self.mean + delta * nb / n
    self.m2 = self.m2 + m2b + delta ** 2 * self.n * nb / n
    self.n = n
    self.min = np.minimum(self.min, x.min(0))
    self.max = np.maximum(self.max, x.max(0))

  def to_dict(self, band_names: Sequence[str]) -> dict[str, Any]:
    std = np.sqrt(self.m2 / np.maximum(self.n, 1))
    fin = lambda a: [float(v) if np.isfinite(v) else None for v in a]  # noqa: E731
    return {"bands": list(band_names), "count": [int(v) for v in self.n], "mean": fin(self.mean),
            "std": fin(std), "min": fin(self.min), "max": fin(self.max)}


def subset_sensor(sensor: Sensor, names: Sequence[str]) -> Sensor:
  """A sensor of `names` (a subset of sensor's bands, kept in sensor order)."""
  keep = [i for i, b in enumerate(sensor.bands) if b.name in set(names)]
  if len(keep) == sensor.num_channels:
    return sensor
  pick = lambda t: None if t is None else tuple(t[i] for i in keep)  # noqa: E731
  d = sensor.to_dict()
  d.update(name="_".join([sensor.name] + [sensor.bands[i].name.lower() for i in keep]),
           bands=[sensor.bands[i].to_dict() for i in keep], mean=pick(sensor.mean),
           std=pick(sensor.std), dn_gain=pick(sensor.dn_gain), dn_offset=pick(sensor.dn_offset),
           description=f"{sensor.description} [bands {','.join(sensor.bands[i].name for i in keep)}]")
  return Sensor.from_dict(d)


def resolve_sensor(spec: str, registry: SensorRegistry) -> Sensor:
  """--sensor value: a registry name, or a JSON/YAML file whose first sensor is used."""
  if os.path.isfile(spec) or spec.endswith((".json", ".yaml", ".yml")):
    try:
      names = registry.load_file(spec, overwrite=True)
    except OSError as e:
      raise IngestError(spec, f"cannot read sensor file: {e.strerror}") from None
    except ValueError as e:
      raise IngestError(spec, str(e).removeprefix(f"{spec}: ")) from None
    return registry.get(names[0])
  try:
    return registry.get(spec)
  except KeyError as e:
    raise IngestError(f"--sensor={spec}", str(e)) from None


class _Plan:
  """How one raster maps to one sensor: file band indices (1-based) and output sensor."""

  def __init__(self, path: str, src, sensor: Sensor, bands: Sequence[str] | None):
    self.path = path
    dtypes = set(src.dtypes)
    if len(dtypes) != 1:
      raise IngestError(path, f"bands have different dtypes {sorted(dtypes)}")
    self.dtype = src.dtypes[0]
    self.complex = self.dtype.startswith("complex")
    per_band = 2 if self.complex else 1
    n_file = src.count
    if self.dtype in ("bool",) or not (np.issubdtype(np.dtype(self.dtype.replace(
        "complex_int16", "complex64")), np.number)):
      raise IngestError(path, f"dtype {self.dtype} is not numeric")
    if sensor.dtype is not None and self.dtype != sensor.dtype:
      raise IngestError(path, f"dtype {self.dtype} does not match sensor {sensor.name!r}, whose "
                        f"products store {sensor.dtype} (DN x {sensor.dn_gain[0] if sensor.dn_gain else 1:g}"
                        f"{'' if not sensor.dn_offset else f' + {sensor.dn_offset[0]:g}'}); "
                        "ingest the DN product, or use a sensor without dn_gain")
    names = sensor.band_names
    if sensor.modality.startswith("sar") and self.complex:
      # A complex band carries one polarisation: name it by its real channel's polarisation.
      names = names[::2]
    if bands is None:
      if n_file != len(names):
        raise IngestError(path, f"file has {n_file} band(s) but sensor {sensor.name!r} has "
                          f"{len(names)} ({', '.join(names)}); pass --bands naming the file's "
                          "bands")
      self.file_bands = list(range(1, n_file + 1))
      chosen = list(names)
    else:
      unknown = [b for b in bands if b not in names]
      if unknown:
        raise IngestError(path, f"--bands {','.join(unknown)} not in sensor {sensor.name!r} "
                          f"({', '.join(names)})")
      if len(set(bands)) != len(bands):
        raise IngestError(path, f"--bands repeats a band: {','.join(bands)}")
      if n_file == len(bands):  # the file holds exactly these bands, in this order
        order = {b: i + 1 for i, b in enumerate(bands)}
      elif n_file == len(names):  # the file holds all bands: keep the named subset
        order = {b: names.index(b) + 1 for b in bands}
      else:
        raise IngestError(path, f"--bands names {len(bands)} band(s) and sensor "
                          f"{sensor.name!r} has {len(names)}, but the file has {n_file} band(s)")
      chosen = [b for b in names if b in order]  # sensor order
      self.file_bands = [order[b] for b in chosen]
    if self.complex:
      keep = [c for b in chosen for c in sensor.band_names[2 * names.index(b):2 * names.index(b) + 2]]
    else:
      keep = chosen
    self.sensor = subset_sensor(sensor, keep)
    tag = src.nodata
    self.nodata = tag if tag is not None else sensor.dn_nodata
    self.per_band = per_band

  def to_physical(self, block: np.ndarray) -> np.ndarray:
    """(B, h, w) file block -> (h, w, C) float32 physical values (complex -> real, imag)."""
    x = np.moveaxis(block, 0, -1)
    if self.complex:
      x = np.stack([x.real, x.imag], axis=-1).reshape(*x.shape[:-1], -1)
    with np.errstate(invalid="ignore", over="ignore"):
      return self.sensor.to_physical(x)


def _open(path: str):
  import rasterio  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    raise IngestError(path, "no such file")
  try:
    with warnings.catch_warnings():
      # A raster without georeference is reported by our own checks (naming the file) where
      # it matters; rasterio's generic warning would only clutter the CLI's error output.
      warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
      return rasterio.open(path)
  except rasterio.errors.RasterioIOError as e:
    raise IngestError(path, f"not a readable raster ({e})") from None


def _tile_starts(n: int, size: int, stride: int) -> list[int]:
  return list(range(0, n - size + 1, stride)) if n >= size else []


def _acq_time(src, override: str | None) -> str | None:
  if override:
    return override
  t = src.tags().get("TIFFTAG_DATETIME")
  if not t:
    return None
  try:  # TIFF's "YYYY:MM:DD HH:MM:SS"
    return datetime.datetime.strptime(t, "%Y:%m:%d %H:%M:%S").isoformat()
  except ValueError:
    return t


def ingest(inputs: Sequence[str], sensors: Sequence[str], output: str, *,
           bands: Sequence[str] | None = None, size: int = 192, stride: int = 64,
           max_nodata_fraction: float = 0.15, group: bool = False,
           records_per_shard: int = 1024, time: str | None = None,
           registry: SensorRegistry | None = None) -> dict[str, Any]:
  """Ingests `inputs`; returns the manifest (also written to `<output>/manifest.json`).

  Args:
    inputs: raster paths.
    sensors: one sensor spec (name or file) for all inputs, or one per input.
    output: output directory (created).
    bands: None, one --bands list for all inputs, or one per input (None entries allowed).
    size, stride: tile size and stride in pixels.
    max_nodata_fraction: drop tiles with a larger invalid fraction.
    group: co-registered inputs of different sensors (see the module docstring).
    records_per_shard: records per ArrayRecord shard.
    time: acquisition time override (ISO 8601) for all inputs.
    registry: sensor registry (default: the built-ins).

  Raises:
    IngestError: bad input, naming the file and the problem.
  """
  registry = default_registry() if registry is None else registry
  if not inputs:
    raise IngestError("ingest", "no input rasters given")
  if size < 4 or stride < 1:
    raise IngestError("ingest", f"need --size >= 4 and --stride >= 1, got {size} / {stride}")
  if len(sensors) not in (1, len(inputs)):
    raise IngestError("--sensor", f"give one --sensor or one per input ({len(inputs)}), got "
                      f"{len(sensors)}")
  if bands is not None and len(bands) not in (1, len(inputs)):
    raise IngestError("--bands", f"give one --bands or one per input ({len(inputs)})")
  specs = list(sensors) * (len(inputs) if len(sensors) == 1 else 1)
  band_lists = [None] * len(inputs) if bands is None else (
      list(bands) * (len(inputs) if len(bands) == 1 else 1))
  resolved = [resolve_sensor(s, registry) for s in specs]

  srcs, plans = [], []
  try:
    for path, sensor, bl in zip(inputs, resolved, band_lists):
      src = _open(path)
      srcs.append(src)
      plans.append(_Plan(path, src, sensor, bl))
    if group:
      ref = srcs[0]
      for path, src in zip(inputs, srcs):
        if src.crs is None:
          raise IngestError(path, "raster has no CRS, but --group needs georeferenced "
                            "co-registered rasters")
      for path, src in zip(inputs[1:], srcs[1:]):
        if (src.width, src.height) != (ref.width, ref.height):
          raise IngestError(path, f"size {src.width}x{src.height} differs from {inputs[0]} "
                            f"({ref.width}x{ref.height}); --group needs one grid")
        if src.crs != ref.crs or not src.transform.almost_equals(ref.transform):
          raise IngestError(path, f"CRS / transform differ from {inputs[0]}; --group needs "
                            "co-registered rasters on one grid")
    os.makedirs(output, exist_ok=True)
    writers: dict[str, tiles_lib.TileWriter] = {}
    stats: dict[str, BandStats] = {}
    sensor_defs: dict[str, Sensor] = {}
    counts = {"tiles_written": 0, "tiles_dropped": {"nodata_fraction": 0},
              "pixels_masked": {"nonfinite": 0, "nodata": 0}}
    per_input = []
    units = [list(range(len(inputs)))] if group else [[i] for i in range(len(inputs))]
    for unit in units:
      written_before = counts["tiles_written"]
      dropped_before = counts["tiles_dropped"]["nodata_fraction"]
      _ingest_unit([srcs[i] for i in unit], [plans[i] for i in unit], size, stride,
                   max_nodata_fraction, group, time, output, records_per_shard, writers, stats,
                   sensor_defs, counts)
      per_input.append({"files": [inputs[i] for i in unit],
                        "sensors": [plans[i].sensor.name for i in unit],
                        "tiles_written": counts["tiles_written"] - written_before,
                        "tiles_dropped": counts["tiles_dropped"]["nodata_fraction"]
                        - dropped_before})
  finally:
    for s in srcs:
      s.close()
  shards = []
  for name, w in writers.items():
    for shard in w.close():
      shards.append({"sensor": name, **shard})
  manifest = {
      "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
      "record_format": tiles_lib.TILE_FORMAT, "record_version": tiles_lib.TILE_FORMAT_VERSION,
      "tile_size": size, "stride": stride, "max_nodata_fraction": max_nodata_fraction,
      "group": group, "inputs": per_input, **counts,
      "band_stats": {n: st.to_dict(sensor_defs[n].band_names) for n, st in stats.items()},
      "sensors": [s.to_dict() for s in sensor_defs.values()],
      "shards": shards,
  }
  with open(os.path.join(output, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def _ingest_unit(srcs, plans, size, stride, max_nodata_fraction, group, time, output,
                 records_per_shard, writers, stats, sensor_defs, counts):
  """Tiles one raster, or one group of co-registered rasters, strip by strip."""
  from rasterio.windows import Window  # pylint: disable=import-outside-toplevel
  ref = srcs[0]
  for plan in plans:
    name = plan.sensor.name
    sensor_defs.setdefault(name, plan.sensor)
    if name not in writers:
      writers[name] = tiles_lib.TileWriter(output, name, records_per_shard)
      stats[name] = BandStats(plan.sensor.num_channels)
  stem = os.path.splitext(os.path.basename(plans[0].path))[0]
  times = [_acq_time(src, time) for src in srcs]
  for y in _tile_starts(ref.height, size, stride):
    strips = []
    for src, plan in zip(srcs, plans):
      try:
        block = src.read(plan.file_bands, window=Window(0, y, src.width, size))
      except Exception as e:  # rasterio raises RasterioIOError / CPLE_* for damaged files
        raise IngestError(plan.path, f"read failed at rows {y}-{y + size} ({e})") from None
      if plan.nodata is not None and not plan.complex:
        nodata = (block == np.asarray(plan.nodata, block.dtype)).all(axis=0)
      elif plan.nodata is not None:
        nodata = (block == plan.nodata).all(axis=0)
      else:
        nodata = np.zeros(block.shape[1:], bool)
      phys = plan.to_physical(block)
      nonfinite = ~np.isfinite(phys).all(axis=-1)
      strips.append((phys, nodata & ~nonfinite, nonfinite))
    for x in _tile_starts(ref.width, size, stride):
      tiles = []
      for phys, nodata, nonfinite in strips:
        nd, nf = nodata[:, x:x + size], nonfinite[:, x:x + size]
        tiles.append((phys[:, x:x + size], ~(nd | nf), int(nd.sum()), int(nf.sum())))
      if any(1 - v.mean() > max_nodata_fraction for _, v, _, _ in tiles):
        counts["tiles_dropped"]["nodata_fraction"] += len(tiles)
        continue
      for (pix, valid, n_nd, n_nf), src, plan, t in zip(tiles, srcs, plans, times):
        pix = np.where(valid[..., None], pix, np.float32(0)).astype(np.float32)
        transform = src.window_transform(Window(x, y, size, size))
        record = tiles_lib.encode_tile(
            plan.sensor.name, pix, valid,
            crs=None if src.crs is None else src.crs.to_string(),
            transform=None if src.crs is None and src.transform.is_identity else
            tuple(transform)[:6],
            time=t, group=f"{stem}-{y}-{x}" if group else None)
        writers[plan.sensor.name].write(record)
        stats[plan.sensor.name].update(pix[valid])
        counts["tiles_written"] += 1
        counts["pixels_masked"]["nodata"] += n_nd
        counts["pixels_masked"]["nonfinite"] += n_nf


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ringmoe_jax.data.ingest",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("inputs", nargs="*", metavar="INPUT", help="GeoTIFF / raster files")
  parser.add_argument("--sensor", action="append", default=[], metavar="NAME_OR_FILE",
                      help="registry name or sensor JSON/YAML; once, or once per input")
  parser.add_argument("--bands", action="append", default=None, metavar="B1,B2,...",
                      help="sensor band names of the file's bands (or the subset to keep); "
                      "once, or once per input")
  parser.add_argument("--output", required=True, metavar="DIR")
  parser.add_argument("--size", type=int, default=192)
  parser.add_argument("--stride", type=int, default=64)
  parser.add_argument("--max-nodata-fraction", type=float, default=0.15)
  parser.add_argument("--group", action="store_true",
                      help="inputs are co-registered rasters of different sensors")
  parser.add_argument("--records-per-shard", type=int, default=1024)
  parser.add_argument("--time", default=None, help="acquisition time (ISO 8601) override")
  parser.add_argument("--sensor-file", action="append", default=[],
                      help="extra sensor definitions to register first")
  args = parser.parse_args(argv)
  registry = default_registry()
  try:
    if not args.sensor:
      raise IngestError("--sensor", "required (a registry name or a sensor JSON/YAML file)")
    for path in args.sensor_file:
      resolve_sensor(path, registry)
    bands = None if args.bands is None else [
        [b.strip() for b in spec.split(",") if b.strip()] or None for spec in args.bands]
    m = ingest(args.inputs, args.sensor, args.output, bands=bands, size=args.size,
               stride=args.stride, max_nodata_fraction=args.max_nodata_fraction,
               group=args.group, records_per_shard=args.records_per_shard, time=args.time,
               registry=registry)
  except IngestError as e:
    print(format_error(e), file=sys.stderr)
    return EXIT_USER_ERROR
  except OSError as e:
    print(f"error: {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
    return EXIT_USER_ERROR
  print(f"wrote {m['tiles_written']} tiles to {len(m['shards'])} shard(s) in {args.output}; "
        f"dropped {m['tiles_dropped']['nodata_fraction']} (nodata fraction > "
        f"{args.max_nodata_fraction}); masked {m['pixels_masked']['nonfinite']} NaN/Inf and "
        f"{m['pixels_masked']['nodata']} nodata pixels")
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main))  # any other UserError too: one 'error:' line, exit status 2
