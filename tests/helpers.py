"""Shared test fixtures: a micro config that builds and steps in seconds on 8 fake devices."""
from __future__ import annotations

import numpy as np

from ringmoe_jax.config.load import load_config


def _override(c, overrides):
  """c with dotted-path fields set: {'train.total_steps': 4} -> c.train.total_steps = 4."""
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def micro_config(**overrides):
  """pretrain_tiny shrunk: 32 px crops, embed 16, one block per stage, batch 8."""
  c = load_config("pretrain_tiny")
  c.model.update(img_size=32, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                 window_size=4, cpb_hidden=16)
  c.mim.mask_cell = 8
  c.data.update(num_tiles=256, tile_size=40, batch_size=8)
  # A fixed schedule: tests with different total_steps share one compiled step.
  c.optim.update(base_lr=2e-3, base_batch=8, warmup_steps=2, schedule_steps=12)
  c.train.update(total_steps=6, log_every=2, checkpoint_every=3, async_checkpoint=False)
  return _override(c, overrides)


def compiled_model(config):
  """make_model(config), initialised in one compiled program (op by op, every init op would
  compile on its own: ~15 s for the micro model on the 2-core CI machine)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.model import make_model  # pylint: disable=import-outside-toplevel
  return nnx.jit(lambda: make_model(config))()


def assert_close_to_reference(actual, desired, rtol: float = 1e-5, err_msg: str = "") -> None:
  """Elementwise rtol, plus an absolute slack of rtol / 10 of the reference's largest magnitude.

  A sharded program sums partial results in another order than one device; an element that is
  a small difference of large sums (a gradient entry, say) then differs by ~1e-7 of those sums,
  which a purely relative test would flag, while an error on any sizeable element still fails.
  """
  desired = np.asarray(desired)
  scale = float(np.max(np.abs(desired))) if desired.size else 0.0
  np.testing.assert_allclose(actual, desired, rtol=rtol, atol=0.1 * rtol * scale,
                             err_msg=err_msg)


def micro_finetune_config(task: str, arg: str = "", **overrides):
  """configs/finetune_<task>.py with micro_config's encoder: 32 px, embed 16, batch 8, tiny
  heads, 64 training and 16 evaluation records. The encoder matches micro_config (so a micro
  pre-training run can be its init_checkpoint)."""
  c = load_config(f"finetune_{task}" + (f":{arg}" if arg else ""))
  m = micro_config()
  c.model.update(m.model.to_dict())
  c.mim.mask_cell = m.mim.mask_cell
  c.task.update(num_records=64, eval_records=8, tile_size=40, head_channels=16, num_bins=8)
  # Capacity dispatch: the same numbers on every mesh, and a smaller program to compile than
  # the dropless blocked loop that 'auto' picks for 8 CPU devices.
  c.moe.dispatcher = "capacity"
  c.finetune.adapter_dim = 4
  c.data.update(batch_size=8)
  c.optim.update(base_lr=2e-3, base_batch=8, warmup_steps=2, schedule_steps=12)
  c.train.update(total_steps=6, log_every=2, checkpoint_every=3, eval_every=0,
                 async_checkpoint=False)
  return _override(c, overrides)


def finetune_one_step(config, mesh_cfg, devices):
  """One fine-tuning step of `config` on a mesh of `devices` laid out as `mesh_cfg`, from the
  config's init state on its first training batch -> (params, loss, grad_norm) on the host."""
  # pylint: disable=import-outside-toplevel
  import jax
  from ringmoe_jax.parallel.mesh import make_mesh
  from ringmoe_jax.parallel.sharding import batch_sharding, rules_for
  from ringmoe_jax.tasks import get_task
  from ringmoe_jax.train import trainer
  from ringmoe_jax.train.setup import make_builder
  from ringmoe_jax.train.step import make_train_step
  config.mesh.update(mesh_cfg)
  mesh = make_mesh(config.mesh, devices)
  task = get_task(config)
  setup = make_builder(config, task, mesh, rules_for(config))
  state = setup.builder.init()
  batch = task.make_dataset(config, trainer.build_registry(config), "train", batch_size=8)[0]
  with jax.set_mesh(mesh):
    batch = {k: jax.device_put(v, batch_sharding(mesh, np.ndim(v))) for k, v in batch.items()}
    step = make_train_step(setup.builder, config, task=task, trainable=setup.trainable)
    state, metrics = step(state, batch)
    return jax.device_get((state["params"], metrics["loss"], metrics["grad_norm"]))


def assert_layouts_match_single_device(one_step, meshes):
  """one_step(mesh_cfg, devices) -> (params, loss, grad_norm) on one device and on each of
  `meshes` ({name: mesh_cfg} over all 8 devices); every mesh must equal the single device.

  Layouts run one after another: compiling from two threads at once segfaulted XLA's CPU
  compiler in CI (exit 139 in backend_compile_and_load)."""
  # pylint: disable=import-outside-toplevel
  import jax
  layouts = {"single": (dict(data=1, fsdp=1, expert=1, tensor=1), jax.devices()[:1]),
             **{name: (cfg, jax.devices()) for name, cfg in meshes.items()}}
  results = {name: one_step(*layout) for name, layout in layouts.items()}
  ref = results.pop("single")
  for name, got in results.items():
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-5, err_msg=name)
    jax.tree.map(lambda a, b: assert_close_to_reference(a, b, err_msg=name), got[0], ref[0])


FINETUNE_MESHES = {"data8": dict(data=8, fsdp=1, expert=1, tensor=1),
                   "fsdp2_expert2_tensor2": dict(data=1, fsdp=2, expert=2, tensor=2)}




def write_pretrain_checkpoint(workdir: str, config, step: int = 2, counts=None) -> str:
  """A pre-training workdir holding `config`'s init state as the checkpoint of `step`, in the
  trainer's format (its StateBuilder state, data-iterator item and meta, written by
  train/checkpoint.Checkpointer), with routing `counts` ({'special', 'collab'} -> (L, E)) if
  given. Not trainer.train: compiling the pre-training step costs ~40-90 s here, and the tests
  that restore a pre-training run need its format, not trained weights. -> workdir."""
  # pylint: disable=import-outside-toplevel
  import json
  import os
  import jax.numpy as jnp
  from ringmoe_jax.parallel.mesh import make_mesh
  from ringmoe_jax.parallel.sharding import rules_for
  from ringmoe_jax.sensors.modalities import MODALITIES
  from ringmoe_jax.tasks import get_task
  from ringmoe_jax.train.checkpoint import Checkpointer
  from ringmoe_jax.train.setup import make_builder
  from ringmoe_jax.train.trainer import build_registry, make_data
  registry = build_registry(config)
  task = get_task(config, registry)
  builder = make_builder(config, task, make_mesh(config.mesh), rules_for(config)).builder
  state = builder.init()
  if counts is not None:
    state["routing_counts"] = {k: jnp.asarray(v, jnp.float32) for k, v in counts.items()}
  state["step"] = jnp.asarray(step, jnp.int32)
  meta = {"config": json.loads(config.to_json_best_effort()), "task": task.name,
          "init_checkpoint": None, "sensors": json.loads(registry.to_json()),
          "modalities": list(MODALITIES)}
  if counts is not None:
    meta["routing_counts"] = {k: np.asarray(v).tolist() for k, v in counts.items()}
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, async_save=False)
  ckpt.save(step, state, make_data(config, registry, task).get_state(), meta)
  ckpt.close()
  return workdir
