"""Exact resume (0 and 2 workers) and process sharding, over ArrayRecord shards mixed by
modality and over the simulator."""
import numpy as np
import pytest

from ringmoe_jax.data import pipeline, sources, tiles
from ringmoe_jax.data.simulator import SceneSimulator
from ringmoe_jax.sensors.registry import default_registry

REG = default_registry()
SENSORS = ("gaofen2_pms", "gaofen1_wfv", "gaofen3_slc", "gaofen3_amp")


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  """Simulated tiles of the four paper sensors written as tile shards (+ manifest)."""
  import json
  out = tmp_path_factory.mktemp("shards")
  sim = SceneSimulator(96, 32, sensors=SENSORS, seed=0)
  writers = {s: tiles.TileWriter(str(out), s, records_per_shard=10) for s in SENSORS}
  for i in range(len(sim)):
    r = sim[i]
    writers[r["sensor"]].write(tiles.encode_tile(r["sensor"], r["pixels"], r["valid"],
                                                 group=r["group"]))
  shards = [{"sensor": s, **sh} for s, w in writers.items() for sh in w.close()]
  (out / "manifest.json").write_text(json.dumps({"shards": shards, "sensors": []}))
  return str(out)


def _cfg(path, **kw):
  return {"source": "arrayrecord", "paths": [path], "sensors": SENSORS, **kw}


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_over_shards(shard_dir, workers):
  src = sources.make_source(_cfg(shard_dir, modality_weights="paper"), REG, seed=0)
  assert isinstance(src, sources.Mixture) and src.names == ("opt", "ms", "sar_l1", "sar_l2")
  ds = pipeline.make_dataset(src, registry=REG, batch_size=4, crop_size=16, max_channels=8,
                             seed=1)
  it = pipeline.make_iterator(ds, num_workers=workers)
  for _ in range(3):
    next(it)
  state = pipeline.state_from_json(pipeline.state_to_json(it.get_state()))
  after = [next(it) for _ in range(3)]
  it.close() if hasattr(it, "close") else None
  it2 = pipeline.make_iterator(ds, num_workers=workers)
  it2.set_state(state)
  resumed = [next(it2) for _ in range(3)]
  it2.close() if hasattr(it2, "close") else None
  assert all(_equal(a, b) for a, b in zip(after, resumed))
  # And both equal an uninterrupted run's batches 3..5.
  straight = [ds[i] for i in range(3, 6)]
  assert all(_equal(a, b) for a, b in zip(after, straight))


def test_paper_mixture_weights(shard_dir):
  src = sources.make_source(_cfg(shard_dir, modality_weights="paper"), REG, seed=0)
  assert src.weights == (0.7, 0.2, 0.05, 0.05)
  ds = pipeline.make_dataset(src, registry=REG, batch_size=50, crop_size=8, max_channels=8,
                             seed=0)
  mods = np.concatenate([ds[i]["modality"] for i in range(8)])
  share = np.bincount(mods, minlength=4) / len(mods)
  np.testing.assert_allclose(share, [0.7, 0.2, 0.05, 0.05], atol=0.02)


@pytest.mark.parametrize("kind", ["arrayrecord", "simulator"])
def test_two_process_shards_are_disjoint_and_cover(shard_dir, kind):
  if kind == "arrayrecord":
    src = sources.open_tiles(shard_dir)  # one source: shards slice records
  else:
    src = SceneSimulator(40, 16, sensors=SENSORS)
  n = len(src)
  seen = []
  for shard in range(2):
    ds = pipeline.make_dataset(src, registry=REG, batch_size=n // 2, crop_size=8,
                               max_channels=8, seed=0, shard_index=shard, shard_count=2,
                               keep_index=True)
    seen.append(set(ds[0]["index"].tolist()))  # one epoch of this shard
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(n))


def test_mixture_shards_are_disjoint_per_modality(shard_dir):
  src = sources.make_source(_cfg(shard_dir), REG, seed=0)
  per_shard = []
  for shard in range(2):
    parts = [pipeline._shard_shuffle_repeat(s, 0, True, shard, 2) for s in src.sources]  # pylint: disable=protected-access
    # One epoch of each part on this process: len(range(shard, n, 2)) records.
    per_shard.append([{p[i]["group"] for i in range(len(range(shard, len(s), 2)))}
                      for p, s in zip(parts, src.sources)])
  for m in range(len(src.sources)):
    a, b = per_shard[0][m], per_shard[1][m]
    assert not a & b
    assert len(a) + len(b) == len(src.sources[m])


def test_simulator_source_through_make_source():
  reg = default_registry()
  cfg = {"source": "simulator", "num_tiles": 64, "tile_size": 32, "sensors": SENSORS,
         "modality_weights": {"opt": 1, "ms": 1, "sar": 2}}
  src = sources.make_source(cfg, reg, seed=0)
  assert isinstance(src, SceneSimulator)
  b = pipeline.make_dataset(src, registry=reg, batch_size=16, crop_size=16, max_channels=8,
                            seed=0)[0]
  assert b["pixels"].shape == (16, 16, 16, 8) and b["raw"].dtype == np.float32
  with pytest.raises(ValueError, match="data.source='bogus'"):
    sources.make_source({"source": "bogus"}, reg, seed=0)
