"""Tile shards as a tensorflow-datasets data source, without TensorFlow.

`RingmoeTiles` is a `GeneratorBasedBuilder` with `file_format="array_record"` and only
`tfds.features.Tensor` features (no Image/Text encoding, which would need TensorFlow). It re-packs
the tiles of an ingestion output directory (`manifest.json` + shards) into TFDS's own
ArrayRecord files, after which

  tfds.data_source("ringmoe_tiles", split="train", data_dir=DATA_DIR)

(with this module imported, so the builder is registered) returns a random-access source that
Grain reads; `TfdsTileSource` turns its examples back into pipeline records (bytes -> str).

Features: sensor, crs, time, group: scalar str ("" = none); pixels (H, W, C) float32 and
valid (H, W) bool, zlib-encoded; transform (6,) float64 (NaN = none). Labels and extras are not
carried (their keys differ per record; TFDS needs one fixed feature set).
"""
from __future__ import annotations

import os
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ringmoe_jax.data import sources as sources_lib


class RingmoeTiles(tfds.core.GeneratorBasedBuilder):
  """Tiles of one ingestion output directory (`tiles_dir`), one "train" split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Tile record format v1."}

  # tfds 4.9.10's default `code_path` imports `importlib_resources`, which it does not declare
  # as a dependency (it comes with TensorFlow); this file's path is what it would compute.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def __init__(self, *, tiles_dir: str | None = None, **kwargs):
    self._tiles_dir = tiles_dir
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    t = tfds.features.Tensor
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "sensor": t(shape=(), dtype=np.str_),
        "pixels": t(shape=(None, None, None), dtype=np.float32, encoding="zlib"),
        "valid": t(shape=(None, None), dtype=np.bool_, encoding="zlib"),
        "crs": t(shape=(), dtype=np.str_),
        "transform": t(shape=(6,), dtype=np.float64),
        "time": t(shape=(), dtype=np.str_),
        "group": t(shape=(), dtype=np.str_),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    if not self._tiles_dir:
      raise ValueError("RingmoeTiles needs tiles_dir= (an ingestion output directory) to build")
    return {"train": self._generate_examples(self._tiles_dir)}

  def _generate_examples(self, tiles_dir: str):
    source = sources_lib.open_tiles(tiles_dir)
    for i in range(len(source)):
      r = source[i]
      t = r.get("transform")
      yield i, {"sensor": r["sensor"], "pixels": np.asarray(r["pixels"], np.float32),
                "valid": np.asarray(r["valid"], bool), "crs": r.get("crs") or "",
                "transform": np.full(6, np.nan) if t is None else np.asarray(t, np.float64),
                "time": r.get("time") or "", "group": r.get("group") or ""}


def build(tiles_dir: str, data_dir: str) -> RingmoeTiles:
  """Builds (once) the TFDS copy of `tiles_dir` under `data_dir`; returns the builder."""
  builder = RingmoeTiles(tiles_dir=os.fspath(tiles_dir), data_dir=os.fspath(data_dir))
  builder.download_and_prepare()
  return builder


def _text(v: Any) -> str | None:
  v = v.decode() if isinstance(v, bytes) else str(v)
  return v or None


class TfdsTileSource:
  """Random-access source: a TFDS array_record data source -> pipeline records."""

  def __init__(self, data_source):
    self._ds = data_source

  def __len__(self) -> int:
    return len(self._ds)

  def __repr__(self) -> str:
    return f"TfdsTileSource({self._ds!r})"

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self._ds[int(index)]
    t = np.asarray(ex["transform"])
    return {"sensor": _text(ex["sensor"]), "pixels": np.asarray(ex["pixels"]),
            "valid": np.asarray(ex["valid"], bool), "crs": _text(ex["crs"]),
            "transform": None if np.isnan(t).any() else t.tolist(),
            "time": _text(ex["time"]), "group": _text(ex["group"]), "index": int(index)}
