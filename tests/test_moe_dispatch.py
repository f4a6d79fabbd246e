"""Dispatchers: dropless kernels against a loop over experts, capacity against dropless."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ringmoe_jax.moe import dispatch, grouped
from ringmoe_jax.moe.layer import HierarchicalMoE, MoEConfig
from ringmoe_jax.moe.routing import route_top_k

DROPLESS = ("dropless_ragged", "dropless_blocked", "dropless_native")
ALL = ("capacity",) + DROPLESS


def _weights(key, e, d, f):
  k = jax.random.split(key, 4)
  return (jax.random.normal(k[0], (e, d, f)) / np.sqrt(d), jax.random.normal(k[1], (e, f)),
          jax.random.normal(k[2], (e, f, d)) / np.sqrt(f), jax.random.normal(k[3], (e, d)))


def _loop_reference(x, decision, weights):
  """y[t] = sum_k w[t, k] * FFN_{e(t, k)}(x[t]), one expert at a time."""
  w1, b1, w2, b2 = weights
  y = jnp.zeros_like(x)
  for e in range(w1.shape[0]):
    out = jax.nn.gelu(x @ w1[e] + b1[e], approximate=False) @ w2[e] + b2[e]
    gate = jnp.sum(jnp.where(decision.expert_index == e, decision.combine_weights, 0), axis=1)
    y = y + gate[:, None] * out
  return y


def _decision(key, t, e, k, valid):
  logits = jax.random.normal(key, (t, 1, e)) * 2
  return route_top_k(logits, jnp.zeros((t,), jnp.int32), valid, num_groups=1, k=k,
                     capacity=None)[0]


@pytest.mark.parametrize("kernel", ["ragged", "blocked", "native"])
def test_dropless_equals_loop_over_experts(kernel):
  t, d, f, e, k = 40, 8, 16, 5, 2
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], (t, d))
  valid = jnp.arange(t) % 7 != 3
  dec = _decision(keys[1], t, e, k, valid)
  weights = _weights(keys[2], e, d, f)
  # Small blocks so that experts span several block sizes and one block overhangs the next.
  run = lambda x, w: dispatch.dropless(x, dec, w, kernel=kernel, block_levels=(8, 4, 2))
  np.testing.assert_allclose(jax.jit(run)(x, weights), _loop_reference(x, dec, weights),
                             rtol=1e-5, atol=1e-5)
  loss = lambda fn: lambda x, w: jnp.sum(jnp.sin(fn(x, w)))
  g = jax.jit(jax.grad(loss(run), argnums=(0, 1)))(x, weights)
  g_ref = jax.jit(jax.grad(loss(lambda x, w: _loop_reference(x, dec, w)),
                           argnums=(0, 1)))(x, weights)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sizes", [[0, 0, 13], [13, 0, 0], [1, 2, 3], [0, 0, 0], [9, 9, 0]])
def test_blocked_kernel_edge_sizes(sizes):
  n, d, f = 30, 4, 8
  sizes = jnp.asarray(sizes, jnp.int32)
  weights = _weights(jax.random.PRNGKey(1), 3, d, f)
  xs = jax.random.normal(jax.random.PRNGKey(2), (n, d))
  got = grouped.ffn_blocked(xs, sizes, *weights, (8, 4))
  want = grouped.ffn_ragged(xs, sizes, *weights)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(got[int(sizes.sum()):]).max(initial=0)) == 0.0


def _layer(dispatcher, **cfg):
  cfg = MoEConfig(num_modalities=2, num_special=2, num_collab=3, num_shared=1,
                  dispatcher=dispatcher, **cfg)
  with nnx.use_eager_sharding(False):
    return HierarchicalMoE(8, 16, cfg, rngs=nnx.Rngs(0))


@nnx.jit
def _call(layer, x, mod, valid=None):
  """layer(x, mod, valid, train=True), compiled once per layer config: eagerly, every op of the
  routing and dispatch would compile on its own (~10x the time on the 2-core CI machine)."""
  return layer(x, mod, valid, train=True)


def _inputs(t=32, d=8):
  x = jax.random.normal(jax.random.PRNGKey(3), (t, d))
  return x, jnp.arange(t) % 2, jnp.arange(t) % 5 != 4


def test_all_dispatchers_agree_when_capacity_is_ample():
  x, mod, valid = _inputs()
  outs = {}
  for name in ALL:
    layer = _layer(name, top_k=2, capacity_factor=10.0)
    y, aux = _call(layer, x, mod, valid)
    assert int(aux["special"]["num_dropped"]) == 0 and int(aux["collab"]["num_dropped"]) == 0
    outs[name] = (y, aux)
  for name in DROPLESS:
    np.testing.assert_allclose(outs[name][0], outs["capacity"][0], rtol=1e-5, atol=1e-6)
    for r in ("special", "collab"):
      np.testing.assert_array_equal(outs[name][1][r]["tokens_per_expert"],
                                    outs["capacity"][1][r]["tokens_per_expert"])


def test_small_capacity_drops_hand_computed():
  t = 32
  x, mod, _ = _inputs(t)
  x = jnp.abs(x) + 0.1  # positive features: a positive router column wins for every token
  layer = _layer("capacity", top_k=1, capacity_factor=0.5, min_capacity=1)
  layer.collab_router.kernel[...] = jnp.zeros((1, 8, 3)).at[0, :, 1].set(1.0)
  layer.special_router.kernel[...] = jnp.zeros((2, 8, 2)).at[:, :, 0].set(1.0)
  _, aux = _call(layer, x, mod)
  # collab: C = ceil(0.5 * 32 / 3) = 6, all 32 tokens choose expert 1: 26 dropped.
  np.testing.assert_array_equal(aux["collab"]["tokens_per_expert"], [0, 32, 0])
  assert int(aux["collab"]["num_dropped"]) == 32 - 6
  # special: C = ceil(0.5 * 16 / 2) = 4 per expert; 16 tokens per modality on local expert 0.
  np.testing.assert_array_equal(aux["special"]["tokens_per_expert"], [16, 0, 16, 0])
  assert int(aux["special"]["num_dropped"]) == 2 * (16 - 4)
  np.testing.assert_allclose(aux["special"]["dropped_fraction"], 24 / 32)
  for name in DROPLESS:
    dl = _layer(name, top_k=1)
    dl.collab_router.kernel[...] = layer.collab_router.kernel[...]
    _, aux = _call(dl, x, mod)
    assert int(aux["collab"]["num_dropped"]) == 0
    np.testing.assert_array_equal(aux["collab"]["tokens_per_expert"], [0, 32, 0])


@pytest.mark.parametrize("name", ALL)
def test_token_reaches_only_its_modalitys_experts(name):
  x, mod, _ = _inputs()
  layer = _layer(name, top_k=1, capacity_factor=10.0)
  # Hand-made special routers: modality 0 prefers its local expert 1, modality 1 its expert 0;
  # the router of the *other* modality is made far more confident, and must be ignored.
  x = jnp.abs(x) + 0.1
  layer.special_router.kernel[...] = (jnp.zeros((2, 8, 2)).at[0, :, 1].set(1.0)
                                      .at[1, :, 0].set(1.0).at[1, :, 1].set(-100.0))
  y, aux = _call(layer, x, mod)
  np.testing.assert_array_equal(aux["special"]["tokens_per_expert"], [0, 16, 16, 0])
  # Breaking modality 1's experts changes modality-1 tokens only.
  layer.special.w2[...] = layer.special.w2[...].at[2:].multiply(3.0)
  y2, _ = _call(layer, x, mod)
  changed = np.asarray(jnp.any(jnp.abs(y2 - y) > 1e-6, axis=1))
  np.testing.assert_array_equal(changed, np.asarray(mod) == 1)


@pytest.mark.parametrize("name", ALL)
def test_router_and_experts_get_gradient(name):
  x, mod, valid = _inputs()
  layer = _layer(name, top_k=2, capacity_factor=2.0)
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

  def loss(p):
    y, aux = nnx.merge(graphdef, p, rest)(x, mod, valid, train=True)
    return jnp.sum(y ** 2) + aux["balance_loss"]

  g = jax.jit(jax.grad(loss))(params)
  for path in (("special_router", "kernel"), ("collab_router", "kernel"), ("special", "w1"),
               ("collab", "w2"), ("shared", "b1")):
    leaf = g[path[0]][path[1]][...]
    assert float(jnp.abs(leaf).max()) > 0, path


def test_auto_resolves_per_backend():
  # Tests run on CPU, with a C++ compiler (tests/test_native_kernels.py checks that it builds).
  assert dispatch.resolve("auto") == "dropless_native"
  assert dispatch.resolve("auto", dtype=jnp.bfloat16) == "dropless_blocked"
  with jax.set_mesh(jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])):
    assert dispatch.resolve("auto") == "dropless_blocked"  # XLA cannot split the FFI call
  with pytest.raises(ValueError, match="float32"):
    dispatch.resolve("dropless_native", dtype=jnp.bfloat16)
  assert dispatch.resolve("auto", expert_sharded=True) == "capacity"
  assert dispatch.resolve("dropless_ragged") == "dropless_ragged"
  with pytest.raises(ValueError):
    dispatch.resolve("einsum")
