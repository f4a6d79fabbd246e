"""The Grain input pipeline: sensor-tagged records -> fixed-shape batches for the trainer.

Axes: B batch, H = W = crop size, Cmax = `max_channels`.

Training (`make_dataset`):
  source -> seed -> shard slice [shard_index::shard_count] -> shuffle -> repeat forever
  -> validate + normalise per sensor -> random resized crop (scale 0.2-0.5) + horizontal flip
  -> band dropout (band_dropout > 0) -> fixed-shape example -> batch.
Evaluation (`make_eval_dataset`): no shuffle, no augmentation, one pass, centre crop.

Batch (all numpy):
  "pixels":   float32 (B, H, W, Cmax)  normalised; channels beyond the sensor's count and invalid
                                       pixels are 0
  "valid":    float32 (B, H, W)        1 valid, 0 nodata / NaN / padding
  "modality": int32 (B,)               index into MODALITIES
  "sensor":   int32 (B,)               registry.index(sensor name)
  "raw":      float32 (B, H, W, Cmax)  physical values (the sensor's scale) after augmentation,
                                       for physics targets such as the SAR span
  "looks":    float32 (B,)             the sensor's equivalent number of looks (registry), 0 if
                                       unknown or not SAR (Gamma NLL of SAR-L2)
  "group":    int32 (B,)               co-registration group (a hash of the record's "group"
                                       tag, >= 0), -1 without one
  "index":    int32 (B,)               source record index; only with keep_index=True
  "clean":    float32 (B, H, W, Cmax)  noise-free values (simulator SAR-L2), 0 elsewhere; only
                                       with keep_clean=True (evaluation)
  "label":    int32 (B,)               scene class ("label_class"), -1 if none; only with
                                       keep_label=True (linear probes)
  "channels": float32 (B, Cmax)        1 for each channel the tile has, 0 for padding and for
                                       bands dropped by `BandDropout` (their "pixels" are 0);
                                       only with channel_mask=True or band_dropout > 0. Absent:
                                       every channel of the tile's sensor is present.

Calibration: tiles reach the pipeline in the sensor's physical scale (`Sensor.scale`): ingestion
applies the registry's DN scaling (`dn_gain`, `dn_offset`; published for Sentinel-2 and Landsat
C2), and products whose calibration is per image (Gaofen, WorldView) must be ingested already
calibrated to reflectance. So every optical tile in 'reflectance' scale shares one physical scale
before the per-sensor normalisation; the 'reflectance' target uses `raw` in that scale.

Co-registered groups: with a source whose `co_registered` is k > 1 (the simulator; records
k*g .. k*g+k-1 show one scene), whole groups are shuffled and sharded, so a batch whose size is
a multiple of k holds complete groups (for the cross-modal contrastive term).

A `sources.Mixture` (e.g. one ArrayRecord source per modality) is mixed by weight after each
part is sharded, shuffled and repeated.

Sharding slices the source before shuffling, so hosts see disjoint records. The shuffle is
re-drawn every epoch (`repeat(reseed_each_epoch=True)`) and augmentation draws from Grain's
per-element generator, so a batch is a pure function of (seed, shard, step) and iterator state is
just a step counter.
"""
from __future__ import annotations

import json
import sys
import zlib
from typing import Any, Mapping

from absl import flags
import grain
import numpy as np

from ringmoe_jax.data import augment as augment_lib
from ringmoe_jax.data.records import RecordError, validate_record
from ringmoe_jax.data.sources import Mixture
from ringmoe_jax.sensors.modalities import modality_id
from ringmoe_jax.sensors.registry import SensorRegistry

# The Swin patch size: a tile must hold at least one patch.
DEFAULT_MIN_TILE_SIZE = 4


class ValidateAndNormalize(grain.transforms.Map):
  """Record -> {"sensor", "pixels" normalised (H, W, C), "raw" (H, W, C), "valid" (H, W), ...}."""

  def __init__(self, registry: SensorRegistry, min_size: int):
    self._registry = registry
    self._min_size = min_size

  def map(self, element: Mapping[str, Any]) -> dict[str, Any]:
    where = f"record {element['index']}" if "index" in element else ""
    clean, stats = validate_record(element, self._registry, self._min_size, where=where)
    sensor = self._registry.get(clean["sensor"])
    valid = clean["valid"]
    normalised = np.where(valid[..., None], sensor.normalize(clean["pixels"]), np.float32(0))
    out = {"sensor": sensor.name, "pixels": normalised, "raw": clean["pixels"], "valid": valid,
           "index": int(element.get("index", -1)),
           "nonfinite_pixels": stats["nonfinite_pixels"],
           "group": element.get("group"), "label": int(element.get("label_class", -1))}
    if "group_draw" in element:
      out["group_draw"] = element["group_draw"]
    if "clean" in element:
      out["clean"] = np.where(valid[..., None], np.asarray(element["clean"], np.float32), 0)
    return out


