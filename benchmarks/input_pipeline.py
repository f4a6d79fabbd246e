r"""Input pipeline throughput against what the tiny training step consumes.

  python benchmarks/input_pipeline.py [--seconds=4] [--workers=0,2]

Measures tiles/s of the full training pipeline (validate, normalise, random resized crop + flip,
pad, batch) for the scene simulator and for ArrayRecord tile shards (written first from the
simulator), with 0 and 2 worker processes; then the tiles/s of the tiny pre-training step
(configs/pretrain_tiny.py: model, optimizer, sharded state and jitted step as in
`ringmoe_jax/train/trainer.py`, on the same host). Prints one line per measurement and, last,
`headline: pipeline/step=<ratio>`: the best pipeline setting's tiles/s over the step's tiles/s
(>= 1 means the step never waits for input; the target is >= 3).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ringmoe_jax.data import pipeline, sources, tiles  # noqa: E402
from ringmoe_jax.data.simulator import SceneSimulator  # noqa: E402
from ringmoe_jax.sensors.modalities import MODALITIES  # noqa: E402
from ringmoe_jax.sensors.registry import default_registry  # noqa: E402


def tiny_config():
  spec = importlib.util.spec_from_file_location("pretrain_tiny",
                                                os.path.join(REPO, "configs", "pretrain_tiny.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def write_shards(sim, directory: str) -> str:
  names = sorted({s for s in sim._by_name})  # pylint: disable=protected-access
  writers = {s: tiles.TileWriter(directory, s, records_per_shard=256) for s in names}
  for i in range(len(sim)):
    r = sim[i]
    writers[r["sensor"]].write(tiles.encode_tile(r["sensor"], r["pixels"], r["valid"],
                                                 group=r["group"]))
  shards = [{"sensor": s, **sh} for s, w in writers.items() for sh in w.close()]
  with open(os.path.join(directory, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump({"shards": shards, "sensors": []}, f)
  return directory


def pipeline_rate(source, registry, cfg, workers: int, seconds: float) -> float:
  max_channels = max(int(cfg.model.in_channels[m]) for m in MODALITIES)
  batch = cfg.data.batch_size
  ds = pipeline.make_dataset(source, registry=registry, batch_size=batch,
                             crop_size=cfg.model.img_size, max_channels=max_channels, seed=0)
  it = pipeline.make_iterator(ds, num_workers=workers)
  next(it)  # start-up (worker spawn) is not throughput
  for _ in range(2):
    next(it)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(it)
    n += batch
  rate = n / (time.perf_counter() - start)
  if hasattr(it, "close"):
    it.close()
  return rate


def step_rate(cfg, registry, seconds: float) -> float:
  import jax  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel.mesh import make_mesh  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel.sharding import DEFAULT_RULES, batch_sharding  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.state import StateBuilder  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.step import make_train_step  # pylint: disable=import-outside-toplevel
  mesh = make_mesh(cfg.mesh)
  tx = make_optimizer(cfg.optim, cfg.data.batch_size, cfg.train.total_steps)
  builder = StateBuilder.from_config(cfg, tx, mesh, tuple(cfg.get("sharding_rules", DEFAULT_RULES)))
  train_step = make_train_step(builder, cfg)
  state = builder.init()
  sim = SceneSimulator(256, cfg.data.tile_size, sensors=tuple(cfg.data.sensors),
                       registry=registry)
  max_channels = max(int(cfg.model.in_channels[m]) for m in MODALITIES)
  ds = pipeline.make_dataset(sim, registry=registry, batch_size=cfg.data.batch_size,
                             crop_size=cfg.model.img_size, max_channels=max_channels, seed=0)
  sh = {k: batch_sharding(mesh, n) for k, n in
        (("pixels", 4), ("raw", 4), ("valid", 3), ("modality", 1), ("sensor", 1))}
  batches = [{k: jax.device_put(np.asarray(ds[i][k]), sh[k]) for k in sh} for i in range(4)]
  with jax.set_mesh(mesh):
    for i in range(2):  # compile + warm up
      state, metrics = train_step(state, batches[i])
    jax.block_until_ready(metrics)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      state, metrics = train_step(state, batches[n % 4])
      jax.block_until_ready(metrics)
      n += 1
  return n * cfg.data.batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seconds", type=float, default=4.0)
  parser.add_argument("--workers", default="0,2")
  args = parser.parse_args()
  cfg = tiny_config()
  registry = default_registry()
  sensors = tuple(cfg.data.sensors)
  print(f"config: pretrain_tiny batch={cfg.data.batch_size} tile={cfg.data.tile_size} "
        f"crop={cfg.model.img_size} sensors={','.join(sensors)} cpus={os.cpu_count()}",
        flush=True)
  sim = SceneSimulator(2048, cfg.data.tile_size, sensors=sensors, registry=registry, seed=0)
  rates = {}
  with tempfile.TemporaryDirectory() as tmp:
    shard_dir = write_shards(SceneSimulator(512, cfg.data.tile_size, sensors=sensors,
                                            registry=registry, seed=1), tmp)
    shard_src = sources.make_source({"source": "arrayrecord", "paths": [shard_dir],
                                     "sensors": sensors}, registry, seed=0)
    for workers in [int(w) for w in args.workers.split(",")]:
      for name, src in (("simulator", sim), ("arrayrecord", shard_src)):
        rates[(name, workers)] = r = pipeline_rate(src, registry, cfg, workers, args.seconds)
        print(f"pipeline source={name} workers={workers} tiles/s={r:.0f}", flush=True)
  step = step_rate(cfg, registry, args.seconds * 2)
  print(f"train_step pretrain_tiny tiles/s={step:.0f}", flush=True)
  best = max(rates, key=rates.get)
  print(f"best pipeline: source={best[0]} workers={best[1]}")
  print(f"headline: pipeline/step={rates[best] / step:.2f}")


if __name__ == "__main__":
  main()
