"""Pixel-level metrics: semantic segmentation and binary change detection.

Both accumulate ONE confusion matrix over the whole split and derive the metrics from it at the
end (mmsegmentation / BIT convention). Averaging per-image IoUs instead would weight a small
image like a large one and make IoU undefined on every image missing a class.

Excluded pixels: target == ignore_index (255: nodata of any view, unlabelled) and, if given,
valid == 0. They are dropped before the range check, so an ignored pixel may hold any value.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ringmoe_jax.metrics._util import (as_int, check_compatible, check_range, class_keys,
                                       mean_or_nan, safe_div)


class ConfusionMatrix:
  """Segmentation confusion matrix over K classes (rows: target, columns: prediction).

  compute() returns
    miou       mean IoU over the classes that appear in the target or the prediction (union > 0;
               mmseg's nanmean). A class absent from both has IoU 0 / 0: excluded. A class only
               predicted has IoU 0 and counts.
    mf1        mean F1 (Dice) = 2 TP / (2 TP + FP + FN) over the same classes.
    oa         overall pixel accuracy.
    iou/<name>, f1/<name>  per class, NaN if the class is absent from target and prediction.
    pixels     number of pixels counted.
  """

  def __init__(self, num_classes: int, ignore_index: int | None = 255,
               class_names: Sequence[str] | None = None):
    self.num_classes = int(num_classes)
    self.ignore_index = None if ignore_index is None else int(ignore_index)
    if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
      raise ValueError(f"ignore_index {self.ignore_index} is a class id (K={self.num_classes})")
    self.keys = class_keys(self.num_classes, class_names)
    self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

  def reset(self) -> None:
    self.matrix[:] = 0

  def update(self, pred: np.ndarray, target: np.ndarray,
             valid: np.ndarray | None = None) -> None:
    """pred: (B, H, W) int class ids, or (B, H, W, K) scores (argmax taken);
    target: (B, H, W) int, ignore_index excluded; valid: (B, H, W) bool / 0-1, False excluded."""
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.ndim == target.ndim + 1:
      if pred.shape[-1] != self.num_classes:
        raise ValueError(f"scores have {pred.shape[-1]} channels for {self.num_classes} classes")
      pred = pred.argmax(axis=-1)
    if pred.shape != target.shape:
      raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    target = as_int(target, "target")
    keep = np.ones(target.shape, bool) if self.ignore_index is None else (
        target != self.ignore_index)
    if valid is not None:
      valid = np.asarray(valid)
      if valid.shape != target.shape:
        raise ValueError(f"valid shape {valid.shape} != target shape {target.shape}")
      keep &= valid != 0
    t = target[keep]
    p = as_int(pred, "pred")[keep]
    check_range(t, self.num_classes, "target")
    check_range(p, self.num_classes, "prediction")
    k = self.num_classes
    self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

  def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
    check_compatible(self, other, ("num_classes", "ignore_index", "keys"))
    self.matrix += other.matrix
    return self

  def compute(self) -> dict[str, float]:
    cm = self.matrix
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=1) + cm.sum(axis=0) - tp  # TP + FP + FN
    iou = safe_div(tp, union)
    f1 = safe_div(2 * tp, union + tp)
    present = union > 0
    out = {
        "miou": mean_or_nan(iou[present]),
        "mf1": mean_or_nan(f1[present]),
        "oa": float(safe_div(tp.sum(), cm.sum())),
        "pixels": float(cm.sum()),
    }
    for i, key in enumerate(self.keys):
      out[f"iou/{key}"] = float(iou[i])
      out[f"f1/{key}"] = float(f1[i])
    return out


class ChangeMetrics:
  """Binary change detection: metrics of the change class (1) from a 2x2 confusion matrix.

  Targets are 0 (no change) / 1 (change) / ignore_index; LEVIR-CD's 0 / 255 masks are mapped to
  0 / 1 by the reader, not here (255 means ignore everywhere in this package).

  compute() returns, with TP / FP / FN / TN counted for class 1:
    precision = TP / (TP + FP)      recall = TP / (TP + FN)
    f1 = 2 TP / (2 TP + FP + FN)    (= 2PR / (P + R) whenever that is defined)
    iou = TP / (TP + FP + FN)       oa = (TP + TN) / all pixels
    pixels
  A 0 / 0 gives 0.0, not NaN (BIT's metric tool gets the same from the epsilon in each
  denominator; torchmetrics' zero_division default is 0): a split without change that the model
  also predicts without change scores f1 = iou = precision = recall = 0.
  """

  def __init__(self, ignore_index: int | None = 255):
    self.ignore_index = ignore_index
    self._cm = ConfusionMatrix(2, ignore_index=ignore_index)

  @property
  def matrix(self) -> np.ndarray:
    """(2, 2) counts, rows target, columns prediction: [[TN, FP], [FN, TP]]."""
    return self._cm.matrix

  def reset(self) -> None:
    self._cm.reset()

  def update(self, pred: np.ndarray, target: np.ndarray,
             valid: np.ndarray | None = None) -> None:
    """pred: (B, H, W) int / bool 0-1, or (B, H, W, 2) scores; target: (B, H, W) int 0 / 1 /
    ignore_index; valid: (B, H, W) bool, False excluded."""
    self._cm.update(pred, target, valid)

  def merge(self, other: "ChangeMetrics") -> "ChangeMetrics":
    check_compatible(self, other, ("ignore_index",))
    self._cm.merge(other._cm)
    return self

  def compute(self) -> dict[str, float]:
    (tn, fp), (fn, tp) = self._cm.matrix.astype(np.float64)
    total = tn + fp + fn + tp
    return {
        "f1": float(safe_div(2 * tp, 2 * tp + fp + fn, empty=0.0)),
        "iou": float(safe_div(tp, tp + fp + fn, empty=0.0)),
        "precision": float(safe_div(tp, tp + fp, empty=0.0)),
        "recall": float(safe_div(tp, tp + fn, empty=0.0)),
        "oa": float(safe_div(tp + tn, total, empty=0.0)),
        "pixels": float(total),
    }