def _split_join(element: Mapping[str, Any]) -> np.ndarray:
  # Normalised, raw (and clean) values go through one resampling call, so they stay aligned.
  parts = [element["pixels"], element["raw"]]
  if "clean" in element:
    parts.append(element["clean"])
  return np.concatenate(parts, axis=-1)


def _with_pixels(element: Mapping[str, Any], both: np.ndarray, valid: np.ndarray) -> dict:
  c = element["pixels"].shape[-1]
  out = dict(element)
  out["pixels"], out["raw"], out["valid"] = both[..., :c], both[..., c:2 * c], valid
  if "clean" in element:
    out["clean"] = both[..., 2 * c:]
  return out


def group_id(tag: Any) -> int:
  """A record's group tag (str / int / None) -> int32 id >= 0, or -1 for none.

  Only equality inside a batch matters; crc32 is stable across processes (unlike hash())."""
  if tag is None or (isinstance(tag, str) and not tag):
    return -1
  if isinstance(tag, bytes):
    tag = tag.decode()
  return zlib.crc32(str(tag).encode()) & 0x7FFFFFFF


class RandomCropFlip(grain.transforms.RandomMap):
  """Random resized crop of `scale` of the area to (size, size), then a horizontal flip (p=0.5).

  Resampling is bilinear for optical/MS and nearest for SAR (see `augment.INTERPOLATION`).
  The tiles of one co-registered group visit (records carrying "group_draw", see
  `_GroupRecords`) share one crop box and flip, drawn from (group_seed, group_draw): they stay
  co-registered, so the contrastive term's positives show the same ground.
  """

  def __init__(self, registry: SensorRegistry, size: int, scale: tuple[float, float] = (0.2, 0.5),
               interpolation: Mapping[str, str] | None = None, group_seed: int = 0):
    self._registry = registry
    self._size = size
    self._scale = tuple(scale)
    self._interpolation = dict(augment_lib.INTERPOLATION, **(interpolation or {}))
    self._group_seed = int(group_seed)

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if "group_draw" in element:
      rng = np.random.default_rng((self._group_seed, int(element["group_draw"])))
    modality = self._registry.get(element["sensor"]).modality
    h, w = element["valid"].shape
    box = augment_lib.random_resized_crop_box(rng, h, w, scale=self._scale)
    both, valid = augment_lib.resized_crop(_split_join(element), element["valid"], box, self._size,
                                           self._interpolation[modality])
    if rng.random() < 0.5:
      both, valid = both[:, ::-1], valid[:, ::-1]
    return _with_pixels(element, both, valid)


class BandDropout(grain.transforms.RandomMap):
  """Drops each channel of a tile with probability `rate`, at least one kept: its normalised
  pixels become 0 and element["channels"] (C,) float32 marks it 0. `raw` keeps the measured
  values (the physics targets of the full tile). Draws from Grain's per-element generator, so a
  batch stays a pure function of (seed, shard, step) and resume is exact."""

  def __init__(self, rate: float):
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"data.band_dropout={rate} must be in [0, 1)")
    self._rate = float(rate)

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    c = element["pixels"].shape[-1]
    keep = rng.random(c) >= self._rate
    if not keep.any():
      keep[rng.integers(c)] = True
    out = dict(element)
    out["channels"] = keep.astype(np.float32)
    out["pixels"] = element["pixels"] * out["channels"]
    return out


class CenterCrop(grain.transforms.Map):
  """Centre crop to (size, size); shorter sides are zero-padded and marked invalid."""

  def __init__(self, size: int):
    self._size = size

  def map(self, element: Mapping[str, Any]) -> dict[str, Any]:
    both, valid = augment_lib.center_crop_or_pad(_split_join(element), element["valid"],
                                                 self._size)
    return _with_pixels(element, both, valid)


