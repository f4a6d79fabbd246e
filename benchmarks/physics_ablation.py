r"""Physics + contrastive objective vs plain SimMIM: term decreases, SAR-L2 denoising, probe.

  python benchmarks/physics_ablation.py --root=/tmp/ringmoe_ablation [--train]

With --train, runs (one after the other) the two tiny pre-trainings of equal length:
  all    configs/pretrain_tiny.py                                (every term on)
  plain  configs/pretrain_tiny.py:physics=none,contrastive=off   (plain SimMIM)
each as `python -m ringmoe_jax.main ... --config.train.log_every=1` into ROOT/<name>; without it,
existing workdirs are read. Then prints, as JSON:
  * per term of the 'all' run: mean of the first 30 vs the last 30 logged steps (metrics.jsonl)
    and whether it decreased;
  * the SAR-L2 denoising ratios (tools/linear_probe.py) of both runs: < 1 means closer to the
    simulator's noise-free backscatter than the speckled input: `ratio` for the decoder's
    blind-spot prediction alone, `posterior_ratio` for its Bayesian combination with the masked
    pixel's own observation (objectives/speckle.py), `observation_only_ratio` for the same
    estimate without the decoder;
  * the linear-probe accuracy per modality of both runs (land-cover scene classes of unseen
    simulated scenes, frozen features).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

from ringmoe_jax.config.load import load_config

RUNS = {"all": "", "plain": "physics=none,contrastive=off"}
# Loss terms of the 'all' run whose decrease is checked (counts and temperature are not losses).
TERMS = ("loss", "loss_opt", "loss_ms", "loss_sar_l1", "loss_sar_l2", "sar_l1_complex_loss",
         "spectral_sam_loss", "spectral_index_loss", "contrastive_loss")

flags.DEFINE_string("root", "/tmp/ringmoe_ablation", "Parent of the run workdirs.")
flags.DEFINE_bool("train", False, "Run the pre-trainings first (else read existing workdirs).")
flags.DEFINE_integer("steps", 300, "Steps per run.")
flags.DEFINE_integer("window", 30, "Steps averaged at the start and at the end.")
flags.DEFINE_integer("probe_tiles", 1024, "Tiles for the probe (half train, half test).")


def read_metrics(workdir: str) -> list[dict]:
  """metrics.jsonl rows, one per step (the last write of a step wins, e.g. after a resume)."""
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      rows[r["step"]] = r
  return [rows[s] for s in sorted(rows)]


def term_decreases(rows: list[dict], terms, window: int) -> dict[str, dict]:
  out = {}
  for t in terms:
    vals = [r[t] for r in rows if t in r]
    if len(vals) < 2 * window:
      out[t] = {"error": f"only {len(vals)} logged values"}
      continue
    first = sum(vals[:window]) / window
    last = sum(vals[-window:]) / window
    out[t] = {"first": round(first, 4), "last": round(last, 4), "decreased": last < first}
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  result = {}
  for name, arg in RUNS.items():
    wd = os.path.join(f.root, name)
    spec = f"configs/pretrain_tiny.py:steps={f.steps}" + (f",{arg}" if arg else "")
    if f.train:
      subprocess.run([sys.executable, "-m", "ringmoe_jax.main", f"--config={spec}",
                      f"--workdir={wd}", "--config.train.log_every=1"], check=True)
    from ringmoe_jax.tools import linear_probe  # pylint: disable=import-outside-toplevel
    config = load_config(spec)
    ev = linear_probe.evaluate(config, wd, num_tiles=f.probe_tiles)
    result[name] = {"sar_l2_denoise": ev["sar_l2_denoise"], "linear_probe": ev["linear_probe"],
                    "step": ev["step"]}
    if name == "all":
      result[name]["term_decreases"] = term_decreases(read_metrics(wd), TERMS, f.window)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
