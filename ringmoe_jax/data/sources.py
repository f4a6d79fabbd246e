"""Data sources by name: the trainer's one entry point (`make_source`).

  data.source = "synthetic"    the foundation's per-tile generator (`synthetic.SyntheticTiles`)
  data.source = "simulator"    co-registered multi-modal scenes (`simulator.SceneSimulator`)
  data.source = "arrayrecord"  tile shards written by `python -m ringmoe_jax.data.ingest`;
                               data.paths = output directories (with manifest.json) or shard
                               files (their directory's manifest names their sensor); an empty
                               data.sensors trains on all the sensors of the shards

Mixing. `modality_weights` (optional config key) weights the modalities: None = the sensors'
own weights (`data.weights`, default equal per sensor) for the generators, equal per modality
for shards; "paper" = RingMoE's 70% optical / 20% MS / 10% SAR (split equally over the SAR
modalities in use); or a mapping {modality: weight}. Shards are mixed with one source per
modality (`Mixture`), which `pipeline.make_dataset` shuffles, shards and repeats separately,
then interleaves by weight (`grain.MapDataset.mix`), so the mixture holds exactly regardless of
how many tiles each modality has.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Mapping, Sequence

from ringmoe_jax.data.tiles import SHARD_SUFFIX, TileFormatError, TileRecordSource
from ringmoe_jax.errors import UserError
from ringmoe_jax.sensors.modalities import MODALITIES
from ringmoe_jax.sensors.registry import Sensor, SensorRegistry

MANIFEST = "manifest.json"
PAPER_MODALITY_WEIGHTS = {"opt": 0.7, "ms": 0.2, "sar": 0.1}


@dataclasses.dataclass(frozen=True)
class Mixture:
  """Several random-access sources drawn by weight; `names` label them (e.g. modalities)."""
  sources: tuple[Any, ...]
  weights: tuple[float, ...]
  names: tuple[str, ...]

  def __post_init__(self):
    if not (len(self.sources) == len(self.weights) == len(self.names)) or not self.sources:
      raise ValueError("Mixture needs equally many (>= 1) sources, weights and names")
    if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
      raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {self.weights}")

  def __len__(self) -> int:
    return sum(len(s) for s in self.sources)


def read_manifest(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise TileFormatError(f"{path}: no manifest (is {directory} an ingestion output?)") from None
  except json.JSONDecodeError as e:
    raise TileFormatError(f"{path}: not valid JSON: {e}") from None


def _shards_of(paths: Sequence[str]) -> list[tuple[str, int | None, str | None, dict | None]]:
  """(shard path, expected records, sensor, sensor dict) for directories, globs and files."""
  out = []
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  for p in paths:
    p = os.fspath(p)
    if os.path.isdir(p):
      m = read_manifest(p)
      defs = {s["name"]: s for s in m.get("sensors", [])}
      for shard in m["shards"]:
        out.append((os.path.join(p, shard["path"]), int(shard["records"]), shard["sensor"],
                    defs.get(shard["sensor"])))
    else:
      for q in sorted(glob.glob(p)) or [p]:
        out.append(_listed_shard(q))
  if not out:
    raise TileFormatError(f"no tile shards in {list(paths)}")
  return out


def _listed_shard(path: str) -> tuple[str, int | None, str | None, dict | None]:
  """A shard file named directly: its record count, sensor and sensor definition from the
  manifest beside it when that lists it (so a derived or user sensor is known), else unknown."""
  directory = os.path.dirname(os.path.abspath(path))
  if os.path.isfile(os.path.join(directory, MANIFEST)):
    m = read_manifest(directory)
    defs = {s["name"]: s for s in m.get("sensors", [])}
    for shard in m.get("shards", []):
      if os.path.abspath(os.path.join(directory, shard["path"])) == os.path.abspath(path):
        return path, int(shard["records"]), shard["sensor"], defs.get(shard["sensor"])
  return path, None, None, None


def _sensor_of(path: str, name: str | None) -> str:
  """The shard's sensor: from its manifest, or for a bare shard its first record's tag."""
  return name if name is not None else TileRecordSource([path])[0]["sensor"]


def open_tiles(paths: str | Sequence[str]) -> TileRecordSource:
  """One source over all shards of `paths` (ingestion directories, shard files or globs)."""
  shards = _shards_of(paths)
  expected = [n for _, n, _, _ in shards]
  return TileRecordSource([s for s, _, _, _ in shards],
                          None if any(n is None for n in expected) else expected)


def register_manifest_sensors(paths: str | Sequence[str], registry: SensorRegistry) -> list[str]:
  """Registers sensors defined in manifests (user or band-subset sensors) that are missing."""
  added = []
  for _, _, name, d in _shards_of(paths):
    if name and d and name not in registry:
      registry.register(Sensor.from_dict(d))
      added.append(name)
  return added


def sensors_in(paths: str | Sequence[str], registry: SensorRegistry) -> tuple[str, ...]:
  """The sensors of the shards in `paths` (first-seen order), after registering the ones their
  manifests define (`register_manifest_sensors`): the training sensors when data.sensors is
  empty."""
  register_manifest_sensors(paths, registry)
  found: dict[str, None] = {}
  for path, _, name, _ in _shards_of(paths):
    found.setdefault(_sensor_of(path, name))
  return tuple(found)


def _modality_weights(spec: Any, present: Sequence[str]) -> dict[str, float]:
  """Weight per modality in `present` from None / "paper" / {modality or "sar": weight}."""
  if spec is None:
    return {m: 1.0 for m in present}
  if isinstance(spec, str):
    if spec != "paper":
      raise UserError(f"data.modality_weights={spec!r}: expected 'paper', a mapping or None")
    spec = PAPER_MODALITY_WEIGHTS
  spec = dict(spec)
  sar = [m for m in present if m.startswith("sar")]
  out = {}
  for m in present:
    if m in spec:
      out[m] = float(spec[m])
    elif m.startswith("sar") and "sar" in spec:
      out[m] = float(spec["sar"]) / len(sar)
    else:
      raise UserError(f"data.modality_weights {spec} has no weight for modality {m!r}")
  return out


def sensor_weights(sensors: Sequence[str], registry: SensorRegistry, weights=None,
                   modality_weights=None) -> tuple[float, ...] | None:
  """Per-sensor weights for the generators: explicit `weights`, or modality weights split
  equally over each modality's sensors, or None (equal)."""
  if modality_weights is None:
    return None if weights is None else tuple(float(w) for w in weights)
  mods = [registry.get(s).modality for s in sensors]
  per_mod = _modality_weights(modality_weights, sorted(set(mods), key=MODALITIES.index))
  return tuple(per_mod[m] / mods.count(m) for m in mods)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  if isinstance(cfg, Mapping):
    return cfg.get(key, default)
  try:
    return cfg.get(key, default)  # ml_collections.ConfigDict
  except AttributeError:
    return getattr(cfg, key, default)


