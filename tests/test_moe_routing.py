"""Routing policy: hand-written router logits against hand-computed decisions."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ringmoe_jax.moe.layer import HierarchicalMoE, MoEConfig
from ringmoe_jax.moe.routing import capacity_for, jitter, route_top_k


def _logits(probs):
  """(T, Eg) probabilities -> (T, 1, Eg) logits whose softmax is exactly those probabilities."""
  return jnp.log(jnp.asarray(probs, jnp.float32))[:, None, :]


def _jit_route(**static):
  """route_top_k(logits, group, valid) with the static routing options bound, compiled once:
  eagerly, every op of the routing would compile on its own (slow on the 2-core CI machine)."""
  return jax.jit(functools.partial(route_top_k, **static))


def _route(probs, *, k=1, capacity=2, valid=None, **kw):
  t = len(probs)
  valid = np.ones((t,), bool) if valid is None else np.asarray(valid)
  route = _jit_route(num_groups=1, k=k, capacity=capacity, **kw)
  # The logits (log of the probabilities) are computed inside the same compiled program.
  return jax.jit(lambda p, g, v: route(_logits(p), g, v))(
      np.asarray(probs, np.float32), np.zeros((t,), np.int32), valid)


PROBS = [[0.6, 0.3, 0.1],   # t0 -> e0
         [0.5, 0.4, 0.1],   # t1 -> e0
         [0.9, 0.05, 0.05], # t2 -> e0 (third in token order, first by gate)
         [0.1, 0.8, 0.1],   # t3 -> e1
         [0.2, 0.1, 0.7]]   # t4 -> e2


def test_top1_positions_kept_and_drops_in_token_order():
  d, _, m = _route(PROBS, capacity=2)
  np.testing.assert_array_equal(d.expert_index[:, 0], [0, 0, 0, 1, 2])
  np.testing.assert_array_equal(d.position[:, 0], [0, 1, 2, 0, 0])
  np.testing.assert_array_equal(d.kept[:, 0], [True, True, False, True, True])
  np.testing.assert_allclose(d.combine_weights[:, 0], [0.6, 0.5, 0.0, 0.8, 0.7], rtol=1e-6)
  np.testing.assert_array_equal(d.tokens_per_expert, [3, 1, 1])
  assert int(d.num_dropped) == 1
  np.testing.assert_allclose(m["dropped_fraction"], 1 / 5)
  np.testing.assert_allclose(m["load"], [3 / 5, 1 / 5, 1 / 5])
  np.testing.assert_allclose(m["confidence"], (0.6 + 0.5 + 0.9 + 0.8 + 0.7) / 5, rtol=1e-6)


def test_batch_priority_keeps_highest_gates():
  d, _, _ = _route(PROBS, capacity=2, batch_priority=True)
  # Expert 0 gates: t0 0.6, t1 0.5, t2 0.9 -> t2 and t0 keep their slots, t1 is dropped.
  np.testing.assert_array_equal(d.position[:3, 0], [1, 2, 0])
  np.testing.assert_array_equal(d.kept[:, 0], [True, False, True, True, True])
  np.testing.assert_allclose(d.combine_weights[:, 0], [0.6, 0.0, 0.9, 0.8, 0.7], rtol=1e-6)
  assert int(d.num_dropped) == 1


def test_top2_first_choices_fill_before_second_choices():
  probs = [[0.5, 0.3, 0.2],   # t0: e0, e1
           [0.2, 0.5, 0.3],   # t1: e1, e2
           [0.3, 0.6, 0.1]]   # t2: e1, e0
  d, _, _ = _route(probs, k=2, capacity=2)
  np.testing.assert_array_equal(d.expert_index, [[0, 1], [1, 2], [1, 0]])
  # e1 takes t1 and t2's first choices (slots 0, 1); t0's second choice comes after: slot 2.
  np.testing.assert_array_equal(d.position, [[0, 2], [0, 0], [1, 1]])
  np.testing.assert_array_equal(d.kept, [[True, False], [True, True], [True, True]])
  np.testing.assert_allclose(d.combine_weights, [[0.5, 0.0], [0.5, 0.3], [0.6, 0.3]], rtol=1e-6)
  assert int(d.num_dropped) == 1
  np.testing.assert_array_equal(d.tokens_per_expert, [2, 3, 1])


def test_renormalized_top2():
  probs = [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]
  d, _, _ = _route(probs, k=2, capacity=4, renormalize=True)
  np.testing.assert_allclose(d.combine_weights, [[5 / 8, 3 / 8], [5 / 8, 3 / 8]], rtol=1e-6)


def test_dropless_keeps_everything_valid():
  d, _, _ = _route(PROBS, capacity=None, valid=[True, True, True, False, True])
  np.testing.assert_array_equal(d.kept[:, 0], [True, True, True, False, True])
  assert int(d.num_dropped) == 0
  np.testing.assert_array_equal(d.tokens_per_expert, [3, 0, 1])


def test_invalid_tokens_take_no_slot():
  d, _, m = _route(PROBS, capacity=2, valid=[False, True, True, True, True])
  np.testing.assert_array_equal(d.position[1:3, 0], [0, 1])
  np.testing.assert_array_equal(d.kept[:, 0], [False, True, True, True, True])
  assert int(d.num_dropped) == 0
  np.testing.assert_array_equal(d.tokens_per_expert, [2, 1, 1])
  np.testing.assert_allclose(m["load"], [2 / 4, 1 / 4, 1 / 4])


def test_balance_and_z_loss_hand_computed():
  probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]], np.float32)
  d, balance, m = _route(probs, capacity=4)
  f = np.array([3 / 4, 1 / 4])           # top-1 fractions
  p = probs.mean(0)                       # mean router probabilities
  np.testing.assert_allclose(balance, 2 * np.sum(f * p), rtol=1e-6)
  # log-probabilities as logits: logsumexp = log(sum p) = 0.
  np.testing.assert_allclose(m["z_loss"], 0.0, atol=1e-6)
  logits = jnp.asarray([[[1.0, 2.0]], [[0.0, 3.0]]])
  _, _, m2 = _jit_route(num_groups=1, k=1, capacity=2)(
      logits, jnp.zeros((2,), jnp.int32), jnp.ones((2,), bool))
  z = np.log(np.exp([1.0, 0.0]) + np.exp([2.0, 3.0]))
  np.testing.assert_allclose(m2["z_loss"], np.mean(z ** 2), rtol=1e-6)


def test_balance_loss_averages_present_groups():
  # Two groups; group 1 has no tokens and must not count.
  route = _jit_route(num_groups=2, k=1, capacity=2)
  _, balance, _ = jax.jit(lambda p, g, v: route(jnp.log(p), g, v))(
      np.asarray([[[0.7, 0.3], [0.5, 0.5]], [[0.2, 0.8], [0.5, 0.5]]], np.float32),
      jnp.zeros((2,), jnp.int32), jnp.ones((2,), bool))
  np.testing.assert_allclose(balance, 2 * (0.5 * 0.45 + 0.5 * 0.55), rtol=1e-6)


def test_token_sees_only_its_groups_experts():
  # Group 1's router scores are huge for every token, but only group-1 tokens may use them.
  t, g, eg = 6, 3, 2
  logits = jnp.zeros((t, g, eg)).at[:, 1, 0].set(50.0)
  group = jnp.asarray([0, 1, 2, 0, 1, 2])
  d, _, _ = _jit_route(num_groups=g, k=1, capacity=4)(logits, group, jnp.ones((t,), bool))
  e = np.asarray(d.expert_index[:, 0])
  np.testing.assert_array_equal(e // eg, group)
  np.testing.assert_array_equal(e[[1, 4]], [2, 2])


def test_combine_weights_carry_gradient():
  logits = _logits(PROBS)

  def total_gate(lg):
    d, _, _ = route_top_k(lg, jnp.zeros((5,), jnp.int32), jnp.ones((5,), bool),
                          num_groups=1, k=1, capacity=2)
    return jnp.sum(d.combine_weights)

  g = jax.jit(jax.grad(total_gate))(logits)[:, 0]
  # d softmax_i / d logit_j = p_i (delta_ij - p_j) for the chosen i of every kept token.
  p = np.asarray(PROBS)
  expected = np.zeros_like(p)
  for t, (i, kept) in enumerate(zip([0, 0, 0, 1, 2], [1, 1, 0, 1, 1])):
    expected[t] = kept * p[t, i] * ((np.arange(3) == i) - p[t])
  np.testing.assert_allclose(g, expected, atol=1e-6)


def test_jitter_noise_bounds_and_layer_needs_key():
  x = jnp.ones((4, 3))
  y = np.asarray(jax.jit(jitter, static_argnums=2)(x, jax.random.PRNGKey(0), 0.1))
  assert float(y.min()) >= 0.9 and float(y.max()) <= 1.1 and float(np.std(y)) > 0
  with nnx.use_eager_sharding(False):  # initialised in one compiled program, not op by op
    layer = nnx.jit(lambda: HierarchicalMoE(8, 16, MoEConfig(jitter_noise=0.1),
                                            rngs=nnx.Rngs(0)))()
  xs = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
  mod = jnp.arange(16) % 4
  # Each call compiled once (eagerly, every op of the layer would compile on its own).
  train = nnx.jit(lambda l, x, m, key=None: l(x, m, train=True, key=key))
  with pytest.raises(ValueError, match="jitter"):
    train(layer, xs, mod)
  y1, _ = train(layer, xs, mod, key=jax.random.PRNGKey(2))
  # evaluation: no noise, no key needed
  y0, _ = nnx.jit(lambda l, x, m: l(x, m, train=False))(layer, xs, mod)
  assert y1.shape == y0.shape


def test_capacity_for():
  assert capacity_for(100, 4, 1, 1.2) == 30
  assert capacity_for(10, 8, 1, 1.0, min_capacity=4) == 4
  assert capacity_for(3, 8, 2, 1.0, min_capacity=4) == 4
