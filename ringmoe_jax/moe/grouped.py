"""Grouped expert FFNs on rows sorted by expert (the compute of the dropless dispatchers).

Axes: N rows (token choices) sorted by expert, D model dim, F hidden dim, E experts, B block.
Rows [offset_e, offset_e + size_e) belong to expert e; rows past sum(size) are padding and come
out as zeros. Each expert is Linear(D, F) -> GELU(exact) -> Linear(F, D), as StackedExperts.

Three kernels with the same result:
  ragged:  jax.lax.ragged_dot (grouped matmul). Fast on GPU/TPU; ~24x slower than a dense FFN on
           XLA:CPU, whose ragged_dot is a slow generic loop.
  blocked: a loop over experts and, inside, over blocks of rows of that expert, each a plain
           (B, D) @ (D, F) matmul on the expert's weights: one tail block of the next multiple
           of a step b (< b wasted rows per expert), then whole blocks of B rows (see
           _expert_blocks). With many small experts each expert is one block, so its weights
           are read once per pass and its weight gradient written once, straight into the
           stacked gradient. The trip counts depend on the data, so the loop has a hand-written
           VJP (reverse-mode AD cannot go through a data-dependent while loop). No (N, D, F)
           weight gather.
  native:  native.ffn_native: one BLAS sgemm per expert in an XLA FFI call, on the rows and
           weights in place: no weight copies, each weight gradient written once. float32, CPU;
           the fastest CPU kernel where it builds (needs a C++ compiler).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def gelu(h):
  """Exact (erf) GELU, as StackedExperts."""
  return jax.nn.gelu(h, approximate=False)


def row_bias(b, sizes, n: int):
  """b (E, M) -> (N, M): row r gets b[expert of r]; rows past sum(sizes) get zeros."""
  e = sizes.shape[0]
  row_expert = jnp.searchsorted(jnp.cumsum(sizes), jnp.arange(n), side="right")
  return jnp.where((row_expert < e)[:, None], b[jnp.minimum(row_expert, e - 1)], 0).astype(b.dtype)


def ffn_ragged(xs, sizes, w1, b1, w2, b2):
  """xs (N, D) sorted by expert, sizes (E,) int32 -> (N, D) via jax.lax.ragged_dot."""
  n = xs.shape[0]
  h = lax.ragged_dot(xs, w1, sizes) + row_bias(b1, sizes, n)
  return lax.ragged_dot(gelu(h), w2, sizes) + row_bias(b2, sizes, n)


def _offsets(sizes):
  return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(sizes).astype(jnp.int32)])


def block_sizes(block: int, min_block: int) -> tuple[int, ...]:
  """(B, B/2, ..., min_block): the static block sizes that tile one expert's rows."""
  sizes = [block]
  while sizes[-1] // 2 >= min_block:
    sizes.append(sizes[-1] // 2)
  return tuple(sizes)


def _tail_sizes(levels):
  """Static row counts of the one tail block: every multiple of levels[-1] up to levels[0]."""
  step = levels[-1]
  return tuple(range(step, levels[0] + 1, step))


def _expert_blocks(start, size, levels, body, carry):
  """Runs body(row_start, static_rows, first, carry) over blocks covering [start, start+size).

  The tail (size mod B rows, B = levels[0]) runs first as ONE block of the next multiple of
  levels[-1] rows; then whole B-row blocks. Each block re-reads the expert's weights and, in
  the backward pass, adds its (D, F) products into the weight gradient, so one block per
  expert (the common case with many small experts) keeps the 64-expert layer near its memory
  floor; the price is < levels[-1] recomputed rows per expert. `first` (static) marks the tail
  block, which is called with rows=0 when the tail is empty so that the body can still write
  the expert's gradient slice.
  """
  block = levels[0]
  step = levels[-1]
  full = size // block
  tail_steps = (size - full * block + step - 1) // step
  # A 0/1-trip loop per tail size rather than lax.switch, which measured ~6x slower than the
  # old kernel at 64 experts on XLA:CPU (while loops update the carried buffers in place). The
  # row start uses the trip index j (always 0) so that XLA cannot hoist the block out of its
  # loop, which would run every tail size.
  for rows in (0,) + _tail_sizes(levels):
    trips = (tail_steps * step == rows).astype(jnp.int32)
    carry = lax.fori_loop(0, trips, lambda j, c, r=rows: body(start + j, r, True, c), carry)
  start = start + tail_steps * step
  return lax.fori_loop(0, full, lambda j, c: body(start + j * block, block, False, c), carry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def ffn_blocked(xs, sizes, w1, b1, w2, b2, levels: tuple[int, ...]):
  """xs (N, D) sorted by expert, sizes (E,) int32 -> (N, D); see the module docstring.

  levels: static block sizes, largest first (see block_sizes); the full block is levels[0] and
  the tail block a multiple of levels[-1].
  """
  return _blocked_fwd(xs, sizes, w1, b1, w2, b2, levels)[0]


def _blocked_fwd(xs, sizes, w1, b1, w2, b2, levels):
  n, d = xs.shape
  e, _, f = w1.shape
  pad = levels[0]
  # Spare rows so that a block starting at any row < N stays inside the array (dynamic_slice
  # would otherwise clamp the start and shift the block).
  xp = jnp.concatenate([xs, jnp.zeros((pad, d), xs.dtype)])
  offs = _offsets(sizes)

  def expert_body(i, carry):
    w1e, b1e, w2e, b2e = w1[i], b1[i], w2[i], b2[i]

    def block_body(start, rows, first, carry):
      del first
      if rows == 0:
        return carry
      y, h = carry
      hb = lax.dynamic_slice_in_dim(xp, start, rows) @ w1e + b1e
      yb = gelu(hb) @ w2e + b2e
      # Rows of this block past the expert's end belong to the next expert, which runs later
      # and overwrites them, so no mask is needed.
      return (lax.dynamic_update_slice_in_dim(y, yb.astype(y.dtype), start, 0),
              lax.dynamic_update_slice_in_dim(h, hb.astype(h.dtype), start, 0))

    return _expert_blocks(offs[i], sizes[i], levels, block_body, carry)

  y0 = jnp.zeros((n + pad, d), xs.dtype)
  h0 = jnp.zeros((n + pad, f), xs.dtype)
  y, h = lax.fori_loop(0, e, expert_body, (y0, h0))
  # The last expert's last block spills onto padding rows; padding comes out as zeros.
  y = jnp.where((jnp.arange(n) < offs[-1])[:, None], y[:n], 0)
  return y, (xp, sizes, w1, b1, w2, b2, h)


def _blocked_bwd(levels, res, dy):
  xp, sizes, w1, b1, w2, b2, h = res
  n, d = dy.shape
  dyp = jnp.concatenate([dy, jnp.zeros((levels[0], d), dy.dtype)])
  offs = _offsets(sizes)

  def expert_body(i, carry):
    w1e, w2e = w1[i], w2[i]

    def block_body(start, rows, first, carry):
      dx, dw1, db1, dw2, db2 = carry

      def put(acc, g):
        # The tail block writes expert i's gradient slice (no per-expert accumulator to zero
        # and copy in); later blocks add into it in place.
        g = g[None].astype(acc.dtype)
        if not first:
          g = g + lax.dynamic_index_in_dim(acc, i, keepdims=True)
        return lax.dynamic_update_index_in_dim(acc, g, i, 0)

      if rows == 0:
        # Empty tail: the slice still needs its first write (an expert may own no rows).
        return (dx,) + tuple(put(a, jnp.zeros(a.shape[1:], a.dtype))
                             for a in (dw1, db1, dw2, db2))
      # Only this expert's rows may feed its weight gradients.
      own = (start + jnp.arange(rows) < offs[i + 1])[:, None]
      dyb = jnp.where(own, lax.dynamic_slice_in_dim(dyp, start, rows), 0)
      xb = lax.dynamic_slice_in_dim(xp, start, rows)
      hb = lax.dynamic_slice_in_dim(h, start, rows)
      a, gelu_vjp = jax.vjp(gelu, hb)
      dh = gelu_vjp(dyb @ w2e.T)[0]
      dxb = dh @ w1e.T
      return (lax.dynamic_update_slice_in_dim(dx, dxb.astype(dx.dtype), start, 0),
              put(dw1, xb.T @ dh), put(db1, jnp.sum(dh, 0)), put(dw2, a.T @ dyb),
              put(db2, jnp.sum(dyb, 0)))

    return _expert_blocks(offs[i], sizes[i], levels, block_body, carry)

  # Every expert's slice is written by its tail block, so these zeros are only the loop's
  # initial value (XLA has no uninitialised buffers); they also take the page faults of the
  # freshly allocated gradient, which any writer would pay.
  init = (jnp.zeros_like(dyp), jnp.zeros_like(w1), jnp.zeros_like(b1), jnp.zeros_like(w2),
          jnp.zeros_like(b2))
  dx, dw1, db1, dw2, db2 = lax.fori_loop(0, sizes.shape[0], expert_body, init)
  # Padding rows feed no expert (the last block's spill wrote there): zero input gradient.
  dx = jnp.where((jnp.arange(n) < offs[-1])[:, None], dx[:n], 0)
  return dx, None, dw1, db1, dw2, db2


ffn_blocked.defvjp(_blocked_fwd, _blocked_bwd)
