"""Tile records on disk: one schema, msgpack-encoded, in ArrayRecord shards.

Record format "ringmoe-tile", version 1 (`TILE_FORMAT_VERSION`): one msgpack map per record,

  "format":    "ringmoe-tile"
  "version":   1
  "sensor":    str, a registry name
  "pixels":    array (H, W, C) float32, physical units of the sensor's `scale`, 0 where invalid
  "valid":     array (H, W) bool, stored bit-packed (np.packbits)
  "crs":       str or nil, CRS as "EPSG:n" or WKT
  "transform": 6 floats or nil, the tile's affine geotransform (a, b, c, d, e, f) as in rasterio
               (x = a * col + b * row + c, y = d * col + e * row + f)
  "time":      str or nil, acquisition time, ISO 8601
  "group":     str or nil, links co-registered tiles of different sensors (same place and time)
  "labels":    map name -> array or scalar (class, boxes, masks, ...), may be empty
  "extra":     map name -> array (e.g. "clean": noise-free SAR backscatter), may be empty

An array is a map {"dtype": numpy dtype str, "shape": [..], "data": raw little-endian bytes}.
Decoding gives the record dict the pipeline validates ("sensor", "pixels", "valid", ...), with
labels and extras as top-level keys prefixed "label_" / unprefixed ("clean").

Shards are written with `ArrayRecordWriter(path, "group_size:1")` (random access, one record per
chunk) and read with `grain.sources.ArrayRecordDataSource` + `decode_tile`; errors name the shard.
"""
from __future__ import annotations

from ringmoe_jax.errors import UserError

import os
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np

TILE_FORMAT = "ringmoe-tile"
TILE_FORMAT_VERSION = 1
SHARD_SUFFIX = ".arrayrecord"


class TileFormatError(UserError):
  """A shard or record that cannot be read; the message names the file."""


def _pack_array(a: np.ndarray) -> dict[str, Any]:
  a = np.ascontiguousarray(a)
  if a.dtype.byteorder == ">":
    a = a.astype(a.dtype.newbyteorder("<"))
  return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _unpack_array(d: Mapping[str, Any]) -> np.ndarray:
  dtype = np.dtype(d["dtype"])
  shape = tuple(int(s) for s in d["shape"])
  data = d["data"]
  if len(data) != dtype.itemsize * int(np.prod(shape)):
    raise ValueError(f"array of shape {shape} {dtype} has {len(data)} bytes")
  return np.frombuffer(data, dtype).reshape(shape)


def _pack_value(v: Any) -> Any:
  if isinstance(v, np.ndarray):
    return {"__array__": _pack_array(v)}
  if isinstance(v, np.generic):
    return v.item()
  return v


def _unpack_value(v: Any) -> Any:
  if isinstance(v, Mapping) and "__array__" in v:
    return _unpack_array(v["__array__"])
  return v


def encode_tile(sensor: str, pixels: np.ndarray, valid: np.ndarray | None = None, *,
                crs: str | None = None, transform: Sequence[float] | None = None,
                time: str | None = None, group: str | None = None,
                labels: Mapping[str, Any] | None = None,
                extra: Mapping[str, np.ndarray] | None = None) -> bytes:
  """One tile -> record bytes (format above). pixels (H, W, C) float32, valid (H, W) bool."""
  pixels = np.asarray(pixels)
  if pixels.ndim != 3 or pixels.dtype != np.float32:
    raise ValueError(f"sensor {sensor!r}: pixels must be (H, W, C) float32, got {pixels.shape} "
                     f"{pixels.dtype}")
  h, w = pixels.shape[:2]
  valid = np.ones((h, w), bool) if valid is None else np.asarray(valid, bool)
  if valid.shape != (h, w):
    raise ValueError(f"sensor {sensor!r}: valid must be ({h}, {w}), got {valid.shape}")
  if transform is not None:
    transform = [float(t) for t in transform][:6]
    if len(transform) != 6:
      raise ValueError("transform needs 6 numbers (a, b, c, d, e, f)")
  record = {
      "format": TILE_FORMAT, "version": TILE_FORMAT_VERSION, "sensor": sensor,
      "pixels": _pack_array(pixels),
      "valid": {"shape": [h, w], "bits": np.packbits(valid, axis=None).tobytes()},
      "crs": crs, "transform": transform, "time": time, "group": group,
      "labels": {k: _pack_value(v) for k, v in (labels or {}).items()},
      "extra": {k: _pack_array(np.asarray(v)) for k, v in (extra or {}).items()},
  }
  return msgpack.packb(record, use_bin_type=True)