class ToExample(grain.transforms.Map):
  """Pads channels to `max_channels` and emits the fixed-shape, model-facing example."""

  def __init__(self, registry: SensorRegistry, max_channels: int, keep_index: bool = False,
               keep_clean: bool = False, keep_label: bool = False, channel_mask: bool = False):
    self._registry = registry
    self._max_channels = max_channels
    self._channel_mask = channel_mask
    self._keep_index = keep_index
    self._keep_clean = keep_clean
    self._keep_label = keep_label

  def map(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
    sensor = self._registry.get(element["sensor"])
    c = sensor.num_channels
    if c > self._max_channels:
      raise RecordError(f"sensor {sensor.name!r} has {c} channels but the batch holds "
                        f"max_channels={self._max_channels} (the largest model.in_channels)")
    pad = [(0, 0), (0, 0), (0, self._max_channels - c)]
    example = {
        "pixels": np.pad(np.ascontiguousarray(element["pixels"], np.float32), pad),
        "valid": np.ascontiguousarray(element["valid"], np.float32),
        "modality": np.int32(modality_id(sensor.modality)),
        "sensor": np.int32(self._registry.index(sensor.name)),
        "raw": np.pad(np.ascontiguousarray(element["raw"], np.float32), pad),
        "looks": np.float32(sensor.looks or 0.0),
        "group": np.int32(group_id(element.get("group"))),
    }
    if self._keep_index:
      example["index"] = np.int32(element["index"])
    if self._keep_clean:
      clean = element.get("clean")
      example["clean"] = (np.zeros_like(example["raw"]) if clean is None else
                          np.pad(np.ascontiguousarray(clean, np.float32), pad))
    if self._keep_label:
      example["label"] = np.int32(element.get("label", -1))
    if self._channel_mask or "channels" in element:
      example["channels"] = np.pad(np.asarray(element.get("channels", np.ones(c)), np.float32),
                                   pad[-1:])
    return example


def _check_shard(shard_index: int, shard_count: int) -> None:
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index} of {shard_count}")


