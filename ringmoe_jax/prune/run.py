"""Checkpoint in, smaller checkpoint out: read a run's latest checkpoint, plan, transform, write.

The output is a workdir like the trainer's: DIR/checkpoints (Orbax, the format
`train/checkpoint.Checkpointer` restores: state {step, params, opt_state, routing_counts,
counters}, the data-iterator item, meta {config, task, sensors, modalities, routing_counts, ...}
as trainer.save writes it, plus meta['pruned']), DIR/config.json (the smaller model's config)
and DIR/prune_plan.json. It is written into DIR.tmp-<pid> and renamed to DIR at the end, so a
transform killed half-way leaves no DIR. The optimizer state is fresh (the moments of removed
or merged experts mean nothing for the new model); the step is the source's.

Block by block: the parameters outside the encoder blocks are restored and transformed first
(they stay in memory: patch embeddings, merges, norms, decoders / head), then each block is
restored alone (Orbax partial restore; a scanned pair's stacked leaves one row, i.e. one layer,
at a time: `_RowReader`), transformed and written into its rows of the output arrays
(`_StreamWriter`, a TypeHandler of Orbax's save that pulls the blocks in order), so that host
memory holds about one block plus the output's non-block part, never the whole model. The fresh
optimizer state is written the same way (its leaves depend on shapes only, checked). Not
streamed: `--calibration`, which runs the whole model. `build_state` is the one-shot reference
(tests/test_prune_io.py: the streamed checkpoint equals it bit for bit).

The fine-tuning / evaluation config of the smaller model needs its encoder fields:
prune_plan.json['config_overrides'] (e.g. moe.num_collab=1), which `init_from`'s shape check
names when they are missing.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import shutil
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorstore as ts

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

  def read(self, leaves: dict[tuple, int | None]) -> dict[tuple, np.ndarray]:
    """{param path: row or None} -> {param path: saved array, or its row `row` of axis 0}.

    Orbax partial restore of those leaves alone (paths: keys of the source model's pure dict);
    a row is read through tensorstore without the rest of its array (`_RowReader`)."""
    item: dict = {}
    args: dict = {}
    for path, row in leaves.items():
      _set(item, ("params",) + path, 0)
      _set(args, ("params",) + path, _RowArgs(restore_type=_Rows, row=row))
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=_READ_REGISTRY)
    with ocp.Checkpointer(handler) as ckptr:
      got = ckptr.restore(os.path.join(self.ckpt.directory, str(self.step), "state"),
                          args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                      partial_restore=True))
    return {path: _get(got["params"], path) for path in leaves}

  def data_item(self):
    """The data-iterator JSON item, as saved."""
    return self.ckpt.manager.restore(self.step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore())).data

  def close(self) -> None:
    self.ckpt.close()


# ------------------------------------------------------------------ Orbax rows in and out


def _set(tree: dict, path: tuple, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree, path: tuple):
  for k in path:
    tree = tree[transforms._key(tree, k)]  # pylint: disable=protected-access
  return tree


def _flat(tree, prefix: tuple = ()) -> dict[tuple, Any]:
  """A nested dict's leaves {path: leaf}."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, prefix + (k,)))
  return out


def _name(path) -> str:
  """A canonical name of a key path (jax key entries or raw keys; ints and their strings
  agree, as Orbax stores list indices as strings)."""
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        k = getattr(k, attr)
        break
    parts.append(str(k))
  return "/".join(parts)


class _Rows:
  """The restore_type of a leaf read by `_RowReader`."""


@dataclasses.dataclass
class _RowArgs(ocp.RestoreArgs):
  row: int | None = None  # a row of axis 0 (one layer of a scanned pair), None: the whole array


class _RowReader(ocp.type_handlers.NumpyHandler):
  """Reads a saved array, or only its row `row` (tensorstore reads just the chunks the row
  touches: a trainer checkpoint's chunks are its shards)."""

  async def deserialize(self, infos, args=None):
    async def one(info, arg):
      await info.await_path_creation()
      spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=info.is_ocdbt_checkpoint)
      t = await ts.open(ts.Spec(spec), open=True, context=info.ts_context)
      return await (t if arg.row is None else t[arg.row]).read()
    return await asyncio.gather(*(one(i, a) for i, a in zip(infos, args)))


