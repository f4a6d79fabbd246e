"""Golden sharding of pretrain_14b per preset, expert weights on the expert axis, and a whole
training step that gives the single-device numbers on every mesh layout."""
import difflib
import os

import jax
import numpy as np
import pytest

from helpers import assert_layouts_match_single_device, micro_config
from ringmoe_jax.config.load import load_config
from ringmoe_jax.parallel import inspect_sharding
from ringmoe_jax.parallel.mesh import make_mesh
from ringmoe_jax.parallel.sharding import PRESETS, batch_sharding
from ringmoe_jax.train.model import abstract_model
from ringmoe_jax.train.optim import make_optimizer
from ringmoe_jax.train.state import StateBuilder
from ringmoe_jax.train.step import make_train_step


@pytest.fixture(scope="module")
def model_14b():
  return abstract_model(load_config("pretrain_14b"))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_golden_sharding_files(model_14b, preset):
  path = os.path.join(inspect_sharding.GOLDEN_DIR, f"sharding_{preset}.txt")
  want = open(path).read().splitlines()
  got = inspect_sharding.golden_text(model_14b, preset).splitlines()
  diff = list(difflib.unified_diff(want, got, "committed", "now", lineterm="", n=0))
  assert not diff, ("sharding changed; review, then regenerate with "
                    "`python -m ringmoe_jax.parallel.inspect_sharding --write`:\n"
                    + "\n".join(diff[:40]))


@pytest.mark.parametrize("preset", ["fsdp_expert", "fsdp_expert_tensor"])
def test_every_routed_expert_weight_is_sharded_over_expert(model_14b, preset):
  specs = inspect_sharding.param_specs(model_14b, preset)
  routed = {k: v for k, v in specs.items()
            if "/moe/special/" in k or "/moe/collab/" in k}
  # Scanned stages: each leaf stacks a stage's (unshifted, shifted) block pairs on axis 0.
  assert len(routed) == 4 * 2 * 2 * 4  # stages x (even, odd) x (special, collab) x 4 weights
  bad = [k for k, v in routed.items() if "P(None, 'expert'" not in v]
  assert not bad, bad[:5]


# data x expert alone (data2_expert4) is test_moe_parallel's, at the layer; the whole step runs
# on pure data parallelism and on all of fsdp, expert and tensor at once (~40 s a layout).
MESHES = {"data8": dict(data=8, fsdp=1, expert=1, tensor=1),
          "fsdp2_expert2_tensor2": dict(data=1, fsdp=2, expert=2, tensor=2)}


def _one_step(config, mesh_cfg, devices):
  config.mesh.update(mesh_cfg)
  mesh = make_mesh(config.mesh, devices)
  builder = StateBuilder.from_config(config, make_optimizer(config.optim, 8, 10), mesh,
                                     PRESETS["fsdp_expert_tensor"])
  state = builder.init()
  rng = np.random.default_rng(0)
  batch = {"pixels": rng.normal(size=(8, 32, 32, 8)).astype(np.float32),
           "raw": rng.normal(size=(8, 32, 32, 8)).astype(np.float32),
           "valid": np.ones((8, 32, 32), np.float32),
           "modality": np.asarray([0, 1, 2, 3, 3, 2, 1, 0], np.int32),
           "sensor": np.zeros((8,), np.int32)}
  with jax.set_mesh(mesh):
    batch = {k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    state, metrics = make_train_step(builder, config)(state, batch)
    return jax.device_get((state["params"], metrics["loss"], metrics["grad_norm"]))


def test_training_step_on_every_mesh_equals_single_device():
  # Every layout traces, compiles and runs its own init and step (~40 s a layout on the 2-core
  # CI machine), two at a time (helpers.assert_layouts_match_single_device).
  assert_layouts_match_single_device(
      lambda cfg, devices: _one_step(micro_config(**{"moe.dispatcher": "capacity"}), cfg,
                                     devices), MESHES)  # capacity: the same drops everywhere


def test_a_shapes_only_builder_refuses_to_init():
  config = micro_config()
  mesh = make_mesh(config.mesh)
  builder = StateBuilder(abstract_model(config), make_optimizer(config.optim, 8, 10), mesh,
                         PRESETS["dp"])
  assert builder.abstract["params"]  # shapes and shardings are there ...
  with pytest.raises(ValueError, match="needs the builder's `create`"):
    builder.init()  # ... but nothing to build the parameters from
