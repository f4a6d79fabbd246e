"""Tests for ringmoe_jax.models.attention (SwinV2 window attention)."""

import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ringmoe_jax.models import attention as A

DIM, HEADS, WS, HW, CPB = 16, 2, 4, 8, 32


@functools.partial(nnx.jit, static_argnums=(0, 1, 2))
def _new_module(ws, seed, dtype):
  """A.WindowAttentionV2, initialised in one compiled program instead of op by op."""
  return A.WindowAttentionV2(DIM, HEADS, ws, cpb_hidden=CPB, dtype=dtype,
                             rngs=nnx.Rngs(seed))


def _make_module(ws=WS, seed=0, dtype=jnp.float32):
  """Module with every parameter drawn at O(1) scale.

  The default init (std 0.02, zero q/v biases, a near-constant position bias)
  would hide bugs: zero biases cannot be misplaced and a constant position
  bias cancels in softmax, so a wrong index would go unnoticed.
  """
  m = _new_module(ws, seed, dtype)
  rng = np.random.default_rng(seed)
  for path, var in nnx.to_flat_state(nnx.state(m, nnx.Param)):
    var[...] = jnp.asarray(0.5 * rng.standard_normal(var[...].shape),
                           var[...].dtype)
  # Distinct, in-range temperatures per head (10 and 20 < the clamp of 100).
  m.logit_scale[...] = jnp.log(jnp.array([10.0, 20.0])).reshape(HEADS, 1, 1)
  return m


@functools.partial(nnx.jit, static_argnums=(2, 3))
def _windowed(m, x, ws, shift):
  """A.windowed_attention, compiled once per (module, shape, window, shift): eagerly, every op
  would compile on its own (slow on the 2-core CI machine with 8 fake devices)."""
  return A.windowed_attention(m, x, ws, shift)


@nnx.jit
def _apply(m, xw, mask=None):
  """m(xw, mask), compiled."""
  return m(xw, mask)


def _x(b=2, hw=HW, seed=1):
  return jnp.asarray(
      np.random.default_rng(seed).standard_normal((b, hw, hw, DIM)),
      jnp.float32)


# ----------------------------------------------------------------------------
# Pure helpers.
# ----------------------------------------------------------------------------


def test_window_partition_round_trip():
  x = np.random.default_rng(0).standard_normal((2, 8, 12, 3))
  win = A.window_partition(x, 4)
  assert win.shape == (2 * 2 * 3, 16, 3)
  np.testing.assert_array_equal(win[0], x[0, :4, :4].reshape(16, 3))
  # Row-major window order: window 1 is to the right of window 0.
  np.testing.assert_array_equal(win[1], x[0, :4, 4:8].reshape(16, 3))
  # Image 1 starts after the 6 windows of image 0.
  np.testing.assert_array_equal(win[6], x[1, :4, :4].reshape(16, 3))
  np.testing.assert_array_equal(A.window_reverse(win, 4, 8, 12), x)


def test_window_partition_rejects_indivisible_map():
  with pytest.raises(AssertionError, match="not divisible"):
    A.window_partition(np.zeros((1, 6, 8, 1)), 4)


def test_effective_window():
  assert A.effective_window(16, 16, 4, 2) == (4, 2)
  assert A.effective_window(4, 4, 7, 3) == (4, 0)
  assert A.effective_window(7, 14, 7, 3) == (7, 0)


@pytest.mark.parametrize("ws", [1, 2, 4, 7])
def test_relative_position_index(ws):
  idx = A.relative_position_index(ws)
  n, t = ws * ws, (2 * ws - 1) ** 2
  centre = (ws - 1) * (2 * ws - 1) + (ws - 1)
  assert idx.shape == (n, n) and idx.dtype == np.int32
  assert idx.min() >= 0 and idx.max() < t
  assert len(np.unique(idx)) == t  # every offset occurs
  np.testing.assert_array_equal(np.diag(idx), centre)
  np.testing.assert_array_equal(idx + idx.T, 2 * centre)
  # Spot check against the definition: token (0, 0) vs token (ws-1, ws-1).
  assert idx[0, n - 1] == 0


