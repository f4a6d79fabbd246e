"""Checkpoint in, smaller checkpoint out: read a run's latest checkpoint, plan, transform, write.

The output is a workdir like the trainer's: DIR/checkpoints (Orbax, the format
`train/checkpoint.Checkpointer` restores: state {step, params, opt_state, routing_counts,
counters}, the data-iterator item, meta {config, task, sensors, modalities, routing_counts, ...}
as trainer.save writes it, plus meta['pruned']), DIR/config.json (the smaller model's config)
and DIR/prune_plan.json. It is written into DIR.tmp-<pid> and renamed to DIR at the end, so a
transform killed half-way leaves no DIR. The optimizer state is fresh (the moments of removed
or merged experts mean nothing for the new model); the step is the source's.

The fine-tuning / evaluation config of the smaller model needs its encoder fields:
prune_plan.json['config_overrides'] (e.g. moe.num_collab=1), which `init_from`'s shape check
names when they are missing.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ringmoe_jax.errors import UserError
from ringmoe_jax.prune import calibrate, transforms
from ringmoe_jax.prune.plan import (PrunePlan, compute_plan, load_config_json, parse_plan,
                                    pruned_config)

PLAN_FILE = "prune_plan.json"
CONFIG_FILE = "config.json"


class Source:
  """A run's latest (or `step`) finished checkpoint: meta, config, registry, counts."""

  def __init__(self, workdir: str, step: int | None = None):
    from ringmoe_jax.train import init_from  # pylint: disable=import-outside-toplevel
    from ringmoe_jax.train.checkpoint import open_run  # pylint: disable=import-outside-toplevel
    self.workdir = os.path.abspath(workdir)
    self.ckpt, self.step, self.meta = open_run(workdir, flag="--checkpoint", step=step)
    if "config" not in self.meta:
      raise UserError(f"--checkpoint={workdir}: the checkpoint meta has no config")
    self.config = load_config_json(self.meta["config"])
    self.registry = init_from.saved_registry(self.meta)
    self.counts = self.meta.get("routing_counts")

  def task(self, config=None):
    from ringmoe_jax.tasks import get_task  # pylint: disable=import-outside-toplevel
    return get_task(self.config if config is None else config, self.registry)

  def restore_params(self) -> dict[str, Any]:
    """The saved params as numpy arrays (Orbax partial restore: no optimizer state read)."""
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from ringmoe_jax.train.setup import abstract_task_model  # pylint: disable=import-outside-toplevel
    model = abstract_task_model(self.config, self.task())
    params = nnx.state(model, nnx.Param).to_pure_dict()
    item = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)}
    args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = self.ckpt.manager.restore(self.step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)))
    return restored.state["params"]

  def data_item(self):
    """The data-iterator JSON item, as saved."""
    return self.ckpt.manager.restore(self.step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore())).data

  def close(self) -> None:
    self.ckpt.close()


def _local_mesh():
  from ringmoe_jax.parallel.mesh import make_mesh  # pylint: disable=import-outside-toplevel
  return make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1)))


def build_state(config, task, params, counts, step: int):
  """The trainer's state tree of `config`'s model holding `params` (fresh optimizer state)."""
  from ringmoe_jax.parallel.sharding import rules_for  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.setup import make_builder  # pylint: disable=import-outside-toplevel
  mesh = _local_mesh()
  builder = make_builder(config, task, mesh, rules_for(config)).builder
  want = builder.abstract["params"]
  got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), params)
  w_flat = {jax.tree_util.keystr(p): (tuple(v.shape), v.dtype)
            for p, v in jax.tree_util.tree_leaves_with_path(want)}
  g_flat = {jax.tree_util.keystr(p): (tuple(v.shape), v.dtype)
            for p, v in jax.tree_util.tree_leaves_with_path(got)}
  if w_flat != g_flat:  # a bug of the transform, never the user's
    diff = sorted(set(w_flat.items()) ^ set(g_flat.items()))[:4]
    raise AssertionError(f"pruned params do not match the pruned config's model: {diff}")
  # Same tree as the model's pure dict, leaves placed in the builder's shardings.
  params = jax.tree.map(lambda _, x: x, want, params)
  init = jax.jit(builder._init_from, out_shardings=builder.shardings)  # pylint: disable=protected-access
  with jax.set_mesh(mesh):
    state = init(jax.device_put(params, builder.shardings["params"]))
  state["step"] = jax.device_put(np.asarray(step, np.int32), builder.shardings["step"])
  for k, v in counts.items():
    state["routing_counts"][k] = jax.device_put(np.asarray(v, np.float32),
                                                builder.shardings["routing_counts"][k])
  return state


