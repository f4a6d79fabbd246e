r"""What does expert pruning keep? (issue 14) Each pruning method applied to one tiny pre-trained
RingMoE, its retention before and after a short recovery (continued pre-training) and after a
short distillation from the full model, against the full model and a dense model of the merged
size pre-trained from scratch; inference time and peak memory of every model in one process;
parameter counts of pretrain_14b after each step (abstract plan).

  python benchmarks/prune.py --root=/tmp/ringmoe_prune [--pretrain_steps=300]
      [--recovery_steps=30] [--probe_tiles=512] [--finetune_steps=30]
      [--finetune_records=128] [--finetune_models=full,KC,...] [--methods=full,modality=opt,...]

Runs in this process, one after the other:
1. configs/pretrain_tiny.py:steps=S (ROOT/pretrain; reused when finished).
2. For each method, `ringmoe_jax.prune` of that checkpoint (ROOT/<method>): full is the
   identity plan frequency=1.0 (every expert kept, the same fresh optimizer state as every
   pruned model), then modality=opt, frequency=0.5, merge=svd (KC), sum (KS), average (KA),
   shared_only, mcsmoe, each applied alone to the full model.
3. Recovery (the one trainer, no other training loop): the pruned workdir is copied to
   ROOT/<method>_rec and pre-training (the same SimMIM objective and data; modality=opt: its
   opt sensors only) continues there for N steps: `trainer.train` resumes the pruned
   checkpoint (step S, fresh AdamW state) to step S + N with warmup N/5 and a cosine over the
   N steps (optim.schedule_steps=N), the same for every method and for the full model. That
   is `python -m ringmoe_jax.main --config=configs/pruned.py:DIR --workdir=DIR
   --config.train.total_steps=S+N --config.optim.schedule_steps=N`.
4. Distillation (every method but full, ROOT/<method>_dist): the same N steps and optimizer
   from the same pruned checkpoint, loss = normalised-MSE feature matching of the four encoder
   stages against the full model at step S (tasks/distill.py), i.e.
   `--config=configs/pruned.py:DIR,distill` with the same flags.
5. Scratch: the KC model's config (a dense FFN of the normal width per block, the size of
   every merged model) pre-trained from random init for S + N steps with pretrain_tiny's
   schedule (ROOT/scratch): the same total steps as KC's pre-training + recovery.
6. Retention: `tools/linear_probe` (7 scene classes, unseen simulator tiles, one logistic
   regression per modality on frozen mean-pooled features of every stage; the same tiles for
   every model, a sub-model's own modalities only), before, after recovery and after
   distillation; and frozen fine-tuning (`configs/finetune_classification.py` and
   `finetune_segmentation.py`, `mode=frozen`, tiny, `--finetune_steps` steps, evaluated on
   `--finetune_records` held-out records: OA / mIoU) from the recovered checkpoint of each of
   `--finetune_models` (full, KC, KS, KA, shared_only, mcsmoe, scratch by default): the same
   steps, seed and data for every model; the encoder fields of the pruned config
   (prune_plan.json config_overrides) set on the fine-tuning config.
7. Inference: the jitted eval-mode encoder on one batch of 32 opt tiles, every model timed in
   interleaved rounds (median ms); peak memory = XLA's memory analysis of that program
   (arguments + outputs + temporaries, MiB).

Prints one row per model, then the last line
  headline: params_14b=<after modality>,<after frequency>,<after merge> kc/scratch=<ratio>
            kc/full=<ratio> speed_kc/full=<ratio>
params_14b: total parameters of pretrain_14b after modality=opt, frequency=0.25, merge=svd (B);
kc/scratch and kc/full: mean probe accuracy of KC after recovery / of the scratch dense model /
of the full model after the same recovery; speed: inference time of full / of KC. Whatever it
shows is reported. The line before it gives the same ratios after distillation and for the
frozen fine-tunes.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from absl import app, flags, logging

# This checkout's package, wherever another one is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = {"full": "frequency=1.0", "modality=opt": "modality=opt",
           "frequency=0.5": "frequency=0.5", "KC": "merge=svd", "KS": "merge=sum",
           "KA": "merge=average", "shared_only": "merge=shared_only", "mcsmoe": "merge=mcsmoe"}
PLAN_14B = "modality=opt,frequency=0.25,merge=svd"
FINETUNED = ("full", "KC", "KS", "KA", "shared_only", "mcsmoe", "scratch")
FROZEN_TASKS = {"cls": "classification", "seg": "segmentation"}  # column -> configs/finetune_*

flags.DEFINE_string("root", "/tmp/ringmoe_prune", "Parent of the run workdirs.")
flags.DEFINE_integer("pretrain_steps", 300, "Steps of the tiny pre-training (S).")
flags.DEFINE_integer("recovery_steps", 30,
                     "Steps of each recovery and each distillation (N); 0: none.")
flags.DEFINE_bool("distill", True, "Distil every pruned model from the full one (N steps).")
flags.DEFINE_integer("probe_tiles", 512, "Linear-probe tiles (all sensors; half train).")
flags.DEFINE_integer("finetune_steps", 30, "Steps of each frozen fine-tune; 0: none.")
flags.DEFINE_integer("finetune_records", 128, "Held-out records of each fine-tune's evaluation.")
flags.DEFINE_list("finetune_models", list(FINETUNED), "Models fine-tuned (frozen).")
flags.DEFINE_list("methods", list(METHODS), "Rows (full and KC are always run).")
flags.DEFINE_integer("timing_rounds", 7, "Interleaved timing rounds (median).")
flags.DEFINE_bool("scratch", True, "Pre-train the dense scratch model.")
flags.DEFINE_bool("quiet", True, "Hide the runs' own lines.")


def _run(fn, quiet: bool):
  if not quiet:
    return fn()
  with contextlib.redirect_stdout(io.StringIO()):
    return fn()


def only_modality(batches, m: int, batch_size: int = 32):
  """The tiles of modality `m` of `batches`, rebatched (a sub-model sees its own tiles only)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  keys = list(batches[0])
  rows = {k: np.concatenate([b[k][b["modality"] == m] for b in batches]) for k in keys}
  n = len(rows["modality"])
  return [{k: v[i:i + batch_size] for k, v in rows.items()} for i in range(0, n, batch_size)]