class _Lazy:
  """A leaf of the output state that `_Stream` produces block by block (rows of a scanned
  pair's stacked array, or a tail block's whole array)."""

  def __init__(self, name: str, shape, dtype, stream: "_Stream"):
    self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)
    self.size, self.ndim, self.stream = math.prod(self.shape), len(self.shape), stream


class _StreamWriter(ocp.type_handlers.NumpyHandler):
  """Orbax's save of every `_Lazy` leaf: opens their arrays (one chunk per row of a stacked
  leaf, so a row is written without reading the others back), then lets the stream write the
  blocks one after another. The saved leaves are ordinary 'np.ndarray' ones (typestr)."""

  async def serialize(self, values, infos, args=None):
    args = args or [ocp.SaveArgs()] * len(values)
    stores = {}
    for v, info, arg in zip(values, infos, args):
      await info.await_path_creation()
      spec = ocp.type_handlers.get_json_tspec_write(
          info, use_ocdbt=info.is_ocdbt_checkpoint, global_shape=v.shape, local_shape=v.shape,
          dtype=v.dtype, arg=arg,
          process_index=jax.process_index() if info.is_ocdbt_checkpoint else None)
      if v.name in v.stream.stacked:
        spec["metadata"]["chunks"] = [1, *v.shape[1:]]
      stores[v.name] = await ts.open(ts.Spec(spec), create=True, open=True,
                                     context=info.ts_context)
    if values:
      await values[0].stream.write(stores)
    return []


# jax.Array's handler is never used here; without it Orbax warns on every save and restore.
_ARRAY = (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False))
_READ_REGISTRY = ocp.type_handlers.create_type_handler_registry((_Rows, _RowReader()), _ARRAY)
_WRITE_REGISTRY = ocp.type_handlers.create_type_handler_registry(
    (np.ndarray, ocp.type_handlers.NumpyHandler()), (_Lazy, _StreamWriter()), _ARRAY)


class _Stream:
  """The output state's block leaves, block after block: groups[i]() -> {leaf name: (row or
  None, array)}; every row of every `_Lazy` leaf must be written exactly once."""

  def __init__(self, groups: list[Callable[[], dict[str, tuple[int | None, np.ndarray]]]],
               stacked: set[str]):
    self.groups, self.stacked = groups, stacked

  async def write(self, stores: dict[str, Any]) -> None:
    written: dict[str, list] = {name: [] for name in stores}
    for group in self.groups:
      writes = []
      for name, (row, arr) in group().items():
        t = stores[name]
        want = t.shape[1:] if row is not None else t.shape
        if tuple(arr.shape) != tuple(want) or arr.dtype != t.dtype.numpy_dtype:  # a bug
          raise AssertionError(f"{name}: {arr.shape} {arr.dtype}, expected {want} {t.dtype}")
        writes.append((t if row is None else t[row]).write(arr))
        written[name].append(row)
      # A block's writes together (one OCDBT commit for them, not one each), done before the
      # next block is read.
      await asyncio.gather(*writes)
    for name, rows in written.items():  # a bug of the grouping, never the user's
      full = [None] if name not in self.stacked else list(range(stores[name].shape[0]))
      if sorted(rows, key=str) != sorted(full, key=str):
        raise AssertionError(f"{name}: rows {rows} written, expected {full}")


