"""Expert parallelism: the MoE layer on 8 fake CPU devices equals the single-device result."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import assert_close_to_reference
from ringmoe_jax.moe.layer import HierarchicalMoE, MoEConfig
from ringmoe_jax.parallel.mesh import BATCH_AXES, make_mesh
from ringmoe_jax.parallel.sharding import DEFAULT_RULES, state_shardings

MESHES = {
    "data8": dict(data=8, fsdp=1, expert=1, tensor=1),
    "data2_expert4": dict(data=2, fsdp=1, expert=4, tensor=1),
    "fsdp2_expert2_tensor2": dict(data=1, fsdp=2, expert=2, tensor=2),
}
T, D, F = 64, 16, 32


def _setup(mode):
  # A small capacity factor on purpose: some tokens are dropped, and drops must match too.
  cfg = MoEConfig(num_modalities=4, num_special=2, num_collab=4, num_shared=1, top_k=2,
                  capacity_factor=0.6, dispatcher="capacity", expert_parallel=mode)
  with nnx.use_eager_sharding(False):
    layer = HierarchicalMoE(D, F, cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(layer)
  x = jax.random.normal(jax.random.PRNGKey(1), (T, D))
  mod = jax.random.randint(jax.random.PRNGKey(2), (T,), 0, 4)
  valid = jnp.arange(T) % 9 != 0

  def loss(p, x):
    y, aux = nnx.merge(graphdef, p)(x, mod, valid, train=True)
    return jnp.sum(jnp.sin(y)) + aux["balance_loss"], (y, aux["collab"]["num_dropped"])

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)), params, x


@pytest.mark.parametrize("mode", ["gspmd", "shard_map"])
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_layer_on_mesh_equals_single_device(mesh_name, mode):
  step, params, x = _setup(mode)
  (l0, (y0, drop0)), g0 = step(params, x)
  assert int(drop0) > 0
  mesh = make_mesh(MESHES[mesh_name])
  with jax.set_mesh(mesh):
    p_sh = jax.device_put(params, state_shardings(params, DEFAULT_RULES, mesh))
    x_sh = jax.device_put(x, NamedSharding(mesh, P(BATCH_AXES, None)))
    if mesh.shape["expert"] > 1:  # the experts really are split over the expert axis
      assert p_sh["collab"]["w1"][...].sharding.spec[0] == "expert"
    (l1, (y1, drop1)), g1 = step(p_sh, x_sh)
  assert int(drop1) == int(drop0)
  assert_close_to_reference(y1, y0)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    assert_close_to_reference(a, b)


def test_dropless_on_data_mesh_equals_single_device():
  cfg = MoEConfig(num_modalities=4, num_special=2, num_collab=4, num_shared=0, top_k=1,
                  dispatcher="dropless_blocked")
  with nnx.use_eager_sharding(False):
    layer = HierarchicalMoE(D, F, cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(layer)
  x = jax.random.normal(jax.random.PRNGKey(1), (T, D))
  mod = jnp.arange(T) % 4
  f = jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x, mod)[0] ** 2),
                       argnums=(0, 1)))
  g0 = f(params, x)
  mesh = make_mesh(MESHES["data8"])
  with jax.set_mesh(mesh):
    g1 = f(params, jax.device_put(x, NamedSharding(mesh, P(BATCH_AXES, None))))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    assert_close_to_reference(a, b)