def frozen_finetune(load_config, train, task: str, init_dir: str, overrides: dict, steps: int,
                    eval_records: int, quiet: bool) -> float:
  """Main metric (OA / mIoU) of `configs/finetune_<task>.py:mode=frozen` (tiny) fine-tuned for
  `steps` from `init_dir`'s encoder; overrides: the pruned encoder's fields ({dotted: value},
  prune_plan.json's config_overrides), so that the encoder built matches the checkpoint's."""
  from ringmoe_jax.tasks import get_task  # pylint: disable=import-outside-toplevel
  c = load_config(f"finetune_{task}:mode=frozen,steps={steps}")
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = tuple(value) if isinstance(value, list) else value
  c.task.eval_records = eval_records
  c.train.update(eval_every=steps, checkpoint_every=steps)
  c.init_checkpoint = init_dir
  workdir = f"{init_dir}_ft_{task}"
  shutil.rmtree(workdir, ignore_errors=True)
  out = _run(lambda: train(c, workdir), quiet)
  return float(out["eval"][get_task(c).main_metric])


def encoder_program(model, batch):
  """(compiled eval-mode encoder forward, its args, peak MiB by XLA's memory analysis)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(model.encoder)

  def fwd(state, b):
    feats, _ = nnx.merge(graphdef, state)(b["pixels"], b["modality"], sensor=b["sensor"],
                                          mask=None, valid=b["valid"], train=False)
    return feats[-1]
  b = {k: jnp.asarray(batch[k]) for k in ("pixels", "modality", "sensor", "valid")}
  compiled = jax.jit(fwd).lower(state, b).compile()
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes) / 2**20
  return compiled, (state, b), peak


def main(argv):
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save and restore at INFO
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.join(tempfile.gettempdir(), "ringmoe_prune_cache"))
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  from ringmoe_jax.config.load import load_config  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.prune import run as prune_run  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.prune.plan import compute_plan, load_config_json  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.sensors.modalities import MODALITIES  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.tools import linear_probe as lp  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.trainer import train  # pylint: disable=import-outside-toplevel

  t_start = time.time()
  s, n = f.pretrain_steps, f.recovery_steps
  methods = [m for m in METHODS if m in set(f.methods) | {"full", "KC"}]
  unknown = set(f.methods) - set(METHODS)
  if unknown:
    raise app.UsageError(f"--methods: unknown {sorted(unknown)}; expected {list(METHODS)}")

  # Sizes of pretrain_14b after each step: shapes only.
  plan14 = compute_plan(load_config("pretrain_14b"), PLAN_14B, None, require_counts=False)
  sizes14 = [r["total_params"] for r in plan14.sizes]
  print("pretrain_14b " + " -> ".join(
      f"{r['step']}: total={r['total_params'] / 1e9:.3f}B active={r['active_params'] / 1e9:.3f}B"
      for r in plan14.sizes), flush=True)

  pre_dir = os.path.join(f.root, "pretrain")
  pre = load_config(f"pretrain_tiny:steps={s}")
  t0 = time.time()
  _run(lambda: train(pre, pre_dir), f.quiet)
  print(f"pretrain_tiny steps={s} in {time.time() - t0:.0f} s -> {pre_dir}", flush=True)
  probe_all = lp.probe_batches(pre, f.probe_tiles,
                               registry=lp.run_registry(pre, pre_dir, s))
  opt_batches = only_modality(probe_all, MODALITIES.index("opt"))

  def probe(config, workdir):
    model, _ = lp.load_trained_model(config, workdir)
    mods = config.model.get("modalities") or MODALITIES
    batches = probe_all if len(mods) == len(MODALITIES) else only_modality(
        probe_all, MODALITIES.index(mods[0]))
    if len(mods) not in (1, len(MODALITIES)):
      raise NotImplementedError("the benchmark probes one modality or all of them")
    out = lp.linear_probe(model, batches)
    return model, {"mean": out["mean_accuracy"], "opt": out["opt"]["accuracy"]}

  def recover(config, src_dir, rec_dir, steps, distill=False):
    """Continued pre-training (or distillation from the run src_dir was pruned from) of a copy
    of src_dir for `steps` -> (config, trainer result)."""
    shutil.rmtree(rec_dir, ignore_errors=True)
    shutil.copytree(src_dir, rec_dir)
    c = load_config(f"pruned:{rec_dir},distill" if distill else f"pruned:{rec_dir}")
    c.train.total_steps = s + steps
    c.optim.update(schedule_steps=steps, warmup_steps=max(1, steps // 5))
    out = _run(lambda: train(c, rec_dir), f.quiet)
    return c, out

  rows, models = {}, {}
  for name in methods:
    t0 = time.time()
    out_dir = os.path.join(f.root, name.replace("=", "_"))
    plan = _run(lambda name=name, out_dir=out_dir: prune_run.prune(
        pre_dir, METHODS[name], out_dir, overwrite=True), f.quiet)
    config = load_config_json(os.path.join(out_dir, "config.json"))
    model, before = probe(config, out_dir)
    models[name] = model
    row = {"plan": METHODS[name], "params": plan.sizes[-1]["total_params"],
           "active": plan.sizes[-1]["active_params"], "before": before}
    if n:
      c, res = recover(config, out_dir, out_dir + "_rec", n)
      _, row["after"] = probe(c, out_dir + "_rec")
      row["recovery_loss"] = [res["losses"][0], res["losses"][-1]]
      if f.distill and name != "full":  # full from itself: nothing to distil
        _, res = recover(config, out_dir, out_dir + "_dist", n, distill=True)
        _, row["distilled"] = probe(config, out_dir + "_dist")
        row["distill_loss"] = [res["losses"][0], res["losses"][-1]]
    row["seconds"] = time.time() - t0
    rows[name] = row
    print(f"{name}: {json.dumps(row)}", flush=True)

  if f.scratch:
    t0 = time.time()
    kc = load_config_json(os.path.join(f.root, "KC", "config.json"))
    kc.train.total_steps = s + n
    kc.optim.schedule_steps = pre.optim.get("schedule_steps", 0)
    kc.optim.warmup_steps = pre.optim.warmup_steps
    if kc.get("init_checkpoint"):
      kc.init_checkpoint = ""
    scratch_dir = os.path.join(f.root, "scratch")
    shutil.rmtree(scratch_dir, ignore_errors=True)
    _run(lambda: train(kc, scratch_dir), f.quiet)
    model, acc = probe(kc, scratch_dir)
    rows["scratch"] = {"plan": f"dense from scratch, {s + n} steps",
                       "params": rows["KC"]["params"], "active": rows["KC"]["active"],
                       "before": acc, "after": acc, "seconds": time.time() - t0}
    print(f"scratch: {json.dumps(rows['scratch'])}", flush=True)

  # Frozen fine-tunes from the recovered checkpoints (scratch: its own), same for every model.
  for name in [m for m in f.finetune_models if m in rows] if f.finetune_steps else []:
    t0 = time.time()
    init = os.path.join(f.root, "scratch" if name == "scratch" else name.replace("=", "_")
                        + ("_rec" if n else ""))
    with open(os.path.join(f.root, "KC" if name == "scratch" else name.replace("=", "_"),
                           prune_run.PLAN_FILE), encoding="utf-8") as fh:
      overrides = json.load(fh)["config_overrides"]
    rows[name]["frozen"] = {col: frozen_finetune(load_config, train, task, init, overrides,
                                                 f.finetune_steps, f.finetune_records, f.quiet)
                            for col, task in FROZEN_TASKS.items()}
    print(f"{name} frozen fine-tunes: {json.dumps(rows[name]['frozen'])} "
          f"({time.time() - t0:.0f} s)", flush=True)

  # Inference: every model (pre-recovery parameters; same shapes after it) on one opt batch.
  progs = {k: encoder_program(m, opt_batches[0]) for k, m in models.items()}
  times = {k: [] for k in progs}
  for k, (fn, args, _) in progs.items():
    jax.block_until_ready(fn(*args))  # warm
  for _ in range(f.timing_rounds):
    for k, (fn, args, _) in progs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[k].append(1e3 * (time.perf_counter() - t0))
  for k in progs:
    rows[k]["infer_ms"] = statistics.median(times[k])
    rows[k]["peak_mib"] = progs[k][2]

  with open(os.path.join(f.root, "prune.json"), "w", encoding="utf-8") as fh:
    json.dump({"rows": rows, "sizes_14b": plan14.sizes, "pretrain_steps": s,
               "recovery_steps": n, "probe_tiles": f.probe_tiles,
               "finetune_steps": f.finetune_steps, "finetune_records": f.finetune_records},
              fh, indent=1)

  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  print(f"{'model':14s} {'plan':22s} {'params':>8s} {'active':>8s} {'probe':>6s} {'opt':>6s} "
        f"{'+rec' + str(n):>7s} {'opt':>6s} {'+dist' + str(n):>7s} {'opt':>6s} "
        f"{'cls':>6s} {'seg':>6s} {'ms':>7s} {'MiB':>7s}", flush=True)
  for k, r in rows.items():
    after, dist, fz = r.get("after", {}), r.get("distilled", {}), r.get("frozen", {})
    print(f"{k:14s} {r['plan'][:22]:22s} {r['params']:8d} {r['active']:8d} "
          f"{fmt(r['before']['mean']):>6s} {fmt(r['before']['opt']):>6s} "
          f"{fmt(after.get('mean')):>7s} {fmt(after.get('opt')):>6s} "
          f"{fmt(dist.get('mean')):>7s} {fmt(dist.get('opt')):>6s} "
          f"{fmt(fz.get('cls')):>6s} {fmt(fz.get('seg')):>6s} "
          f"{r.get('infer_ms', float('nan')):7.2f} "
          f"{(r.get('peak_mib') or float('nan')):7.2f}", flush=True)
  key = "after" if n else "before"
  kc, full = rows["KC"][key]["mean"], rows["full"][key]["mean"]
  free = " ".join(f"{k}/full={rows[k]['before']['mean'] / rows['full']['before']['mean']:.3f}"
                  for k in rows if k not in ("full", "scratch"))
  print(f"training-free (probe mean / full's): {free}", flush=True)
  scratch = rows.get("scratch", {}).get("after", {}).get("mean")
  ratio = lambda a, b: fmt(a / b if a is not None and b else None)
  kc_dist = rows["KC"].get("distilled", {}).get("mean")
  fz = lambda k, col: rows.get(k, {}).get("frozen", {}).get(col)
  print(f"distilled: kc/scratch={ratio(kc_dist, scratch)} kc/full={ratio(kc_dist, full)}; "
        f"frozen fine-tunes: " + " ".join(
            f"{col}_kc/scratch={ratio(fz('KC', col), fz('scratch', col))} "
            f"{col}_kc/full={ratio(fz('KC', col), fz('full', col))}" for col in FROZEN_TASKS),
        flush=True)
  print(f"total {time.time() - t_start:.0f} s", flush=True)
  print(f"headline: params_14b={sizes14[1] / 1e9:.3f}B,{sizes14[2] / 1e9:.3f}B,"
        f"{sizes14[3] / 1e9:.3f}B kc/scratch={fmt(kc / scratch if scratch else None)} "
        f"kc/full={kc / full:.3f} "
        f"speed_kc/full={rows['full']['infer_ms'] / rows['KC']['infer_ms']:.3f}", flush=True)


if __name__ == "__main__":
  sys.exit(app.run(main))