def write_atomically(output: str, overwrite: bool, write: Callable[[str], None]) -> None:
  """write(tmp) into OUTPUT.tmp-<pid>, then rename it to OUTPUT (an existing one replaced only
  with overwrite, after the new one is complete)."""
  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise UserError(f"--output={output} exists; pass --overwrite to replace it")
  tmp = f"{output}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    write(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = None
  if os.path.exists(output):
    old = f"{output}.old-{os.getpid()}"
    os.rename(output, old)
  os.rename(tmp, output)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def check_output(output: str | None, overwrite: bool) -> str:
  if not output:
    raise UserError("--output=DIR is required (the pruned workdir to write)")
  if os.path.exists(output) and not overwrite:
    raise UserError(f"--output={os.path.abspath(output)} exists; pass --overwrite to replace it")
  return os.path.abspath(output)


def prune(checkpoint: str, plan_text: str, output: str, *, overwrite: bool = False,
          step: int | None = None, calibration: str | None = None,
          calibration_batches: int = 4, log: Callable[[str], None] = print) -> PrunePlan:
  """The transform end to end (module docstring); returns the plan it applied.

  calibration: 'simulator' counts the routing of `calibration_batches` batches of simulator
  tiles (calibrate.py) and plans with those counts instead of the checkpoint's saved ones."""
  from ringmoe_jax.config.validate import validate  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  parse_plan(plan_text)  # bad plans fail before anything is read
  calibrate.check_calibration(calibration, calibration_batches)
  output = check_output(output, overwrite)
  src = Source(checkpoint, step)
  try:
    counts, params = src.counts, None
    if calibration:
      params = src.restore_params()
      counts = calibrate.simulator_counts(src.config, src.registry, src.task(), params,
                                          calibration_batches)
      log(f"calibration={calibration}: routing counts of {calibration_batches} batches of "
          "unseen simulator tiles (eval mode) replace the checkpoint's")
    plan = compute_plan(src.config, plan_text, counts, registry=src.registry)
    log(plan.describe())
    config = pruned_config(src.config, plan.config_overrides, src.registry)
    validate(config)
    params = transforms.apply_plan(src.restore_params() if params is None else params, plan)
    counts = transforms.apply_counts(counts, plan)
    state = build_state(config, src.task(config), params, counts, src.step)
    data = src.data_item()
    meta = dict(src.meta)
    meta.update(config=json.loads(config.to_json_best_effort()),
                routing_counts={k: np.asarray(v).tolist() for k, v in counts.items()},
                pruned={"plan": plan.plan, "from": f"{src.workdir} step {src.step}",
                        "config_overrides": plan.config_overrides,
                        "calibration": calibration and f"{calibration}:{calibration_batches}"})

    def write(tmp: str) -> None:
      ckpt = Checkpointer(os.path.join(tmp, "checkpoints"), max_to_keep=1, async_save=False)
      ckpt.save(src.step, state, data, meta, force=True)
      ckpt.close()
      with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
      with open(os.path.join(tmp, PLAN_FILE), "w") as f:
        f.write(plan.to_json())

    write_atomically(output, overwrite, write)
  finally:
    src.close()
  log(f"wrote {output} (step {src.step}): {plan.sizes[-1]['total_params']} parameters, "
      f"{plan.sizes[-1]['active_params']} active")
  return plan


def plan_for_config(spec: str, plan_text: str) -> PrunePlan:
  """The abstract plan of a config file (configs/NAME.py[:ARG] or a config.json): sizes after
  each step, without a checkpoint (frequency: the first experts stand in for the most used)."""
  if spec.endswith(".json"):
    config = load_config_json(spec)
  else:
    from ringmoe_jax.config.load import load_config  # pylint: disable=import-outside-toplevel
    config = load_config(spec)
  return compute_plan(config, plan_text, None, require_counts=False)
