"""Grouped expert FFNs on rows sorted by expert (the compute of the dropless dispatchers).

Axes: N rows (token choices) sorted by expert, D model dim, F hidden dim, E experts, B block.
Rows [offset_e, offset_e + size_e) belong to expert e; rows past sum(size) are padding and come
out as zeros. Each expert is Linear(D, F) -> GELU(exact) -> Linear(F, D), as StackedExperts.

Two kernels with the same result:
  ragged:  jax.lax.ragged_dot (grouped matmul). Fast on GPU/TPU; ~24x slower than a dense FFN on
           XLA:CPU, whose ragged_dot is a slow generic loop.
  blocked: a loop over experts and, inside, over blocks of rows of that expert, each a plain
           (B, D) @ (D, F) matmul on the expert's weights. Blocks of B rows, then the remainder
           in halving sizes down to a minimum block b (see _expert_blocks for the rule), so the
           wasted rows stay small without a static padding of every expert to a multiple of B.
           The trip counts depend on the data, so the loop has a hand-written VJP (reverse-mode
           AD cannot go through a data-dependent while loop). No (N, D, F) weight gather.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _gelu(h):
  return jax.nn.gelu(h, approximate=False)


def ffn_ragged(xs, sizes, w1, b1, w2, b2):
  """xs (N, D) sorted by expert, sizes (E,) int32 -> (N, D) via jax.lax.ragged_dot."""
  n = xs.shape[0]
  e = sizes.shape[0]
  # Row -> expert id (rows past the groups get E and a zero bias).
  row_expert = jnp.searchsorted(jnp.cumsum(sizes), jnp.arange(n), side="right")
  live = (row_expert < e)[:, None]
  row_expert = jnp.minimum(row_expert, e - 1)
  h = lax.ragged_dot(xs, w1, sizes) + jnp.where(live, b1[row_expert], 0)
  y = lax.ragged_dot(_gelu(h), w2, sizes)
  return y + jnp.where(live, b2[row_expert], 0)


def _offsets(sizes):
  return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(sizes).astype(jnp.int32)])


def block_sizes(block: int, min_block: int) -> tuple[int, ...]:
  """(B, B/2, ..., min_block): the static block sizes that tile one expert's rows."""
  sizes = [block]
  while sizes[-1] // 2 >= min_block:
    sizes.append(sizes[-1] // 2)
  return tuple(sizes)


def _expert_blocks(start, size, levels, body, carry):
  """Runs body(row_start, static_rows, carry) over blocks that tile rows [start, start+size).

  Each block re-reads the expert's weights (2*D*F values, more than the cache holds), which
  costs about as much as computing ~20 extra rows; so blocks are few and large. At each level
  (largest first) the remainder is rounded up to whole blocks when that wastes at most 1/8 of a
  block, else whole blocks are taken and the rest goes to smaller levels; the last level rounds
  up. The overhang past the expert's end (recomputed or spare rows) stays below levels[-1] rows
  or 1/8 of the level that absorbed it.
  """
  rem = size
  for n_level, rows in enumerate(levels):
    last = n_level == len(levels) - 1
    up = (rem + rows - 1) // rows
    count = up if last else jnp.where(up * rows - rem <= rows // 8, up, rem // rows)
    carry = lax.fori_loop(
        0, count, lambda j, c, s=start, r=rows: body(s + j * r, r, c), carry)
    start, rem = start + count * rows, jnp.maximum(rem - count * rows, 0)
  return carry


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def ffn_blocked(xs, sizes, w1, b1, w2, b2, levels: tuple[int, ...]):
  """xs (N, D) sorted by expert, sizes (E,) int32 -> (N, D); see the module docstring.

  levels: static block sizes, largest first (see block_sizes).
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

    def block_body(start, rows, carry):
      y, h = carry
      hb = lax.dynamic_slice_in_dim(xp, start, rows) @ w1e + b1e
      yb = _gelu(hb) @ w2e + b2e
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
    dx, dw1, db1, dw2, db2 = carry
    w1e, w2e = w1[i], w2[i]

    def block_body(start, rows, inner):
      dx, g1, gb1, g2, gb2 = inner
      # Only this expert's rows may feed its weight gradients.
      own = (start + jnp.arange(rows) < offs[i + 1])[:, None]
      dyb = jnp.where(own, lax.dynamic_slice_in_dim(dyp, start, rows), 0)
      xb = lax.dynamic_slice_in_dim(xp, start, rows)
      hb = lax.dynamic_slice_in_dim(h, start, rows)
      a, gelu_vjp = jax.vjp(_gelu, hb)
      dh = gelu_vjp(dyb @ w2e.T)[0]
      dxb = dh @ w1e.T
      return (lax.dynamic_update_slice_in_dim(dx, dxb.astype(dx.dtype), start, 0),
              g1 + xb.T @ dh, gb1 + jnp.sum(dh, 0), g2 + a.T @ dyb, gb2 + jnp.sum(dyb, 0))

    zeros = (jnp.zeros_like(w1e), jnp.zeros_like(b1[i]), jnp.zeros_like(w2e),
             jnp.zeros_like(b2[i]))
    dx, g1, gb1, g2, gb2 = _expert_blocks(offs[i], sizes[i], levels, block_body, (dx,) + zeros)
    return (dx, dw1.at[i].set(g1), db1.at[i].set(gb1), dw2.at[i].set(g2), db2.at[i].set(gb2))

  init = (jnp.zeros_like(dyp), jnp.zeros_like(w1), jnp.zeros_like(b1), jnp.zeros_like(w2),
          jnp.zeros_like(b2))
  dx, dw1, db1, dw2, db2 = lax.fori_loop(0, sizes.shape[0], expert_body, init)
  # Padding rows feed no expert (the last block's spill wrote there): zero input gradient.
  dx = jnp.where((jnp.arange(n) < offs[-1])[:, None], dx[:n], 0)
  return dx, None, dw1, db1, dw2, db2


ffn_blocked.defvjp(_blocked_fwd, _blocked_bwd)