@pytest.mark.parametrize("ws,pre", [(2, 0), (4, 0), (7, 0), (4, 8)])
def test_relative_coords_table(ws, pre):
  tab = A.relative_coords_table(ws, pre)
  s = 2 * ws - 1
  assert tab.shape == (s, s, 2) and tab.dtype == np.float32
  np.testing.assert_allclose(tab, -tab[::-1, ::-1], atol=0)
  # The largest offset normalises to 1, scaled to 8, so the bound is
  # log2(9) / log2(8) ~= 1.057 (as in the official SwinV2 code), not 1.
  bound = math.log2(9.0) / 3.0
  if pre == 0:
    np.testing.assert_allclose(np.abs(tab).max(), bound, rtol=1e-6)
  else:  # a window smaller than the pretrained one stays strictly inside
    want = math.log2(8.0 * (ws - 1) / (pre - 1) + 1.0) / 3.0
    np.testing.assert_allclose(np.abs(tab).max(), want, rtol=1e-6)
    assert want < bound
  np.testing.assert_array_equal(tab[ws - 1, ws - 1], 0.0)
  # Axis 0 of the last dim varies along rows, axis 1 along columns.
  assert tab[0, ws - 1, 0] < 0 and tab[0, ws - 1, 1] == 0
  assert tab[ws - 1, 0, 1] < 0 and tab[ws - 1, 0, 0] == 0


def test_relative_coords_table_window_one():
  tab = A.relative_coords_table(1)
  assert tab.shape == (1, 1, 2)
  np.testing.assert_array_equal(tab, 0.0)


