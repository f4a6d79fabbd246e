r"""Band robustness of the patch embeddings: linear-probe accuracy on MS tiles with all bands vs
one or two bands missing at evaluation, model.patch_embed='spectral' (missing bands masked) vs
'fixed' (missing bands zero-filled, the only option a fixed kernel has).

  python benchmarks/band_robustness.py --root=/tmp/band_rob [--steps=150] [--variants=...]
      [--seed=0]

Each variant pre-trains configs/pretrain_tiny.py (plain SimMIM: physics=none, contrastive=off,
so the comparison is about the embedding) for --steps steps, then encodes unseen Gaofen-1 WFV
tiles (4 bands; 7 scene classes, tools/linear_probe's simulator seed) with every band set:
all 4, each of the 4 with one band missing, each of the 6 with two missing. Two probes per
band set (multinomial logistic regression on pooled multi-level features, first half of the
tiles trains, second half tests):
  full->missing  trained on all-band features, tested with the bands missing (a band lost at
                 prediction time, the head unchanged);
  missing        trained and tested with the same bands missing (a band subset throughout
                 fine-tuning).
Accuracies are averaged over the band sets with the same number missing. Variants:
  spectral         patch_embed='spectral', data.band_dropout=0.2 (its default)
  fixed            patch_embed='fixed', no band dropout (the paper)
  fixed_dropout    patch_embed='fixed', band dropout 0.2 with zero-filled dropped bands
  spectral_nodrop  patch_embed='spectral', no band dropout

Measured (2-core CPU shared with other jobs, --steps=120 --tiles=384, one seed; 192 test tiles;
spectral 291 s, fixed 178 s including the probes):
  variant   missing  full->missing  missing (probe refit)
  spectral  0        0.776          0.776
  spectral  1        0.723          0.746
  spectral  2        0.625          0.703
  fixed     0        0.740          0.740
  fixed     1        0.646          0.742
  fixed     2        0.543          0.716
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import numpy as np

VARIANTS = {
    "spectral": dict(patch_embed="spectral", band_dropout=0.2),
    "fixed": dict(patch_embed="fixed", band_dropout=0.0),
    "fixed_dropout": dict(patch_embed="fixed", band_dropout=0.2),
    "spectral_nodrop": dict(patch_embed="spectral", band_dropout=0.0),
}
PROBE_SENSOR = "gaofen1_wfv"


def variant_config(name: str, steps: int, seed: int = 0):
  from ringmoe_jax.config.load import load_config  # pylint: disable=import-outside-toplevel
  c = load_config(f"pretrain_tiny:steps={steps},physics=none,contrastive=off")
  c.model.patch_embed = VARIANTS[name]["patch_embed"]
  c.data.band_dropout = VARIANTS[name]["band_dropout"]
  c.seed = seed  # init, masks, band dropout, data order; the probe tiles stay the same
  c.train.update(checkpoint_every=steps, log_every=max(steps // 5, 1), async_checkpoint=False)
  return c


def probe_tiles(config, num_tiles: int):
  """Eval batches of unseen Gaofen-1 WFV tiles with "label" and "channels"."""
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.data import pipeline
  from ringmoe_jax.data.simulator import SceneSimulator
  from ringmoe_jax.objectives import sensor_tables
  from ringmoe_jax.tools.linear_probe import PROBE_SEED
  from ringmoe_jax.train.model import input_channels
  reg = sensor_tables.training_registry(config)
  src = SceneSimulator(num_tiles, int(config.data.tile_size), sensors=(PROBE_SENSOR,),
                       registry=reg, seed=PROBE_SEED, nodata_fraction=0.0)
  ds = pipeline.make_eval_dataset(src, registry=reg, batch_size=64,
                                  crop_size=int(config.model.img_size),
                                  max_channels=input_channels(config, reg), keep_label=True,
                                  channel_mask=True)
  return [ds[i] for i in range(len(ds))], reg.get(PROBE_SENSOR).num_channels


def drop_bands(batches, missing, spectral: bool):
  """The batches with `missing` bands zero-filled; 'spectral' also marks them absent."""
  out = []
  for b in batches:
    b = dict(b)
    b["pixels"] = b["pixels"].copy()
    b["pixels"][..., list(missing)] = 0.0
    ch = b["channels"].copy()
    ch[:, list(missing)] = 0.0
    if spectral:
      b["channels"] = ch
    else:
      b.pop("channels")
    out.append(b)
  return out


def evaluate(model, config, num_tiles: int) -> dict:
  from ringmoe_jax.tools import linear_probe as lp  # pylint: disable=import-outside-toplevel
  batches, c = probe_tiles(config, num_tiles)
  spectral = config.model.patch_embed == "spectral"
  feats = {}
  for k in (0, 1, 2):
    for missing in itertools.combinations(range(c), k):
      x, y, _ = lp.features(model, drop_bands(batches, missing, spectral))
      feats[missing] = x
  n = len(y)
  tr, te = np.arange(n // 2), np.arange(n // 2, n)
  classes = int(y.max()) + 1
  res = {}
  for k in (0, 1, 2):
    full_to, same = [], []
    for missing in itertools.combinations(range(c), k):
      x = feats[missing]
      pred = lp.logistic_regression(feats[()][tr], y[tr], x[te], classes)
      full_to.append(float(np.mean(pred == y[te])))
      pred = lp.logistic_regression(x[tr], y[tr], x[te], classes)
      same.append(float(np.mean(pred == y[te])))
    res[f"missing_{k}"] = {"full_to_missing": float(np.mean(full_to)),
                           "missing": float(np.mean(same)), "band_sets": len(full_to)}
  res["tiles"] = n
  return res


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--root", required=True)
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--tiles", type=int, default=512)
  ap.add_argument("--variants", default="spectral,fixed")
  ap.add_argument("--seed", type=int, default=0, help="config.seed of the pre-training runs")
  args = ap.parse_args()
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.tools.linear_probe import load_trained_model
  from ringmoe_jax.train import trainer
  results = {}
  for name in args.variants.split(","):
    c = variant_config(name, args.steps, args.seed)
    wd = os.path.join(args.root, name)
    t0 = time.time()
    r = trainer.train(c, wd)
    model, _ = load_trained_model(c, wd)
    res = evaluate(model, c, args.tiles)
    res.update(first_loss=r["losses"][0] if r["losses"] else None,
               last_loss=r["losses"][-1] if r["losses"] else None,
               seconds=round(time.time() - t0, 1))
    results[name] = res
    print(name, json.dumps(res), flush=True)
  print("\nvariant           missing  full->missing  missing(probe refit)")
  for name, res in results.items():
    for k in (0, 1, 2):
      r = res[f"missing_{k}"]
      print(f"{name:17s} {k:7d}  {r['full_to_missing']:13.3f}  {r['missing']:20.3f}")
  with open(os.path.join(args.root, "band_robustness.json"), "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
