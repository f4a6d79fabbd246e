"""RingMo's PIMask: block masking where only part of each selected cell is masked.

Axes: B batch, h/w token grid, cells of `cell` x `cell` tokens, n = (h / cell) * (w / cell) cells.

As in SimMIM's `masking.block_mask`, exactly round(cell_ratio * n) cells of each tile are
selected; unlike it, inside each selected cell only round(in_cell_ratio * cell^2) tokens (at
least 1) are masked, chosen uniformly. Dense remote-sensing scenes hold small objects that a fully
masked cell would erase outright; the unmasked tokens left inside a cell keep a trace of them
(RingMo, Sun et al. 2022). The cell selection uses `key` exactly as `block_mask` does, so
in_cell_ratio = 1 reproduces `block_mask` bit for bit; the in-cell draw uses `fold_in(key, 1)`.
Works on any grid: pass the pixel grid and a cell in pixels for pixel-level masking.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ringmoe_jax.objectives.masking import num_masked_cells, random_cells


@dataclasses.dataclass(frozen=True)
class PIMaskConfig:
  """cell: cell side in tokens; cell_ratio: fraction of cells selected; in_cell_ratio: fraction
  of a selected cell's tokens masked. The defaults (RingMoE's 0.6 of 32 px cells with patch 4,
  half of each cell) are this project's choice; RingMo's exact in-cell ratio is not public."""
  cell: int = 8
  cell_ratio: float = 0.6
  in_cell_ratio: float = 0.5

  def __post_init__(self):
    if not isinstance(self.cell, int) or self.cell < 1:
      raise ValueError(f"PIMaskConfig.cell must be a positive int, got {self.cell!r}")
    for field in ("cell_ratio", "in_cell_ratio"):
      r = getattr(self, field)
      if not 0.0 < r <= 1.0:
        raise ValueError(f"PIMaskConfig.{field} must be in (0, 1], got {r!r}")

  def __call__(self, key: jax.Array, batch: int, grid: tuple[int, int]) -> jax.Array:
    return pimask(key, batch, grid, self.cell, self.cell_ratio, self.in_cell_ratio)


def pimask(key: jax.Array, batch: int, grid: tuple[int, int], cell: int, cell_ratio: float,
           in_cell_ratio: float) -> jax.Array:
  """(B, h, w) bool, True = masked; each tile has exactly k_cells * k_in masked tokens.

  k_cells = num_masked_cells(n, cell_ratio), k_in = num_masked_cells(cell^2, in_cell_ratio).
  Deterministic per key.
  """
  cells, ch, cw = random_cells(key, batch, grid, cell, cell_ratio)  # (B, n), as block_mask
  n = ch * cw
  k_in = num_masked_cells(cell * cell, in_cell_ratio)
  inner_scores = jax.random.uniform(jax.random.fold_in(key, 1), (batch, n, cell * cell))
  inner = jnp.argsort(jnp.argsort(inner_scores, axis=-1), axis=-1) < k_in  # (B, n, cell^2)
  m = (cells[..., None] & inner).reshape(batch, ch, cw, cell, cell)
  return m.transpose(0, 1, 3, 2, 4).reshape(batch, *grid)