class _GroupRecords:
  """Records of shuffled groups: element i = source[k * groups[i // k] + i % k] (infinite).

  Each record also carries "group_draw" = i // k, the group's visit number in this stream, so
  that its k tiles can share random augmentation draws (`RandomCropFlip`).
  """

  def __init__(self, source, groups: grain.MapDataset, k: int):
    self._source, self._groups, self._k = source, groups, k

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, i: int):
    record = self._source[self._k * int(self._groups[i // self._k]) + i % self._k]
    return {**record, "group_draw": i // self._k}


def _shard_shuffle_repeat(source, seed: int, shuffle: bool, shard_index: int,
                          shard_count: int, group_size: int = 1) -> grain.MapDataset:
  if group_size > 1:
    # Shard and shuffle whole groups, then expand each group to its k consecutive records.
    groups = _shard_shuffle_repeat(range(len(source) // group_size), seed, shuffle, shard_index,
                                   shard_count)
    return grain.MapDataset.source(_GroupRecords(source, groups, group_size)).seed(seed)
  ds = grain.MapDataset.source(source).seed(seed)
  ds = ds[shard_index::shard_count]
  if len(ds) == 0:
    raise ValueError(f"shard {shard_index} of {shard_count} is empty (source has {len(source)} "
                     "records)")
  if shuffle:
    ds = ds.shuffle()
  return ds.repeat(None)


def make_dataset(source, *, registry: SensorRegistry, batch_size: int, crop_size: int,
                 max_channels: int, seed: int, shuffle: bool = True, augment: bool = True,
                 drop_remainder: bool = True, shard_index: int = 0, shard_count: int = 1,
                 min_tile_size: int = DEFAULT_MIN_TILE_SIZE, crop_scale=(0.2, 0.5),
                 interpolation: Mapping[str, str] | None = None,
                 keep_index: bool = False, group_size: int | None = None,
                 band_dropout: float = 0.0, channel_mask: bool = False) -> grain.MapDataset:
  """Infinite training dataset of fixed-shape batches (see the module docstring for the batch).

  Args:
    source: random-access source (`__len__`, `__getitem__`) of sensor-tagged records, or a
      `sources.Mixture` of them: each part is sharded, shuffled and repeated on its own, then
      the parts are interleaved by weight.
    registry: the sensors; the same registry (and order) must be saved with the model.
    batch_size: per-host batch size B.
    crop_size: output tile size H = W.
    max_channels: Cmax, channels of the padded pixel tensor.
    seed: seeds the shuffle and the augmentation.
    shuffle: shuffle the shard, re-drawn each epoch.
    augment: random resized crop + flip; otherwise a centre crop.
    drop_remainder: only matters for finite sources; kept for symmetry with eval.
    shard_index, shard_count: this host's slice of the source.
    min_tile_size: smallest accepted tile side (one patch).
    crop_scale: area fraction range of the random crop (the paper: 0.2-0.5).
    interpolation: per-modality override of `augment.INTERPOLATION`.
    keep_index: also emit "index" int32 (B,), the source record index (tests, debugging).
    group_size: keep groups of this many consecutive records together (None: the source's
      `co_registered`, else 1); batch_size must then be a multiple of it.
    band_dropout: per-channel drop probability (`BandDropout`; 0: off).
    channel_mask: emit "channels" even without band dropout (the spectral patch embedding).

  Returns:
    A `grain.MapDataset` of batches; its length is effectively infinite (repeat forever).
  """
  _check_shard(shard_index, shard_count)
  k = int(getattr(source, "co_registered", 1) if group_size is None else group_size)
  if k > 1 and batch_size % k:
    raise ValueError(f"batch_size={batch_size} must be a multiple of the group size {k} "
                     "(data.co_registered) so that batches hold whole groups")
  if isinstance(source, Mixture):
    parts = [_shard_shuffle_repeat(s, seed + 1 + k, shuffle, shard_index, shard_count)
             for k, s in enumerate(source.sources)]
    # Mixing interleaves the repeated components by weight; the element -> component map is a
    # pure function of the position, so resume stays a step counter.
    ds = grain.MapDataset.mix(parts, list(source.weights)).seed(seed)
  else:
    ds = _shard_shuffle_repeat(source, seed, shuffle, shard_index, shard_count, k)
  ds = ds.map(ValidateAndNormalize(registry, min_tile_size))
  if augment:
    ds = ds.random_map(RandomCropFlip(registry, crop_size, crop_scale, interpolation,
                                      group_seed=seed * 65_537 + shard_index))
  else:
    ds = ds.map(CenterCrop(crop_size))
  if band_dropout > 0:
    ds = ds.random_map(BandDropout(band_dropout))
  ds = ds.map(ToExample(registry, max_channels, keep_index, channel_mask=channel_mask))
  return ds.batch(batch_size, drop_remainder=drop_remainder)


def make_eval_dataset(source, *, registry: SensorRegistry, batch_size: int, crop_size: int,
                      max_channels: int, drop_remainder: bool = False, shard_index: int = 0,
                      shard_count: int = 1, min_tile_size: int = DEFAULT_MIN_TILE_SIZE,
                      keep_index: bool = False, keep_clean: bool = False,
                      keep_label: bool = False, channel_mask: bool = False) -> grain.MapDataset:
  """One ordered pass over this shard, centre-cropped; the last batch may be smaller (B' <= B).

  keep_clean / keep_label add "clean" and "label" (module docstring) for evaluations."""
  _check_shard(shard_index, shard_count)
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  ds = ds.map(ValidateAndNormalize(registry, min_tile_size))
  ds = ds.map(CenterCrop(crop_size))
  ds = ds.map(ToExample(registry, max_channels, keep_index, keep_clean, keep_label,
                        channel_mask))
  return ds.batch(batch_size, drop_remainder=drop_remainder)


def make_iterator(dataset: grain.MapDataset, *, num_threads: int = 4,
                  prefetch_buffer_size: int = 8, num_workers: int = 0) -> grain.DatasetIterator:
  """Iterator over `dataset` with thread prefetch, optionally multiprocess workers.

  Grain's default read options prefetch 500 elements, and elements here are whole batches; the
  smaller default keeps start-up and memory small. With `num_workers > 0` the workers are
  spawned processes: the program's entry point needs an `if __name__ == "__main__":` guard.
  `get_state()` / `set_state()` resume exactly; see `state_to_json`.
  """
  read_options = grain.ReadOptions(num_threads=num_threads,
                                   prefetch_buffer_size=prefetch_buffer_size)
  ds = dataset.to_iter_dataset(read_options)
  if num_workers > 0:
    # Grain reads absl flags when it starts workers; a program that is not an absl app (pytest,
    # a notebook) would fail with UnparsedFlagAccessError. Flag defaults are what we want then.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(ds)


def state_to_json(state: Mapping[str, Any]) -> str:
  """Iterator state -> JSON text (for a checkpoint). Raises TypeError if not JSON-safe."""
  return json.dumps(state, sort_keys=True)


def state_from_json(text: str) -> dict[str, Any]:
  return json.loads(text)
