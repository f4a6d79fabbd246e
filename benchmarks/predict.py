r"""Whole-scene prediction: tiles/s against the plain forward pass, and memory against scene size.

  python benchmarks/predict.py [--config=configs/finetune_segmentation.py:fusion=off]
      [--workdir=FINETUNED_RUN] [--size=1024] [--rss_small=2048] [--rss_large=8192]
      [--batch_size=0 --overlap=16 --root=/tmp/ringmoe_predict_bench]

1. A run to predict with: `--workdir`, or (default) a checkpoint of the config's initial state
   written in the trainer's layout under ROOT/run (the weights do not change the speed).
2. Throughput, one process: a generated `--size`^2 scene (the config's first sensor, random
   physical values, deflate-tiled GeoTIFF); `predict_scene` end to end (scan, windows read
   with rasterio, normalisation, the model, blending, row flushes, COG conversion) after a
   warm-up on a small scene (compiled once) vs the same jitted program on the same windows as
   ready device batches (block_until_ready); round-robin, best of `--rounds` each. Both
   counted in tiles (windows).
3. Memory: peak RSS (ru_maxrss) of a fresh process predicting a `--rss_small`^2 and a
   `--rss_large`^2 scene (generated here first, so generation does not count).

Last line: `headline: predict/forward=<r> rss_<large>/rss_<small>=<r>`.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_config(spec: str, overrides: list[str]):
  from ringmoe_jax.config.load import load_config  # pylint: disable=import-outside-toplevel
  name = spec.removeprefix("configs/").replace(".py", "")
  c = load_config(name)
  for item in overrides:
    key, value = item.split("=", 1)
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    try:
      node[last] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[last] = value
  return c


def make_run(config, workdir: str) -> None:
  """A checkpoint of the config's initial state (trainer layout: state, data, meta)."""
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel.mesh import make_mesh
  from ringmoe_jax.parallel.sharding import rules_for
  from ringmoe_jax.tasks import get_task
  from ringmoe_jax.train.checkpoint import Checkpointer
  from ringmoe_jax.train.trainer import build_registry, programs
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  registry = build_registry(config)
  task = get_task(config, registry)
  setup, _ = programs(config, task, make_mesh(config.mesh), rules_for(config))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, async_save=False)
  ckpt.save(0, setup.builder.init(), {"step": 0},
            {"config": json.loads(config.to_json_best_effort()), "task": task.name,
             "sensors": json.loads(registry.to_json())})
  ckpt.close()


