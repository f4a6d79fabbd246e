"""SimMIM block masking.

Axes: B batch, h/w token grid, cells of `cell` x `cell` tokens (cell = mask cell px / patch px).
The mask is drawn inside the jitted step from a key folded with the step number, so a resumed
run draws exactly the masks an uninterrupted one would.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_masked_cells(num_cells: int, ratio: float) -> int:
  """round(ratio * num_cells), at least 1 and at most num_cells."""
  return int(min(max(round(ratio * num_cells), 1), num_cells))


def random_cells(key: jax.Array, batch: int, grid: tuple[int, int], cell: int,
                 ratio: float) -> tuple[jax.Array, int, int]:
  """(B, ch*cw) bool: exactly num_masked_cells(ch*cw, ratio) cells chosen per tile; ch, cw."""
  h, w = grid
  if h % cell or w % cell:
    raise ValueError(f"token grid {h}x{w} is not divisible by the mask cell of {cell} tokens")
  ch, cw = h // cell, w // cell
  n = ch * cw
  scores = jax.random.uniform(key, (batch, n))
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return rank < num_masked_cells(n, ratio), ch, cw


def block_mask(key: jax.Array, batch: int, grid: tuple[int, int], cell: int,
               ratio: float) -> jax.Array:
  """(B, h, w) bool, True = masked; exactly num_masked_cells cells of each tile are masked."""
  cells, ch, cw = random_cells(key, batch, grid, cell, ratio)
  cells = cells.reshape(batch, ch, cw)
  return jnp.repeat(jnp.repeat(cells, cell, axis=1), cell, axis=2)


def upsample(mask: jax.Array, factor: int) -> jax.Array:
  """(B, h, w) -> (B, h*factor, w*factor): a token mask as a pixel mask."""
  return jnp.repeat(jnp.repeat(mask, factor, axis=1), factor, axis=2)