def _block_prefix(bp) -> tuple[tuple, int | None]:
  """(path of a block's subtree in the params, its row of the stacked leaves or None)."""
  if bp.where[0] == "pairs":
    return ("encoder", "stages", bp.stage, "pairs", bp.where[2]), int(bp.where[1])
  return ("encoder", "stages", bp.stage, "tail", bp.where[1]), None


def _fresh_opt(builder):
  """(owner: {state leaf name: param name or None}, fresh(names, row) -> {name: array}): the
  fresh optimizer state's leaves, computed without the parameters' values. Checked: the
  optimizer's init reads only their shapes (adamw's zero moments), so any leaf can be built
  alone inside a program that creates nothing else."""
  want = builder.abstract["params"]
  jaxpr = jax.make_jaxpr(builder.tx.init)(want).jaxpr
  inputs = {id(v) for v in jaxpr.invars}
  used = [v for e in jaxpr.eqns for v in e.invars] + list(jaxpr.outvars)
  if any(id(v) in inputs for v in used):
    raise AssertionError("the optimizer's init reads the parameters' values: the streaming "
                         "writer would need them all at once")
  masked = lambda x: isinstance(x, optax.MaskedNode)
  names = jax.tree_util.tree_map_with_path(lambda p, _: _name(p), want)
  owners = optax.tree_map_params(builder.tx, lambda _, n: n, builder.abstract["opt_state"],
                                 names, transform_non_params=lambda _: "", is_leaf=masked)
  owner = {}
  for (path, leaf), (_, own) in zip(
      jax.tree_util.tree_leaves_with_path(builder.abstract, is_leaf=masked),
      jax.tree_util.tree_leaves_with_path(
          {**builder.abstract, "opt_state": owners, "params": names}, is_leaf=masked)):
    if not masked(leaf):
      param_like = path[0].key in ("opt_state", "params") and own
      owner[_name(path)] = own if param_like else None

  def fresh(wanted: set[str], row: int | None) -> dict[str, np.ndarray]:
    def build():
      zeros = jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype), want)
      state = builder._init_from(zeros)  # pylint: disable=protected-access
      return {n: (x if row is None else x[row]) for p, x in
              jax.tree_util.tree_leaves_with_path(state) if (n := _name(p)) in wanted}
    return jax.tree.map(np.asarray, jax.jit(build)()) if wanted else {}
  return owner, fresh


def stream_state(src: "Source", config, task, plan: PrunePlan, counts) -> Any:
  """The output state tree (module docstring): numpy leaves outside the blocks, restored and
  transformed now; `_Lazy` leaves of the blocks, produced while Orbax saves the tree."""
  from ringmoe_jax.parallel.sharding import rules_for  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.setup import abstract_task_model, make_builder  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  builder = make_builder(config, task, _local_mesh(), rules_for(config)).builder
  owner, fresh = _fresh_opt(builder)
  source = _flat(nnx.state(abstract_task_model(src.config, src.task()), nnx.Param).to_pure_dict())
  blocks = [(bp, *_block_prefix(bp)) for bp in plan.blocks]
  in_block = lambda path, pre: path[:len(pre)] == pre
  outside = [p for p in source if not any(in_block(p, pre) for _, pre, _ in blocks)]
  params = transforms.apply_outside_blocks(_nest(src.read(dict.fromkeys(outside))), plan)
  values = {"params/" + _name(p): np.asarray(v) for p, v in _flat(params).items()}
  # Per block: the state leaves it owns (its params and their optimizer moments).
  owned = {pre: {n for n, o in owner.items() if o is not None and o.startswith(_name(pre) + "/")}
           for _, pre, _ in blocks}
  lazy = set().union(*owned.values())
  values.update(fresh({n for n in owner if n not in lazy and n not in values}, None))
  values["step"] = np.asarray(src.step, np.int32)
  for k, v in counts.items():
    values[f"routing_counts/{k}"] = np.asarray(v, np.float32)

  def group(bp, pre, row):
    def run():
      names = owned[pre]
      got = src.read({p: row for p in source if in_block(p, pre)})
      sub = _nest({p[len(pre):]: v for p, v in got.items()})
      sub["moe"] = transforms.transform_block(sub["moe"], bp, plan)
      out = {"params/" + _name(pre + p): (row, np.asarray(v)) for p, v in _flat(sub).items()}
      out.update({n: (row, v) for n, v in
                  fresh({n for n in names if n.startswith("opt_state/")}, row).items()})
      return out
    return run

  stream = _Stream([group(*b) for b in blocks],
                   set().union(*(owned[pre] for _, pre, row in blocks if row is not None)))
  masked = lambda x: isinstance(x, optax.MaskedNode)

  def leaf(path, a):
    if masked(a):
      return a
    n = _name(path)
    if n in lazy:
      return _Lazy(n, a.shape, a.dtype, stream)
    v = values.pop(n)
    if v.shape != a.shape or v.dtype != a.dtype:  # a bug of the transform, never the user's
      raise AssertionError(f"pruned {n}: {v.shape} {v.dtype}, expected {a.shape} {a.dtype}")
    return v
  tree = jax.tree_util.tree_map_with_path(leaf, builder.abstract, is_leaf=masked)
  if values:  # a bug of the transform: leaves the pruned model does not have
    raise AssertionError(f"pruned params not in the pruned config's model: {sorted(values)[:4]}")
  return tree


