"""Geometric augmentation in numpy: random resized crop, centre crop, horizontal flip.

Axes: H/W input pixels, S output size, C channels.

Pixels and the valid mask go through the same crop box and flip. Resampling is per modality:
  * optical / MS: bilinear (half-pixel centres, no antialiasing). The paper uses bicubic; bilinear
    is cheaper in numpy and cannot overshoot the reflectance range.
  * SAR: nearest. Interpolating speckle averages it, which lowers its coefficient of variation
    below 1/sqrt(L) and mixes complex phases; the SAR physics targets need the per-pixel statistics
    of the product, so SAR pixels are only replicated, never blended.
A resampled pixel is valid only if every input pixel it draws from is valid.
"""
from __future__ import annotations

import math

import numpy as np

INTERPOLATION = {"opt": "bilinear", "ms": "bilinear", "sar_l1": "nearest", "sar_l2": "nearest"}


def _axis_bilinear(n_in: int, start: float, length: float, n_out: int):
  """Source indices (i0, i1) and weight of i1 for n_out samples of [start, start + length)."""
  pos = start + (np.arange(n_out) + 0.5) * (length / n_out) - 0.5
  pos = np.clip(pos, 0, n_in - 1)
  i0 = np.floor(pos).astype(np.int64)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (pos - i0).astype(np.float32)


def _axis_nearest(n_in: int, start: float, length: float, n_out: int) -> np.ndarray:
  pos = start + (np.arange(n_out) + 0.5) * (length / n_out)
  return np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1)


def resized_crop(pixels: np.ndarray, valid: np.ndarray, box: tuple[int, int, int, int],
                 size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
  """Crops box (top, left, height, width) and resizes it to (size, size).

  Args:
    pixels: (H, W, C) float32.
    valid: (H, W) bool.
    box: crop in input pixels.
    size: S.
    method: "bilinear" or "nearest".

  Returns:
    (S, S, C) float32 pixels, (S, S) bool valid.
  """
  h, w = valid.shape
  top, left, ch, cw = box
  if method == "nearest":
    ys = _axis_nearest(h, top, ch, size)
    xs = _axis_nearest(w, left, cw, size)
    return pixels[ys][:, xs], valid[ys][:, xs]
  if method != "bilinear":
    raise ValueError(f"unknown interpolation {method!r}; expected 'bilinear' or 'nearest'")
  y0, y1, wy = _axis_bilinear(h, top, ch, size)
  x0, x1, wx = _axis_bilinear(w, left, cw, size)
  wy = wy[:, None, None]
  wx = wx[None, :, None]
  rows0, rows1 = pixels[y0], pixels[y1]
  top_row = rows0[:, x0] * (1 - wx) + rows0[:, x1] * wx
  bottom_row = rows1[:, x0] * (1 - wx) + rows1[:, x1] * wx
  out = (top_row * (1 - wy) + bottom_row * wy).astype(np.float32)
  # Only neighbours with a non-zero weight count, so an identity resize keeps the mask exactly.
  ny = (wy[:, :, 0] == 0)
  nx = (wx[:, :, 0] == 0)
  out_valid = (valid[y0][:, x0] & (valid[y0][:, x1] | nx) & (valid[y1][:, x0] | ny)
               & (valid[y1][:, x1] | nx | ny))
  return out, out_valid


def random_resized_crop_box(
    rng: np.random.Generator, h: int, w: int, scale: tuple[float, float] = (0.2, 0.5),
    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(top, left, height, width) covering `scale` of the area at aspect `ratio` (torchvision's
  RandomResizedCrop sampling: 10 tries, then the largest centred box of allowed aspect)."""
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
  aspect = w / h
  if aspect < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif aspect > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    ch, cw = h, w
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def center_crop_or_pad(pixels: np.ndarray, valid: np.ndarray,
                       size: int) -> tuple[np.ndarray, np.ndarray]:
  """(H, W, C), (H, W) -> (S, S, C), (S, S): centre crop; sides shorter than S are zero-padded
  and marked invalid."""
  h, w, c = pixels.shape
  out = np.zeros((size, size, c), np.float32)
  out_valid = np.zeros((size, size), bool)
  # Offsets into the input (crop) and into the output (pad), per axis.
  iy, oy, ny = max(0, (h - size) // 2), max(0, (size - h) // 2), min(h, size)
  ix, ox, nx = max(0, (w - size) // 2), max(0, (size - w) // 2), min(w, size)
  out[oy:oy + ny, ox:ox + nx] = pixels[iy:iy + ny, ix:ix + nx]
  out_valid[oy:oy + ny, ox:ox + nx] = valid[iy:iy + ny, ix:ix + nx]
  return out, out_valid
