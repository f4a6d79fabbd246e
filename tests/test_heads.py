"""Downstream heads: shapes on a 32 px pyramid, finite gradients, pooling / bins / losses
against hand or numpy references, ViewFusion's identity, ChangeHead's pair symmetry."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ringmoe_jax.heads import (AdaptiveBinsHead, ChangeHead, ClassifierHead, UperNetHead,
                               ViewFusion, adaptive_avg_pool, l1_loss, silog_loss,
                               upsample_logits)

DIMS = (8, 16, 32, 64)
B = 2
GRIDS = (8, 4, 2, 1)  # a 32 x 32 input at strides 4, 8, 16, 32


def _feats(seed=0, views=None):
  rng = np.random.default_rng(seed)
  lead = (B,) if views is None else (B, views)
  return [jnp.asarray(rng.normal(size=lead + (g, g, d)), jnp.float32)
          for g, d in zip(GRIDS, DIMS)]


def _make(cls, *args, **kw):
  """The head built in one compiled program (op by op, every init op compiles on its own)."""
  with nnx.use_eager_sharding(False):
    return nnx.jit(lambda: cls(*args, rngs=nnx.Rngs(0), **kw))()


@nnx.jit
def _out_and_grads(model, inputs):
  """model(*inputs), and the gradients of the sum of its outputs w.r.t. params and inputs."""
  def total(model, inputs):
    out = model(*inputs)
    return sum(jnp.sum(o) for o in jax.tree.leaves(out)), out
  (_, out), grads = nnx.value_and_grad(total, argnums=(0, 1), has_aux=True)(model, inputs)
  return out, grads


def _assert_grads_ok(grads):
  leaves = jax.tree.leaves(grads)
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def _num_params(model):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_classifier_head():
  head = _make(ClassifierHead, DIMS[-1], 5, dropout=0.1)
  pooled = jnp.asarray(np.random.default_rng(1).normal(size=(B, DIMS[-1])), jnp.float32)
  logits, grads = _out_and_grads(head, (pooled,))
  assert logits.shape == (B, 5) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, 0.0)  # zero-init classifier: loss starts at log K
  _assert_grads_ok(grads)
  assert float(jnp.abs(grads[0]["fc"]["kernel"][...]).max()) > 0  # the head learns at once


def test_adaptive_avg_pool_matches_numpy_reference():
  x = np.random.default_rng(2).normal(size=(2, 5, 7, 3)).astype(np.float32)

  def reference(x, oh, ow):  # PyTorch's adaptive_avg_pool2d bins, one at a time
    _, h, w, _ = x.shape
    out = np.zeros((x.shape[0], oh, ow, x.shape[-1]), np.float64)
    for i in range(oh):
      for j in range(ow):
        h0, h1 = int(np.floor(i * h / oh)), int(np.ceil((i + 1) * h / oh))
        w0, w1 = int(np.floor(j * w / ow)), int(np.ceil((j + 1) * w / ow))
        out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out

  for out in (3, (2, 6), 1, (6, 9)):  # 3 is the overlapping-bin case; 6 x 9 > 5 x 7
    oh, ow = (out, out) if isinstance(out, int) else out
    np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), out), reference(x, oh, ow),
                               rtol=1e-5, atol=1e-6)


def test_upernet_head():
  head = _make(UperNetHead, DIMS, 16, 3)
  logits, grads = _out_and_grads(head, (_feats(),))
  assert logits.shape == (B, 8, 8, 3) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  _assert_grads_ok(grads)
  full = upsample_logits(logits, (32, 32))
  assert full.shape == (B, 32, 32, 3)
  np.testing.assert_allclose(upsample_logits(jnp.ones((1, 8, 8, 2)), (32, 32)), 1.0, rtol=1e-6)


def test_view_fusion():
  single = ViewFusion(DIMS, 1, rngs=nnx.Rngs(0))
  assert _num_params(single) == 0
  feats = _feats(views=1)
  for got, f in zip(single(feats), feats):
    np.testing.assert_array_equal(got, f[:, 0])

  fusion = _make(ViewFusion, DIMS, 2)
  feats = _feats(views=2)
  out, grads = _out_and_grads(fusion, (feats,))
  assert [o.shape for o in out] == [(B, g, g, d) for g, d in zip(GRIDS, DIMS)]
  for o, f in zip(out, feats):  # initialised as the mean of the views
    np.testing.assert_allclose(o, f.mean(axis=1), rtol=1e-5, atol=1e-6)
  _assert_grads_ok(grads)


def test_change_head_shapes_grads_and_pair_symmetry():
  head = _make(ChangeHead, DIMS, 16, num_tokens=4, depth=1, heads=4)
  fa, fb = _feats(3), _feats(4)
  ab, grads = _out_and_grads(head, (fa, fb))
  ba, _ = _out_and_grads(head, (fb, fa))  # same shapes: the compiled program is reused
  assert ab.shape == ba.shape == (B, 8, 8, 2) and ab.dtype == jnp.float32
  _assert_grads_ok(grads)
  # Shared weights, image-agnostic token positions and |fa - fb|: the pair's order is moot.
  np.testing.assert_allclose(ab, ba, rtol=1e-4, atol=1e-5)
  assert not np.allclose(ab, _out_and_grads(head, (fa, fa))[0])  # a pair with no change differs


def test_adaptive_bins_head_range_and_centres():
  head = _make(AdaptiveBinsHead, DIMS, 16, num_bins=8, min_depth=1e-3, max_depth=100.0)
  # Far from the uniform start: uneven bins and confident (near one-hot) pixel distributions.
  rng = np.random.default_rng(5)
  head.bins_fc2.kernel[...] = jnp.asarray(rng.normal(size=(16, 8)) * 5.0, jnp.float32)
  head.pixel_logits.kernel[...] = jnp.asarray(rng.normal(size=(1, 1, 16, 8)) * 20.0,
                                              jnp.float32)
  (depth, centres), grads = _out_and_grads(head, (_feats(6),))
  assert depth.shape == (B, 8, 8) and centres.shape == (B, 8)
  assert float(depth.min()) >= 1e-3 and float(depth.max()) <= 100.0
  assert bool(jnp.all(jnp.diff(centres, axis=-1) > 0))
  assert float(centres.min()) > 1e-3 and float(centres.max()) < 100.0
  assert float(centres[:, 1:].std()) > 0 and not np.allclose(centres[0], centres[1])
  _assert_grads_ok(grads)


def test_silog_and_l1_losses():
  rng = np.random.default_rng(7)
  target = jnp.asarray(rng.uniform(0.5, 50.0, size=(B, 8, 8)), jnp.float32)
  valid = jnp.asarray(rng.uniform(size=(B, 8, 8)) > 0.3)
  silog_grad = jax.jit(jax.value_and_grad(silog_loss))
  l1_grad = jax.jit(jax.value_and_grad(l1_loss))

  for valid_mask in (valid, jnp.zeros_like(valid)):  # pred == target; then nothing valid
    for fn in (silog_grad, l1_grad):
      loss, g = fn(target, target, valid_mask)
      assert float(loss) == 0.0 and bool(jnp.all(jnp.isfinite(g)))

  # A constant log ratio: d = log 2 everywhere, so 10 sqrt((1 - lam)) log 2.
  loss, _ = silog_grad(2 * target, target, valid)
  np.testing.assert_allclose(loss, 10 * np.sqrt(0.15) * np.log(2.0), rtol=1e-5)
  # No-value pixels (NaN / 0 target) outside `valid` change nothing, gradients stay finite.
  bad = jnp.where(valid, target, jnp.where(jnp.arange(8) % 2 == 0, jnp.nan, 0.0))
  pred = target * jnp.asarray(rng.uniform(0.5, 2.0, size=target.shape), jnp.float32)
  for fn in (silog_grad, l1_grad):
    (l_ref, _), (l_bad, g_bad) = fn(pred, target, valid), fn(pred, bad, valid)
    np.testing.assert_allclose(l_bad, l_ref, rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(g_bad))) and float(l_ref) > 0
  m = np.asarray(valid)
  np.testing.assert_allclose(l1_grad(pred, target, valid)[0],
                             np.abs(np.asarray(pred) - np.asarray(target))[m].mean(), rtol=1e-5)


def test_heads_reject_a_wrong_number_of_levels():
  with nnx.use_eager_sharding(False):  # abstract: the check runs before any parameter is read
    upernet = nnx.eval_shape(lambda: UperNetHead(DIMS, 8, 2, rngs=nnx.Rngs(0)))
  for feats in (_feats()[:3], _feats() + _feats()[:1]):
    with pytest.raises(ValueError, match="levels"):
      upernet(feats)
    with pytest.raises(ValueError, match="levels"):
      ViewFusion(DIMS, 1, rngs=nnx.Rngs(0))([f[:, None] for f in feats])


def test_every_parameter_has_logical_names():
  with nnx.use_eager_sharding(False):
    heads = [nnx.eval_shape(lambda f=f: f(nnx.Rngs(0))) for f in (
        lambda r: ClassifierHead(DIMS[-1], 5, rngs=r),
        lambda r: UperNetHead(DIMS, 16, 3, rngs=r),
        lambda r: ViewFusion(DIMS, 2, rngs=r),
        lambda r: ChangeHead(DIMS, 16, rngs=r),
        lambda r: AdaptiveBinsHead(DIMS, 16, num_bins=8, rngs=r))]
  for head in heads:
    for path, v in nnx.to_flat_state(nnx.state(head, nnx.Param)):
      names = v.get_metadata().get("out_sharding")
      assert names is not None and len(names) == v.ndim, (type(head).__name__, path, names)
      assert set(names) <= {"embed", "mlp", "heads", None}, (path, names)