def _wrapped_labels(h, w, ws, shift):
  """Per-window labels of the rolled map, derived from first principles.

  After rolling by -shift, a token at (r, c) came from ((r + shift) % H, ...).
  Two tokens of a window were neighbours in the original image iff they
  agree on whether their row wrapped around and whether their column did.

  Returns:
    (nW, N) int labels, windows and tokens in row-major order.
  """
  labels = []
  for wy in range(h // ws):
    for wx in range(w // ws):
      win = []
      for i in range(ws):
        for j in range(ws):
          r, c = wy * ws + i, wx * ws + j
          win.append(2 * int(r >= h - shift) + int(c >= w - shift))
      labels.append(win)
  return np.array(labels)


def test_shifted_window_mask_against_region_labels():
  h = w = 8
  ws, shift = 4, 2
  mask = A.shifted_window_mask(h, w, ws, shift)
  assert mask.shape == (4, 16, 16) and mask.dtype == np.float32
  lab = _wrapped_labels(h, w, ws, shift)
  same = lab[:, :, None] == lab[:, None, :]
  np.testing.assert_array_equal(mask, np.where(same, 0.0, -100.0))
  # Non-trivial: window 0 is unmasked, the bottom-right one has 4 regions.
  assert (mask[0] == 0).all() and (mask[3] != 0).any()
  assert A.shifted_window_mask(h, w, ws, 0) is None


# ----------------------------------------------------------------------------
# Module vs naive reference.
# ----------------------------------------------------------------------------


def _params(m):
  g = lambda v: np.asarray(v[...], np.float64)
  return dict(
      wqkv=g(m.qkv.kernel), qb=g(m.q_bias), vb=g(m.v_bias),
      scale=np.exp(np.minimum(g(m.logit_scale).reshape(-1), math.log(100))),
      w1=g(m.cpb_fc1.kernel), b1=g(m.cpb_fc1.bias), w2=g(m.cpb_fc2.kernel),
      wp=g(m.proj.kernel), bp=g(m.proj.bias))


def _cpb(p, dy, dx, ws):
  """Position bias (h,) of offset (dy, dx), computed from the SwinV2 formula."""
  t = np.array([dy, dx], np.float64) / (ws - 1) * 8.0
  t = np.sign(t) * np.log2(np.abs(t) + 1.0) / 3.0
  hid = np.maximum(t @ p["w1"] + p["b1"], 0.0)
  return 16.0 / (1.0 + np.exp(-(hid @ p["w2"])))


def _naive_windowed_attention(m, x, ws, shift):
  """Token-by-token loops over windows and heads, in float64."""
  p = _params(m)
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  d = c // HEADS
  xr = np.roll(x, (-shift, -shift), axis=(1, 2))
  out = np.zeros_like(xr)
  labels = _wrapped_labels(h, w, ws, shift)
  cpb = {(dy, dx): _cpb(p, dy, dx, ws)
         for dy in range(-ws + 1, ws) for dx in range(-ws + 1, ws)}
  for bi in range(b):
    for wi, (wy, wx) in enumerate(
        (wy, wx) for wy in range(h // ws) for wx in range(w // ws)):
      pos = [(wy * ws + i, wx * ws + j) for i in range(ws) for j in range(ws)]
      tok = np.stack([xr[bi, r, cc] for r, cc in pos])  # (N, C)
      q = tok @ p["wqkv"][:, :c] + p["qb"]
      k = tok @ p["wqkv"][:, c:2 * c]  # no key bias
      v = tok @ p["wqkv"][:, 2 * c:] + p["vb"]
      heads_out = []
      for hd in range(HEADS):
        sl = slice(hd * d, (hd + 1) * d)
        # The module's documented normalisation: x / sqrt(||x||^2 + eps^2), eps = 1e-2.
        qn = q[:, sl] / np.sqrt(np.sum(q[:, sl] ** 2, -1, keepdims=True) + 1e-4)
        kn = k[:, sl] / np.sqrt(np.sum(k[:, sl] ** 2, -1, keepdims=True) + 1e-4)
        n = len(pos)
        logits = np.full((n, n), -np.inf)
        for i in range(n):
          for j in range(n):
            if labels[wi, i] != labels[wi, j]:
              continue  # different region of the shifted image
            dy, dx = pos[i][0] - pos[j][0], pos[i][1] - pos[j][1]
            logits[i, j] = (qn[i] @ kn[j]) * p["scale"][hd] + cpb[dy, dx][hd]
        e = np.exp(logits - logits.max(-1, keepdims=True))
        heads_out.append((e / e.sum(-1, keepdims=True)) @ v[:, sl])
      y = np.concatenate(heads_out, -1) @ p["wp"] + p["bp"]
      for (r, cc), yy in zip(pos, y):
        out[bi, r, cc] = yy
  return np.roll(out, (shift, shift), axis=(1, 2))


@pytest.mark.parametrize("shift", [0, WS // 2])
def test_windowed_attention_matches_naive_reference(shift):
  m = _make_module()
  x = _x(b=2)
  got = np.asarray(_windowed(m, x, WS, shift))
  want = _naive_windowed_attention(m, x, WS, shift)
  assert got.shape == x.shape
  assert np.abs(want).mean() > 0.1  # the comparison is not trivially small
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mask_changes_output():
  m = _make_module()
  x = np.roll(np.asarray(_x(b=2)), (-2, -2), axis=(1, 2))
  xw = A.window_partition(x, WS)
  mask = A.shifted_window_mask(HW, HW, WS, 2)
  masked, unmasked = np.asarray(_apply(m, xw, mask)), np.asarray(_apply(m, xw, None))
  # Window 0 of each image has no masked pair; the others do.
  np.testing.assert_allclose(masked[0], unmasked[0], rtol=1e-6)
  assert np.abs(masked - unmasked).max() > 1e-2


def test_logit_scale_is_clamped():
  m = _make_module()
  xw = A.window_partition(np.asarray(_x(b=1)), WS)
  m.logit_scale[...] = np.full((HEADS, 1, 1), math.log(100.0), np.float32)
  at_clamp = np.asarray(_apply(m, xw))
  m.logit_scale[...] = np.full((HEADS, 1, 1), 1e3, np.float32)
  huge = np.asarray(_apply(m, xw))
  m.logit_scale[...] = np.full((HEADS, 1, 1), math.log(10.0), np.float32)
  below = np.asarray(_apply(m, xw))
  np.testing.assert_allclose(huge, at_clamp, rtol=1e-6)
  assert np.abs(below - at_clamp).max() > 1e-3


def test_jit_and_finite():
  m = _make_module()
  x = _x(b=2)
  eager = A.windowed_attention(m, x, WS, 2)
  jitted = nnx.jit(lambda mod, y: A.windowed_attention(mod, y, WS, 2))(m, x)
  graph, state = nnx.split(m)
  pure = jax.jit(
      lambda s, y: A.windowed_attention(nnx.merge(graph, s), y, WS, 2))(
          state, x)
  assert np.isfinite(np.asarray(jitted)).all()
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(pure, eager, rtol=1e-5, atol=1e-5)


def test_state_holds_only_trainable_params():
  m = _new_module(WS, 0, jnp.float32)  # the default init, compiled
  state = nnx.state(m)
  leaves = jax.tree.leaves(state, is_leaf=lambda v: isinstance(v, nnx.Variable))
  assert all(isinstance(v, nnx.Param) for v in leaves)
  assert set(state.keys()) == {"qkv", "q_bias", "v_bias", "logit_scale",
                               "cpb_fc1", "cpb_fc2", "proj"}
  assert "bias" not in state["qkv"] and "bias" not in state["cpb_fc2"]
  np.testing.assert_allclose(m.logit_scale[...], math.log(10.0))
  assert m.relative_position_index.shape == (WS * WS, WS * WS)


def test_bfloat16_compute():
  m = _make_module()
  mb = _make_module(dtype=jnp.bfloat16)
  x = _x(b=1)
  y = _windowed(mb, x, WS, 2)
  assert y.dtype == jnp.bfloat16
  assert mb.qkv.kernel[...].dtype == jnp.float32
  y32 = _windowed(m, x, WS, 2)
  err = np.abs(np.asarray(y, np.float32) - np.asarray(y32)).max()
  assert err < 0.1 * np.abs(np.asarray(y32)).max()
