r"""The config of a pruned workdir (the output of `python -m ringmoe_jax.prune`), for the
commands that take `--config=FILE.py`:

  python -m ringmoe_jax.tools.linear_probe --config=configs/pruned.py:DIR --workdir=DIR
  python -m ringmoe_jax.evaluate --config=configs/pruned.py:DIR --workdir=DIR   # a fine-tuning run
  python -m ringmoe_jax.main --config=configs/pruned.py:DIR --workdir=DIR \
      --config.train.total_steps=<step + N> --config.optim.schedule_steps=N   # continue training
  python -m ringmoe_jax.main --config=configs/pruned.py:DIR,distill --workdir=DIR \
      --config.train.total_steps=<step + N> --config.optim.schedule_steps=N   # distil N steps
  python -m ringmoe_jax.tools.inspect --config=DIR/config.json

ARG: the pruned workdir (its config.json, the smaller model's config as the transform wrote it)
or a config.json itself, then optional `,key=value` arguments:
  distill        knowledge distillation from the model the workdir was pruned from
                 (tasks/distill.py: normalised-MSE feature matching of the four encoder stages
                 on the pre-training data; the teacher frozen, not checkpointed). The teacher is
                 the source run recorded by the transform (prune_plan.json 'from', else the
                 checkpoint meta's pruned['from'], else the teacher of an earlier distillation
                 of DIR, so a resume finds it); `--config.distill.teacher=WORKDIR` (and
                 `--config.distill.teacher_step=S`, -1 = latest) names another one.
  simmim=W       plus W x the pre-training objective (default 0: features only).
Without `distill` the `distill` section is there with teacher='' (no distillation), so that
`--config.distill.teacher=WORKDIR` alone also selects it.

Fine-tuning from a pruned pre-training run takes `configs/finetune_*.py` with
`--config.init_checkpoint=DIR` plus the encoder fields of DIR/prune_plan.json's config_overrides
instead.
"""
import json
import os

import ml_collections

from ringmoe_jax.config.args import parse_arg
from ringmoe_jax.errors import UserError


def _from_text(text: str) -> tuple[str, int]:
  """'WORKDIR step S' (the transform's record of its source) -> (WORKDIR, S)."""
  path, sep, step = str(text).rpartition(" step ")
  if not sep or not step.isdigit():
    return str(text), -1
  return path, int(step)


def recorded_teacher(workdir: str) -> tuple[str, int]:
  """(source workdir, step) the pruned `workdir` was made from (module docstring's order)."""
  plan_file = os.path.join(workdir, "prune_plan.json")
  if os.path.isfile(plan_file):
    with open(plan_file, encoding="utf-8") as f:
      recorded = json.load(f).get("from")
    if recorded:
      return _from_text(recorded)
  from ringmoe_jax.train.checkpoint import open_run  # pylint: disable=import-outside-toplevel
  ckpt, _, meta = open_run(workdir, flag="configs/pruned.py", expected="ringmoe_jax.prune")
  ckpt.close()
  if meta.get("pruned", {}).get("from"):
    return _from_text(meta["pruned"]["from"])
  d = meta.get("config", {}).get("distill") or {}
  if d.get("teacher"):
    return str(d["teacher"]), int(d.get("teacher_step", -1))
  raise UserError(f"configs/pruned.py:{workdir},distill: the workdir records no source run to "
                  "distil from; pass --config.distill.teacher=WORKDIR")


def get_config(arg=None):
  if not arg:
    raise UserError("configs/pruned.py needs the pruned workdir: --config=configs/pruned.py:DIR")
  where, _, rest = str(arg).partition(",")
  args = parse_arg(rest, distill=False, simmim=0.0)
  path = where if where.endswith(".json") else os.path.join(where, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"configs/pruned.py:{where}: no {path} (expected the --output of "
                    "python -m ringmoe_jax.prune)")
  from ringmoe_jax.prune.plan import load_config_json  # pylint: disable=import-outside-toplevel
  config = load_config_json(path)
  teacher, step = "", -1
  if args["distill"]:
    teacher, step = recorded_teacher(os.path.dirname(os.path.abspath(path)))
  config.distill = ml_collections.ConfigDict(dict(
      teacher=teacher, teacher_step=step, weight=1.0, simmim_weight=float(args["simmim"])))
  return config
