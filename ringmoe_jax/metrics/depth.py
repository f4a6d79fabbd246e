"""Depth / height regression metrics, computed as the Monocular-Depth-Estimation-Toolbox does:
each metric per image over that image's valid pixels, then averaged over images.

Valid pixel: valid != 0 (if given) & target finite & target > min_depth (& target < max_depth if
set). Predictions are cleaned first: NaN -> min_depth, then clipped to [min_depth, max_depth]
(max_depth None: no upper clip, so a +inf prediction shows up as an inf metric).

nDSM heights (metres above ground) are 0 on the ground, often most of a tile. The ratio metrics
(abs_rel, sq_rel, rmse_log, delta, silog) are undefined at 0, so `target > min_depth` excludes
ground pixels from ALL metrics here by design: the numbers describe above-ground objects only,
and an error of predicting a building on flat ground is not measured by this accumulator.

Metrics (g = target, p = prediction over one image's valid pixels; means over those pixels):
  abs_rel  = mean(|p - g| / g)          sq_rel   = mean((p - g)^2 / g)
  rmse     = sqrt(mean((p - g)^2))      rmse_log = sqrt(mean((log p - log g)^2))
  delta<k> = mean(max(p / g, g / p) < 1.25^k), k = 1, 2, 3
  silog    = 100 * sqrt(mean(e^2) - mean(e)^2), e = log p - log g (the toolbox's scale)
plus `images` (images averaged) and `images_skipped` (real images without a valid pixel: they
would give NaN and are left out of the average, counted so a broken mask is visible).
"""
from __future__ import annotations

import numpy as np

from ringmoe_jax.metrics._util import as_weight, check_compatible

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3", "silog")


def image_metrics(g: np.ndarray, p: np.ndarray) -> np.ndarray:
  """The METRICS of one image; g, p: (N,) float64, N > 0, all > 0."""
  d = p - g
  e = np.log(p) - np.log(g)
  ratio = np.maximum(p / g, g / p)
  # The variance can come out a hair below 0 in floating point when e is constant.
  silog = 100.0 * np.sqrt(max(np.mean(e * e) - np.mean(e) ** 2, 0.0))
  return np.array([
      np.mean(np.abs(d) / g), np.mean(d * d / g), np.sqrt(np.mean(d * d)),
      np.sqrt(np.mean(e * e)), np.mean(ratio < 1.25), np.mean(ratio < 1.25 ** 2),
      np.mean(ratio < 1.25 ** 3), silog])


class DepthAccumulator:
  """Per-image depth / height metrics averaged over images (see the module docstring)."""

  def __init__(self, min_depth: float = 1e-3, max_depth: float | None = None):
    if min_depth <= 0:
      raise ValueError(f"min_depth must be > 0 (log and ratio metrics), got {min_depth}")
    if max_depth is not None and max_depth <= min_depth:
      raise ValueError(f"max_depth {max_depth} <= min_depth {min_depth}")
    self.min_depth = float(min_depth)
    self.max_depth = None if max_depth is None else float(max_depth)
    self._sums = np.zeros(len(METRICS), np.float64)  # sum over images of each metric
    self.images = 0
    self.images_skipped = 0

  def reset(self) -> None:
    self._sums[:] = 0
    self.images = self.images_skipped = 0

  def update(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None,
             weight: np.ndarray | None = None) -> None:
    """pred, target: (B, H, W) (any trailing shape; one image per leading index), metres;
    valid: same shape, nonzero = pixel has a value (e.g. the batch's `height_valid`);
    weight: (B,), 0 = padding image: neither averaged nor counted as skipped."""
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.ndim < 2:
      raise ValueError(f"pred {pred.shape} and target {target.shape} must be equal (B, H, W)")
    mask = np.isfinite(target)
    # Comparisons with NaN are False, but silence numpy's warning by filling first.
    t = np.where(mask, target, 0.0)
    mask &= t > self.min_depth
    if self.max_depth is not None:
      mask &= t < self.max_depth
    if valid is not None:
      valid = np.asarray(valid)
      if valid.shape != target.shape:
        raise ValueError(f"valid shape {valid.shape} != target shape {target.shape}")
      mask &= valid != 0
    upper = np.inf if self.max_depth is None else self.max_depth
    p = np.clip(np.where(np.isnan(pred), self.min_depth, pred), self.min_depth, upper)
    w = as_weight(weight, pred.shape[0])
    for b in range(pred.shape[0]):
      if w[b] == 0:
        continue
      m = mask[b]
      if not m.any():
        self.images_skipped += 1
        continue
      self._sums += image_metrics(t[b][m], p[b][m])
      self.images += 1

  def merge(self, other: "DepthAccumulator") -> "DepthAccumulator":
    check_compatible(self, other, ("min_depth", "max_depth"))
    self._sums += other._sums
    self.images += other.images
    self.images_skipped += other.images_skipped
    return self

  def compute(self) -> dict[str, float]:
    means = self._sums / self.images if self.images else np.full(len(METRICS), np.nan)
    out = {name: float(v) for name, v in zip(METRICS, means)}
    out["images"] = float(self.images)
    out["images_skipped"] = float(self.images_skipped)
    return out