def make_source(data_cfg: Any, registry: SensorRegistry, seed: int):
  """The source named by `data_cfg.source` (see the module docstring).

  Args:
    data_cfg: config with source, sensors, weights, num_tiles, tile_size, and for shards
      `paths`; optional `modality_weights`, `co_registered` (simulator).
    registry: the training registry; sensors defined in shard manifests are added to it (so they
      are saved with the checkpoint).
    seed: base seed of the generators.

  Returns:
    A random-access source, or a `Mixture` of them (accepted by `pipeline.make_dataset`).
  """
  kind = _get(data_cfg, "source", "synthetic")
  sensors = tuple(_get(data_cfg, "sensors", None) or registry.names())  # empty: all found
  modality_weights = _get(data_cfg, "modality_weights", None)
  if kind in ("synthetic", "simulator"):
    weights = sensor_weights(sensors, registry, _get(data_cfg, "weights", None), modality_weights)
    kwargs = dict(num_tiles=_get(data_cfg, "num_tiles"), tile_size=_get(data_cfg, "tile_size"),
                  sensors=sensors, weights=weights, registry=registry, seed=seed)
    if kind == "synthetic":
      from ringmoe_jax.data.synthetic import SyntheticTiles  # pylint: disable=import-outside-toplevel
      return SyntheticTiles(**kwargs)
    from ringmoe_jax.data.simulator import SceneSimulator  # pylint: disable=import-outside-toplevel
    return SceneSimulator(co_registered=int(_get(data_cfg, "co_registered", 1) or 1), **kwargs)
  if kind != "arrayrecord":
    raise UserError(f"data.source={kind!r}: expected 'synthetic', 'simulator' or 'arrayrecord'")
  paths = _get(data_cfg, "paths", None)
  if not paths:
    raise UserError("data.source='arrayrecord' needs data.paths (ingestion output directories "
                    "or shard files)")
  register_manifest_sensors(paths, registry)
  by_modality: dict[str, list[tuple[str, int | None]]] = {}
  found = set()
  for path, n, name, _ in _shards_of(paths):
    name = _sensor_of(path, name)
    found.add(name)
    if name in sensors:
      by_modality.setdefault(registry.get(name).modality, []).append((path, n))
  if not by_modality:
    raise UserError(f"data.paths {list(paths)} hold sensors {sorted(found)} but data.sensors "
                    f"is {list(sensors)}: none in common (leave data.sensors empty to train on "
                    "the sensors of the shards)")
  present = sorted(by_modality, key=MODALITIES.index)
  weights = _modality_weights(modality_weights, present)
  srcs = []
  for m in present:
    expected = [n for _, n in by_modality[m]]
    srcs.append(TileRecordSource([p for p, _ in by_modality[m]],
                                 None if any(n is None for n in expected) else expected))
  return Mixture(tuple(srcs), tuple(weights[m] for m in present), tuple(present))


__all__ = ["Mixture", "make_source", "open_tiles", "read_manifest", "register_manifest_sensors",
           "sensor_weights", "sensors_in", "SHARD_SUFFIX", "PAPER_MODALITY_WEIGHTS"]
