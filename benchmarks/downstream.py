r"""Does pre-training help? Each downstream task fine-tuned from the tiny pre-training checkpoint
vs from scratch (same steps, seed, data), in full / frozen / adapter mode, on simulated scenes.

  python benchmarks/downstream.py --root=/tmp/ringmoe_downstream [--tasks=segmentation,height]
      [--modes=full,frozen,adapter] [--steps=100] [--pretrain_steps=300]

Runs in this process, one after the other: configs/pretrain_tiny.py (ROOT/pretrain, reused when
finished), then for every task and mode `configs/finetune_<task>.py:mode=<m>,steps=<n>` with
and without `init_checkpoint` (ROOT/<task>_<mode>_<pretrained|scratch>), each evaluated on the
held-out scenes. Both runs of a pair compile the same program (one compile, cached). Prints one
table row per run (main metric and the others), then the last line
  headline: classification=<r> segmentation=<r> change_detection=<r> height=<r>
with r = main metric pre-trained / from scratch in full mode (OA, mIoU, change-class F1,
delta<1.25). Whatever it shows is reported (README, docs/MEASUREMENTS.md).
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
flags.DEFINE_list("tasks", ["classification", "segmentation", "change_detection", "height"],
                  "Tasks to run.")
flags.DEFINE_list("modes", ["full", "frozen", "adapter"], "Fine-tuning modes.")
flags.DEFINE_integer("steps", 100, "Fine-tuning steps per run.")
flags.DEFINE_integer("pretrain_steps", 300, "Steps of the tiny pre-training.")
flags.DEFINE_bool("quiet", True, "Hide the runs' own step lines.")

HEADLINE = ("classification", "segmentation", "change_detection", "height")


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
    for mode in f.modes:
      for init in ("pretrained", "scratch"):
        c = load_config(f"finetune_{task_name}:mode={mode},steps={f.steps}")
        c.train.eval_every = f.steps
        if init == "pretrained":
          c.init_checkpoint = pre_dir
        workdir = os.path.join(f.root, f"{task_name}_{mode}_{init}")
        t0 = time.time()
        out = _run(lambda c=c, w=workdir: train(c, w), f.quiet)
        task = get_task(c)
        m = out["eval"]
        row = {"task": task_name, "mode": mode, "init": init, "main_metric": task.main_metric,
               "main": m[task.main_metric], "seconds": time.time() - t0,
               "metrics": {k: v for k, v in m.items() if "/" not in k}}
        rows.append(row)
        others = " ".join(f"{k}={v:.4f}" for k, v in sorted(row["metrics"].items())
                          if k != task.main_metric)
        print(f"{task_name:18s} {mode:8s} {init:10s} {task.main_metric:>8s}={row['main']:.4f} "
              f"{row['seconds']:8.0f}  {others}", flush=True)
  with open(os.path.join(f.root, "downstream.json"), "w", encoding="utf-8") as fh:
    json.dump(rows, fh, indent=1)
  ratios = {}
  for t in HEADLINE:
    got = {r["init"]: r["main"] for r in rows if r["task"] == t and r["mode"] == "full"}
    if len(got) == 2:
      ratios[t] = got["pretrained"] / got["scratch"] if got["scratch"] else float("inf")
  print(f"total {time.time() - t_start:.0f} s", flush=True)
  print("headline: " + " ".join(f"{t}={ratios[t]:.3f}" if t in ratios else f"{t}=n/a"
                                for t in HEADLINE), flush=True)


if __name__ == "__main__":
  sys.exit(app.run(main))