def _nest(flat: dict[tuple, Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    _set(out, path, v)
  return out


def save_streamed(directory: str, step: int, state, data, meta) -> None:
  """Orbax checkpoint of `state` (numpy and `_Lazy` leaves) in train/checkpoint.Checkpointer's
  layout (items state / data / meta of step `step`), the lazy leaves streamed."""
  manager = ocp.CheckpointManager(
      directory, item_handlers={
          "state": ocp.PyTreeCheckpointHandler(type_handler_registry=_WRITE_REGISTRY),
          "data": ocp.JsonCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False))
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data),
        meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()


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

  calibration: 'simulator', an ingestion output DIR or FORMAT:ROOT:SENSOR (a reader dataset):
  the routing of up to `calibration_batches` batches of 32 of its tiles (calibrate.py) replaces
  the checkpoint's saved counts for the plan."""
  from ringmoe_jax.config.validate import validate  # pylint: disable=import-outside-toplevel
  parse_plan(plan_text)  # bad plans fail before anything is read
  calibrate.check_calibration(calibration, calibration_batches)
  output = check_output(output, overwrite)
  src = Source(checkpoint, step)
  try:
    counts, params = src.counts, None
    if calibration:
      params = src.restore_params()
      counts = calibrate.calibration_counts(calibration, src.config, src.registry, src.task(),
                                            params, calibration_batches)
      what = ("unseen simulator tiles" if calibration == "simulator"
              else f"the tiles of {calibration}")
      log(f"calibration={calibration}: routing counts of up to {calibration_batches} batches "
          f"of {what} (eval mode) replace the checkpoint's")
    plan = compute_plan(src.config, plan_text, counts, registry=src.registry)
    log(plan.describe())
    config = pruned_config(src.config, plan.config_overrides, src.registry)
    validate(config)
    del params  # the calibration's: the transform reads block by block
    counts = transforms.apply_counts(counts, plan)
    state = stream_state(src, config, src.task(config), plan, counts)
    data = src.data_item()
    meta = dict(src.meta)
    meta.update(config=json.loads(config.to_json_best_effort()),
                routing_counts={k: np.asarray(v).tolist() for k, v in counts.items()},
                pruned={"plan": plan.plan, "from": f"{src.workdir} step {src.step}",
                        "config_overrides": plan.config_overrides,
                        "calibration": calibration and f"{calibration}:{calibration_batches}"})

    def write(tmp: str) -> None:
      save_streamed(os.path.join(tmp, "checkpoints"), src.step, state, data, meta)
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