def write_scene(path: str, size: int, sensor, seed: int = 0) -> str:
  """A size^2 scene of the sensor's bands (physical values around its mean), in strips."""
  import rasterio  # pylint: disable=import-outside-toplevel
  from rasterio.transform import from_origin  # pylint: disable=import-outside-toplevel
  if os.path.exists(path):
    return path
  rng = np.random.default_rng(seed)
  mean = np.asarray(sensor.mean, np.float32)[:, None, None]
  std = np.asarray(sensor.std, np.float32)[:, None, None]
  prof = dict(driver="GTiff", height=size, width=size, count=sensor.num_channels,
              dtype="float32", crs="EPSG:32633", transform=from_origin(500000, 5000000, 1, 1),
              nodata=None, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
  rows = 256
  with rasterio.open(path + ".tmp", "w", **prof) as dst:
    for y in range(0, size, rows):
      n = min(rows, size - y)
      block = mean + std * rng.standard_normal((sensor.num_channels, n, size), np.float32)
      dst.write(np.abs(block) + 1e-3, window=rasterio.windows.Window(0, y, size, n))
  os.replace(path + ".tmp", path)
  return path


def _child(args) -> None:
  """Predicts one scene in this fresh process; prints `rss_mb=<peak>`."""
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.predict.predictor import WindowPredictor
  from ringmoe_jax.predict.scene import predict_scene
  config = _load_config(args.config, args.set)
  p = WindowPredictor.from_workdir(config, args.workdir, batch_size=args.batch_size or None)
  r = predict_scene(p, [args.child_scene], args.child_scene + ".out.tif", overlap=args.overlap,
                    progress=False)
  os.remove(args.child_scene + ".out.tif")
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux
  print(f"tiles={r['tiles']} tiles_per_s={r['tiles_per_s']:.2f} rss_mb={rss:.1f}", flush=True)


def _rss(args, scene: str) -> float:
  cmd = [sys.executable, os.path.abspath(__file__), f"--config={args.config}",
         f"--workdir={args.workdir}", f"--child_scene={scene}", f"--overlap={args.overlap}",
         f"--batch_size={args.batch_size}"] + [f"--set={s}" for s in args.set]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  if out.returncode:
    raise SystemExit(f"child failed on {scene}:\n{out.stderr[-3000:]}")
  line = out.stdout.strip().splitlines()[-1]
  print(f"  {os.path.basename(scene)}: {line}", flush=True)
  return float(line.split("rss_mb=")[1])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/finetune_segmentation.py:fusion=off")
  ap.add_argument("--set", action="append", default=[], help="config override a.b=value")
  ap.add_argument("--workdir", default="")
  ap.add_argument("--root", default="/tmp/ringmoe_predict_bench")
  ap.add_argument("--size", type=int, default=1024, help="throughput scene (pixels square)")
  ap.add_argument("--rss_small", type=int, default=2048)
  ap.add_argument("--rss_large", type=int, default=8192)
  ap.add_argument("--batch_size", type=int, default=0)
  ap.add_argument("--overlap", type=int, default=16)
  ap.add_argument("--rounds", type=int, default=3, help="timed rounds, best of each")
  ap.add_argument("--child_scene", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child_scene:
    _child(args)
    return
  # pylint: disable=import-outside-toplevel
  import jax
  from ringmoe_jax.predict import windows as win
  from ringmoe_jax.predict.predictor import WindowPredictor
  from ringmoe_jax.predict.raster_io import SceneReader
  from ringmoe_jax.predict.scene import predict_scene
  from ringmoe_jax.parallel.sharding import batch_sharding
  os.makedirs(args.root, exist_ok=True)
  config = _load_config(args.config, args.set)
  t0 = time.time()
  if not args.workdir:
    args.workdir = os.path.join(args.root, "run")
    make_run(config, args.workdir)
  p = WindowPredictor.from_workdir(config, args.workdir, batch_size=args.batch_size or None)
  sensor = p.sensors[0]
  print(f"model ready in {time.time() - t0:.0f} s: {args.config} img_size={p.size} "
        f"batch={p.batch_size} devices={jax.device_count()} ({jax.devices()[0].platform})",
        flush=True)
  if len(p.sensors) != 1:
    raise SystemExit("benchmarks/predict.py takes a one-view config")
  warm = write_scene(os.path.join(args.root, f"scene_{2 * p.size}.tif"), 2 * p.size, sensor)
  scene = write_scene(os.path.join(args.root, f"scene_{args.size}.tif"), args.size, sensor)
  out = os.path.join(args.root, "out.tif")
  predict_scene(p, [warm], out, overlap=args.overlap, progress=False)      # compile

  # The same program on the same windows, as ready device batches.
  reader = SceneReader(scene, sensor)
  grid = win.grid(reader.height, reader.width, p.size, args.overlap)
  batches = []
  for i in range(0, len(grid), p.batch_size):
    local, _ = p.examples([[reader.read(y, x, p.size)] for y, x in grid[i:i + p.batch_size]])
    with jax.set_mesh(p.mesh):
      batches.append({k: jax.device_put(v, batch_sharding(p.mesh, v.ndim))
                      for k, v in local.items()})
  reader.close()

  def forward() -> float:
    start = time.perf_counter()
    with jax.set_mesh(p.mesh):
      outs = [p._fn(p.params, b) for b in batches]  # pylint: disable=protected-access
    jax.block_until_ready(outs)
    return time.perf_counter() - start

  # Round-robin, best of `rounds` each: a burst of load on the shared machine hits both alike.
  forward()
  best, predict_best, r = float("inf"), float("inf"), None
  for _ in range(args.rounds):
    r = predict_scene(p, [scene], out, overlap=args.overlap, progress=False)
    predict_best = min(predict_best, r["seconds"])
    best = min(best, forward())
  predict_tps = r["tiles"] / predict_best
  forward_tps = len(grid) / best
  print(f"throughput {args.size}^2: {len(grid)} tiles; predict {predict_tps:.2f} tiles/s "
        f"({predict_best:.2f} s end to end), forward {forward_tps:.2f} tiles/s (best of "
        f"{args.rounds})", flush=True)

  small = write_scene(os.path.join(args.root, f"scene_{args.rss_small}.tif"), args.rss_small,
                      sensor, 1)
  large = write_scene(os.path.join(args.root, f"scene_{args.rss_large}.tif"), args.rss_large,
                      sensor, 2)
  print("peak RSS (fresh process each):", flush=True)
  rss_small, rss_large = _rss(args, small), _rss(args, large)
  print(f"predict/forward={predict_tps / forward_tps:.3f} rss_{args.rss_small}="
        f"{rss_small:.0f}MB rss_{args.rss_large}={rss_large:.0f}MB", flush=True)
  print(f"headline: predict/forward={predict_tps / forward_tps:.3f} "
        f"rss_{args.rss_large}/rss_{args.rss_small}={rss_large / rss_small:.3f}", flush=True)


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  main()
