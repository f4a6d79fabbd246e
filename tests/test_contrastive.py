"""Cross-modal InfoNCE against a hand computation; missing modalities; empty cases.

Every computation under test runs under jax.jit: eagerly, each op compiles on its own, which on
the 2-core CI machine with 8 fake devices costs far more than the test itself.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ringmoe_jax.objectives import contrastive


def _finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def test_info_nce_equals_hand_computed_3x3():
  # z_a = identity, so S = cos(a_i, b_j) = b_j[i] / |b_j|: the similarity matrix is written out.
  z_a = jnp.eye(3)
  z_b = jnp.asarray([[3.0, 0.0, 4.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
  s = [[0.6, 0.0, 1 / math.sqrt(3)],
       [0.0, 1.0, 1 / math.sqrt(3)],
       [0.8, 0.0, 1 / math.sqrt(3)]]
  t = 0.5
  lse = lambda xs: math.log(sum(math.exp(x / t) for x in xs))
  rows = [lse(s[i]) - s[i][i] / t for i in range(3)]
  cols = [lse([s[i][j] for i in range(3)]) - s[j][j] / t for j in range(3)]
  want = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
  got, count = jax.jit(contrastive.info_nce)(z_a, z_b, t, None)
  assert float(count) == 3
  assert float(got) == pytest.approx(want, rel=1e-6)
  # Scale of the embeddings does not matter (cosine similarity).
  got2, _ = jax.jit(lambda a, b: contrastive.info_nce(5 * a, 0.1 * b, t))(z_a, z_b)
  assert float(got2) == pytest.approx(want, rel=1e-5)


def test_info_nce_invalid_rows_are_neither_anchors_nor_negatives():
  rng = np.random.default_rng(0)
  z_a = rng.normal(size=(5, 8)).astype(np.float32)
  z_b = rng.normal(size=(5, 8)).astype(np.float32)
  valid = np.asarray([True, False, True, True, False])
  nce = jax.jit(lambda a, b, v: contrastive.info_nce(a, b, 0.1, v))
  got, count = nce(z_a, z_b, valid)
  keep = valid
  want, _ = nce(z_a[keep], z_b[keep], None)
  assert float(count) == 3 and float(got) == pytest.approx(float(want), rel=1e-6)
  # Whatever an excluded row holds (absent modality: garbage, even NaN) changes nothing.
  bad_a, bad_b = z_a.copy(), z_b.copy()
  bad_a[1], bad_b[4] = np.nan, -7.0
  got_g, _ = nce(bad_a, bad_b, valid)
  assert float(got_g) == pytest.approx(float(got), rel=1e-6)
  g = jax.jit(jax.grad(lambda a: nce(a, bad_b, valid)[0]))(bad_a)
  assert _finite(g) and float(np.max(np.abs(np.asarray(g)[1]))) == 0


@pytest.mark.parametrize("valid", [[False, False, False], [True, False, False]])
def test_info_nce_fewer_than_two_pairs_is_zero(valid):
  z = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
  f = lambda a, b: contrastive.info_nce(a, b, 0.07, jnp.asarray(valid))
  loss, count = jax.jit(f)(z, z[::-1])
  assert float(loss) == 0 and float(count) == 0
  g = jax.jit(jax.grad(lambda a, b: f(a, b)[0], argnums=(0, 1)))(z, z[::-1])
  assert _finite(g) and all(float(np.max(np.abs(np.asarray(x)))) == 0 for x in g)


def test_info_nce_zero_embeddings_finite():
  z = np.zeros((4, 3), np.float32)
  loss, count = jax.jit(lambda a, b: contrastive.info_nce(a, b, 0.1))(z, z)
  assert float(count) == 4 and float(loss) == pytest.approx(math.log(4), rel=1e-6)
  g = jax.jit(jax.grad(lambda a: contrastive.info_nce(a, z, 0.1)[0]))(z)
  assert _finite(g)


def test_multi_modal_info_nce_with_missing_modalities():
  rng = np.random.default_rng(2)
  n, m, d = 6, 4, 8
  emb = rng.normal(size=(n, m, d)).astype(np.float32)  # numpy: the pair slices below are not ops
  present = np.ones((n, m), bool)
  present[0, 1] = present[2, 3] = present[5, 0] = False
  present[:, 2] = False
  present[1, 2] = True  # modality 2 in only one group: its pairs have < 2 groups
  log_t = contrastive.init_log_temperature(0.2)
  loss, pairs, pair_loss, pair_count = jax.jit(
      lambda e, p, lt: contrastive.multi_modal_info_nce(e, p, lt, return_pairs=True))(
          emb, jnp.asarray(present), log_t)
  want = []
  info_nce = jax.jit(lambda a, b: contrastive.info_nce(a, b, 0.2))
  for i in range(m):
    for j in range(i + 1, m):
      both = present[:, i] & present[:, j]
      if both.sum() < 2:
        assert float(pair_count[i, j]) == 0 and float(pair_loss[i, j]) == 0
        continue
      l, c = info_nce(emb[both, i], emb[both, j])
      assert float(pair_count[i, j]) == both.sum() == float(c)
      assert float(pair_loss[i, j]) == pytest.approx(float(l), rel=1e-5)
      want.append(float(l))
  assert float(pairs) == len(want) == 3  # (0,1), (0,3), (1,3)
  assert float(loss) == pytest.approx(np.mean(want), rel=1e-5)
  # Learnable temperature: gradients reach the log-temperature.
  g = jax.jit(jax.grad(
      lambda lt: contrastive.multi_modal_info_nce(emb, jnp.asarray(present), lt)[0]))(log_t)
  assert _finite(g) and float(g) != 0


def test_multi_modal_info_nce_nothing_present():
  emb = np.ones((3, 2, 4), np.float32)
  f = lambda e, lt: contrastive.multi_modal_info_nce(e, jnp.zeros((3, 2), bool), lt)
  loss, pairs = jax.jit(f)(emb, contrastive.init_log_temperature())
  assert float(loss) == 0 and float(pairs) == 0
  g = jax.jit(jax.grad(lambda e, lt: f(e, lt)[0], argnums=(0, 1)))(
      emb, contrastive.init_log_temperature())
  assert _finite(g)


def test_temperature_clipping():
  temperature = jax.jit(contrastive.temperature_from_log)
  assert float(temperature(jnp.float32(10.0))) == pytest.approx(1.0)
  assert float(temperature(jnp.float32(-10.0))) == pytest.approx(0.01)
  assert float(temperature(contrastive.init_log_temperature())) == \
      pytest.approx(0.07, rel=1e-6)
  g = jax.jit(jax.grad(contrastive.temperature_from_log))(jnp.float32(10.0))
  assert float(g) == 0  # clipped: no push further out
