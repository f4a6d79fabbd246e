r"""Does pre-training help? Each downstream task fine-tuned from the tiny pre-training checkpoint
vs from scratch (same steps, seed, data), in full / frozen / adapter mode, on simulated scenes.

  python benchmarks/downstream.py --root=/tmp/ringmoe_downstream [--tasks=segmentation,height]
      [--modes=full,frozen,adapter] [--steps=100] [--pretrain_steps=300]
      [--detection_modes=full] [--detection_steps=300]

Tasks: classification, segmentation, change_detection, height (`--modes`), and
detection_opt (buildings in optical tiles, COCO mAP@50), detection_sar (ships in SAR amplitude
tiles, mAP@50) and tracking (a ship detector on Jilin-1 video frames + ByteTrack on held-out
simulated sequences, MOTA; `ringmoe_jax.track`), in `--detection_modes` (full only by default:
the headline is full fine-tuning).

Runs in this process, one after the other: configs/pretrain_tiny.py (ROOT/pretrain, reused when
finished), then for every task and mode `configs/finetune_<task>.py:mode=<m>,steps=<n>` with
and without `init_checkpoint` (ROOT/<task>_<mode>_<pretrained|scratch>), each evaluated on the
held-out scenes. Both runs of a pair compile the same program (one compile, cached). Prints one
table row per run (main metric and the others), then the last line
  headline: classification=<r> segmentation=<r> change_detection=<r> height=<r>
            detection_opt=<r> detection_sar=<r> tracking=<r>
with r = main metric pre-trained / from scratch in full mode (OA, mIoU, change-class F1,
delta<1.25, mAP@50, mAP@50, MOTA; MOTA can be <= 0, where the ratio means nothing: the line
before the headline gives both values of every pair). Whatever it shows is reported (README,
docs/MEASUREMENTS.md).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("root", "/tmp/ringmoe_downstream", "Parent of the run workdirs.")
flags.DEFINE_list("tasks", ["classification", "segmentation", "change_detection", "height",
                           "detection_opt", "detection_sar", "tracking"], "Tasks to run.")
flags.DEFINE_list("modes", ["full", "frozen", "adapter"], "Fine-tuning modes.")
flags.DEFINE_list("detection_modes", ["full"], "Modes of detection_opt / _sar / tracking.")
flags.DEFINE_integer("steps", 100, "Fine-tuning steps per run (the issue-12 tasks).")
flags.DEFINE_integer("detection_steps", 300,
                     "Fine-tuning steps per detection_opt / _sar / tracking run: the detector "
                     "reaches mAP@50 0.30 at step 100 of 300 from scratch, 0.76 at 300.")
flags.DEFINE_integer("pretrain_steps", 300, "Steps of the tiny pre-training.")
flags.DEFINE_bool("quiet", True, "Hide the runs' own step lines.")

HEADLINE = ("classification", "segmentation", "change_detection", "height", "detection_opt",
            "detection_sar", "tracking")
# Benchmark task -> (config, variant args, main metric reported).
DETECTION = {"detection_opt": ("detection", "target=buildings", "map50"),
             "detection_sar": ("detection", "target=ships", "map50"),
             "tracking": ("detection", "target=ships_video", "mota")}


def _run(fn, quiet: bool):
  if not quiet:
    return fn()
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    return fn()


def main(argv):
  del argv
  f = flags.FLAGS
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.join(tempfile.gettempdir(), "ringmoe_downstream_cache"))
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  from ringmoe_jax.config.load import load_config  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.tasks import get_task  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.track import track  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.trainer import train  # pylint: disable=import-outside-toplevel

  t_start = time.time()
  pre_dir = os.path.join(f.root, "pretrain")
  pre = load_config(f"pretrain_tiny:steps={f.pretrain_steps}")
  t0 = time.time()
  _run(lambda: train(pre, pre_dir), f.quiet)
  print(f"pretrain_tiny steps={f.pretrain_steps} in {time.time() - t0:.0f} s -> {pre_dir}",
        flush=True)
  rows = []
  print(f"{'task':18s} {'mode':8s} {'init':10s} {'main':>18s} {'seconds':>8s}  others", flush=True)
  for task_name in f.tasks:
    config_name, extra, main_metric = DETECTION.get(task_name, (task_name, "", None))
    for mode in (f.detection_modes if task_name in DETECTION else f.modes):
      for init in ("pretrained", "scratch"):
        steps = f.detection_steps if task_name in DETECTION else f.steps
        c = load_config(f"finetune_{config_name}:mode={mode},steps={steps}"
                        + (f",{extra}" if extra else ""))
        c.train.eval_every = steps
        if init == "pretrained":
          c.init_checkpoint = pre_dir
        workdir = os.path.join(f.root, f"{task_name}_{mode}_{init}")
        t0 = time.time()
        out = _run(lambda c=c, w=workdir: train(c, w), f.quiet)
        m = out["eval"]
        if task_name == "tracking":
          m = {**{f"det_{k}": v for k, v in m.items()},
               **_run(lambda c=c, w=workdir: track(c, w, os.path.join(w, "tracks")), f.quiet)}
        main_metric = main_metric or get_task(c).main_metric
        row = {"task": task_name, "mode": mode, "init": init, "main_metric": main_metric,
               "main": m[main_metric], "seconds": time.time() - t0,
               "metrics": {k: v for k, v in m.items() if "/" not in k}}
        rows.append(row)
        others = " ".join(f"{k}={v:.4f}" for k, v in sorted(row["metrics"].items())
                          if k != main_metric)
        print(f"{task_name:18s} {mode:8s} {init:10s} {main_metric:>8s}={row['main']:.4f} "
              f"{row['seconds']:8.0f}  {others}", flush=True)
  with open(os.path.join(f.root, "downstream.json"), "w", encoding="utf-8") as fh:
    json.dump(rows, fh, indent=1)
  ratios, pairs = {}, []
  for t in HEADLINE:
    got = {r["init"]: r["main"] for r in rows if r["task"] == t and r["mode"] == "full"}
    if len(got) == 2:
      ratios[t] = got["pretrained"] / got["scratch"] if got["scratch"] else float("inf")
      pairs.append(f"{t}={got['pretrained']:.4f}/{got['scratch']:.4f}")
  print(f"total {time.time() - t_start:.0f} s", flush=True)
  print("pre-trained/scratch: " + " ".join(pairs), flush=True)
  print("headline: " + " ".join(f"{t}={ratios[t]:.3f}" if t in ratios else f"{t}=n/a"
                                for t in HEADLINE), flush=True)


if __name__ == "__main__":
  sys.exit(app.run(main))