def decode_tile(data: bytes, where: str = "") -> dict[str, Any]:
  """Record bytes -> {"sensor", "pixels", "valid", "crs", "transform", "time", "group",
  "label_<name>"..., <extra name>...}. Raises TileFormatError naming `where`."""
  prefix = f"{where}: " if where else ""
  try:
    record = msgpack.unpackb(data, raw=False)
  except Exception as e:  # msgpack raises several unrelated types for garbage
    raise TileFormatError(f"{prefix}not a tile record (msgpack: {e})") from None
  if not isinstance(record, Mapping) or record.get("format") != TILE_FORMAT:
    raise TileFormatError(f"{prefix}not a {TILE_FORMAT} record")
  if record.get("version") != TILE_FORMAT_VERSION:
    raise TileFormatError(f"{prefix}tile record version {record.get('version')!r} is not "
                          f"supported (this reader: {TILE_FORMAT_VERSION})")
  try:
    pixels = _unpack_array(record["pixels"])
    h, w = record["valid"]["shape"]
    valid = np.unpackbits(np.frombuffer(record["valid"]["bits"], np.uint8),
                          count=h * w).reshape(h, w).astype(bool)
    out = {"sensor": record["sensor"], "pixels": pixels, "valid": valid,
           "crs": record["crs"], "transform": record["transform"], "time": record["time"],
           "group": record["group"]}
    for k, v in record["labels"].items():
      out[f"label_{k}"] = _unpack_value(v)
    for k, v in record["extra"].items():
      out[k] = _unpack_array(v)
  except (KeyError, TypeError, ValueError) as e:
    raise TileFormatError(f"{prefix}damaged tile record ({type(e).__name__}: {e})") from None
  return out


class TileWriter:
  """Writes records of one sensor to `<dir>/<prefix>-NNNNN.arrayrecord` shards."""

  def __init__(self, directory: str, prefix: str, records_per_shard: int = 1024):
    self._dir = directory
    self._prefix = prefix
    self._per_shard = int(records_per_shard)
    self._writer = None
    self._count = 0
    self.shards: list[dict[str, Any]] = []  # {"path": relative path, "records": n}

  def write(self, record: bytes) -> None:
    # Imported here: array_record is only needed when writing or reading shards.
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    if self._writer is None or self._count == self._per_shard:
      self._close_shard()
      name = f"{self._prefix}-{len(self.shards):05d}{SHARD_SUFFIX}"
      self._writer = array_record_module.ArrayRecordWriter(os.path.join(self._dir, name),
                                                           "group_size:1")
      self.shards.append({"path": name, "records": 0})
      self._count = 0
    self._writer.write(record)
    self._count += 1
    self.shards[-1]["records"] += 1

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def close(self) -> list[dict[str, Any]]:
    self._close_shard()
    return self.shards


def count_records(path: str) -> int:
  """Number of records in one shard; TileFormatError naming the file if it is not readable."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise TileFormatError(f"{path}: shard not found")
  try:
    reader = array_record_module.ArrayRecordReader(path)
    n = reader.num_records()
    reader.close()
  except RuntimeError as e:
    raise TileFormatError(f"{path}: not a readable ArrayRecord shard (corrupt or truncated: "
                          f"{e})") from None
  return int(n)


class TileRecordSource:
  """Grain random-access source over tile shards: ArrayRecordDataSource + `decode_tile`.

  Every shard is opened once at construction, so a corrupt or truncated file fails at once with
  its name (and, given `expected_records` from a manifest, a count mismatch does too). Records
  decode lazily; a damaged record raises TileFormatError naming shard and index. Picklable (the
  reader is reopened in each worker process).
  """

  def __init__(self, paths: Sequence[str], expected_records: Sequence[int] | None = None):
    self._paths = tuple(os.fspath(p) for p in paths)
    if not self._paths:
      raise TileFormatError("no tile shards given")
    counts = []
    for i, p in enumerate(self._paths):
      n = count_records(p)
      if expected_records is not None and n != expected_records[i]:
        raise TileFormatError(f"{p}: has {n} records but the manifest lists "
                              f"{expected_records[i]} (truncated or replaced shard)")
      if n == 0:
        raise TileFormatError(f"{p}: shard holds no records (truncated?)")
      counts.append(n)
    self._ends = np.cumsum(counts)
    self._source = None

  def _open(self):
    if self._source is None:
      import grain  # pylint: disable=import-outside-toplevel
      self._source = grain.sources.ArrayRecordDataSource(list(self._paths))
    return self._source

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def __len__(self) -> int:
    return int(self._ends[-1])

  def __repr__(self) -> str:
    return f"TileRecordSource({len(self._paths)} shards, {len(self)} records, {self._paths[0]}...)"

  @property
  def paths(self) -> tuple[str, ...]:
    return self._paths

  def where(self, index: int) -> str:
    """'<shard path>[<record in shard>]' of global record `index`."""
    shard = int(np.searchsorted(self._ends, index, side="right"))
    start = 0 if shard == 0 else int(self._ends[shard - 1])
    return f"{self._paths[shard]}[{index - start}]"

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} tiles")
    try:
      data = self._open()[index]
    except Exception as e:  # the C++ reader raises RuntimeError / others on damaged chunks
      raise TileFormatError(f"{self.where(index)}: unreadable record ({e})") from None
    record = decode_tile(data, where=self.where(index))
    record["index"] = index
    return record
