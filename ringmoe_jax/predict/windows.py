"""The window grid of a scene, the blending weight of a window and the row-strip accumulator.

Axes: H, W scene rows / columns; S window size (model.img_size); K output channels (class
probabilities, or 1 for height).

Grid: windows of S x S at stride S - overlap along each axis; the last row / column is shifted
inward so that it ends at the scene's edge (it overlaps its neighbour by more than `overlap`),
so every window lies inside the scene and no pixel is predicted from padding. A scene smaller
than S along an axis gets one window there, padded past the edge with invalid pixels.

Blending: each window's prediction is weighted by a separable raised-cosine ramp that rises over
the `overlap` pixels at each side and is 1 in between. It is > 0 everywhere (a pixel at the
scene's edge is covered by one window's edge only and must still get its value) and the weights
of two overlapping windows cross smoothly, so the blended output has no seam. A pixel covered
by one window only gets exactly that window's prediction (weight / weight).

Accumulation (`StripAccumulator`): windows come in row-major order, so once every window that
starts at or above row y has been added, rows above the next window row's start are final. Only
the rows from the oldest unfinished row to the bottom of the newest window are held (about 2 S
rows x W), never the scene: memory does not depend on the scene's height.
"""
from __future__ import annotations

import math

import numpy as np


def starts(n: int, size: int, overlap: int) -> list[int]:
  """Window starts along an axis of n pixels: 0, stride, 2 stride, ..., n - size (shifted in).

  One window at 0 when n <= size (padded past the edge by the reader).
  """
  if not 0 <= overlap < size:
    raise ValueError(f"overlap must be in [0, {size}) (the window size), got {overlap}")
  if n <= size:
    return [0]
  stride = size - overlap
  out = list(range(0, n - size + 1, stride))
  if out[-1] != n - size:
    out.append(n - size)
  return out


def grid(height: int, width: int, size: int, overlap: int) -> list[tuple[int, int]]:
  """(y0, x0) of every window, row-major (rows of windows top to bottom)."""
  return [(y, x) for y in starts(height, size, overlap) for x in starts(width, size, overlap)]


def ramp(size: int, overlap: int) -> np.ndarray:
  """(size,) float32 1-D weight: raised cosine over `overlap` pixels at each end, 1 between.

  w[i] = sin^2(pi/2 (i + 0.5) / overlap) for i < overlap (mirrored at the other end): > 0 at the
  first pixel and 1 - (something tiny) where the flat part starts, so two windows overlapping
  by `overlap` have weights that sum to a smooth curve.
  """
  w = np.ones(size, np.float64)
  if overlap > 0:
    i = np.arange(overlap, dtype=np.float64)
    rise = np.sin(0.5 * math.pi * (i + 0.5) / overlap) ** 2
    w[:overlap] = rise
    w[size - overlap:] = np.minimum(w[size - overlap:], rise[::-1])
  return w.astype(np.float32)


def window_weight(size: int, overlap: int) -> np.ndarray:
  """(size, size) float32 separable blending weight, > 0 everywhere."""
  r = ramp(size, overlap)
  return np.outer(r, r)


class StripAccumulator:
  """Weighted sums of overlapping window predictions over a band of scene rows.

  add(y0, x0, values (K, S, S), valid (S, S)) accumulates values * weight and weight; flush(y)
  returns the finished rows [top, y) as (K, n, W) blended values (NaN where no valid window
  pixel covered them: nodata) and forgets them. Rows are kept from `top` down to the bottom of
  the lowest window added, at most the height the caller's window order needs.
  """

  def __init__(self, height: int, width: int, channels: int, size: int, overlap: int):
    self.height, self.width, self.channels, self.size = height, width, channels, size
    self.weight = window_weight(size, overlap)
    self.top = 0                      # scene row of buffer row 0
    self._alloc(min(2 * size, height))

  def _alloc(self, rows: int) -> None:
    self.acc = np.zeros((self.channels, rows, self.width), np.float32)
    self.wsum = np.zeros((rows, self.width), np.float32)

  def _ensure(self, bottom: int) -> None:
    """Grows the buffer to cover scene rows [top, bottom) (rare: narrow scenes, large batches)."""
    need = bottom - self.top
    rows = self.wsum.shape[0]
    if need <= rows:
      return
    acc, wsum = self.acc, self.wsum
    self._alloc(max(need, 2 * rows))
    self.acc[:, :rows] = acc
    self.wsum[:rows] = wsum

  def add(self, y0: int, x0: int, values: np.ndarray, valid: np.ndarray) -> None:
    """values (K, S, S) of the window at (y0, x0); valid (S, S) bool (False: nodata, padding).

    The part of the window past the scene's edge (a scene smaller than S) is dropped.
    """
    if y0 < self.top:
      raise ValueError(f"window at row {y0} added after rows < {self.top} were flushed")
    h = min(self.size, self.height - y0)
    w = min(self.size, self.width - x0)
    self._ensure(y0 + h)
    r = y0 - self.top
    wt = np.where(valid[:h, :w], self.weight[:h, :w], np.float32(0))
    self.acc[:, r:r + h, x0:x0 + w] += values[:, :h, :w] * wt
    self.wsum[r:r + h, x0:x0 + w] += wt

  def flush(self, upto: int) -> np.ndarray:
    """Blended rows [top, upto) as (K, n, W) float32, NaN where nothing valid covered a pixel.

    Rows past the buffer (covered only by skipped, all-nodata windows) come back NaN; callers
    flush at most `capacity` rows at a time (`chunks`) so the result stays a strip.
    """
    upto = min(max(upto, self.top), self.height)
    n = upto - self.top
    rows = self.wsum.shape[0]
    m = min(n, rows)
    out = np.full((self.channels, n, self.width), np.nan, np.float32)
    wsum = self.wsum[:m]
    with np.errstate(invalid="ignore", divide="ignore"):
      out[:, :m] = np.where(wsum > 0, self.acc[:, :m] / wsum, np.float32(np.nan))
    # Shift the kept rows up in place: the buffer is reused, not reallocated per flush.
    self.acc[:, :rows - m] = self.acc[:, m:]
    self.acc[:, rows - m:] = 0
    self.wsum[:rows - m] = self.wsum[m:]
    self.wsum[rows - m:] = 0
    self.top = upto
    return out

  @property
  def capacity(self) -> int:
    return self.wsum.shape[0]

  def chunks(self, upto: int):
    """flush(upto) in strips of at most `capacity` rows: yields (first row, (K, n, W))."""
    while self.top < min(upto, self.height):
      top = self.top
      yield top, self.flush(min(upto, top + self.capacity))
